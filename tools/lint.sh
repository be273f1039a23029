#!/usr/bin/env bash
# ansible-lint (production profile, see .ansible-lint) over the playbooks,
# roles and Molecule scenarios that exist, plus the collection metadata.
#
#   tools/lint.sh            lint everything that exists
#   tools/lint.sh PATH...    lint only these paths
#
# Uses the controller venv (tools/venv.sh); exits non-zero on any finding.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ZFSYNC_VENV:-$ROOT/.venv}"

say() { printf 'lint.sh: %s\n' "$*"; }

"$ROOT/tools/venv.sh" >/dev/null || { say "tools/venv.sh failed: run it to see why" >&2; exit 2; }
PATH="$VENV/bin:$PATH"
export PATH
# The collection's own modules resolve through the in-tree link; the
# collections it uses come with the venv. Ansible wants a UTF-8 locale.
export ANSIBLE_COLLECTIONS_PATH="$ROOT/collections"
export LC_ALL=C.UTF-8 LANG=C.UTF-8
cd "$ROOT"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=()
    # Only what holds YAML: empty placeholders are not worth a lint run.
    for path in playbooks roles extensions meta galaxy.yml; do
        if [ -f "$path" ] || { [ -d "$path" ] && [ -n "$(find "$path" -name '*.yml' -o -name '*.yaml' | head -n 1)" ]; }; then
            targets+=("$path")
        fi
    done
fi
if [ "${#targets[@]}" -eq 0 ]; then
    say "nothing to lint"
    exit 0
fi

say "ansible-lint $(ansible-lint --nocolor --version 2>/dev/null | head -n 1 | cut -d' ' -f2) (production profile) on: ${targets[*]}"
start=$(date +%s)
rc=0
ansible-lint --nocolor "${targets[@]}" || rc=$?
say "$( [ $rc -eq 0 ] && echo passed || echo "FAILED (exit $rc)") in $(( $(date +%s) - start )) s"
exit $rc
