#!/usr/bin/env bash
# Run Molecule on the lab VMs with the controller venv, the collection
# from this checkout, and a teardown that holds whatever happens.
#
#   tools/molecule.sh test -s default     the whole sequence (make test-molecule)
#   tools/molecule.sh converge -s default one step; `destroy -s default` ends it
#
# The lab image is built (or reused) first, so its build time is reported on
# its own. Every VM lives in build/molecule/<scenario>/lab (ZFSYNC_LAB_STATE):
# after the run, and on any signal, `tests/lab/launch down` reaps what a
# failed Molecule step left. Prints the time of each step at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ZFSYNC_VENV:-$ROOT/.venv}"
[ -x "$VENV/bin/molecule" ] || { echo "molecule.sh: no $VENV/bin/molecule: run make venv" >&2; exit 2; }

scenario=default
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        -s|--scenario-name) scenario="${args[i+1]:-default}" ;;
        --scenario-name=*) scenario="${args[i]#*=}" ;;
    esac
done

export PATH="$VENV/bin:$PATH"
# The collection under test is this checkout, through the in-tree link
# collections/ansible_collections/zfsync/zfsync (as for ansible.cfg and the
# linter), not a copy that could be stale; community.general comes with
# the venv.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
export ANSIBLE_COLLECTIONS_PATH="$ROOT/collections:$SITE"
export ZFSYNC_LAB_STATE="$ROOT/build/molecule/$scenario/lab"
export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-0}"
mkdir -p "$ZFSYNC_LAB_STATE"

teardown() {
    case " ${args[*]} " in
        *" test "*|*" destroy "*) "$VENV/bin/python" "$ROOT/tests/lab/launch" down --state-dir "$ZFSYNC_LAB_STATE" || true ;;
    esac
}
trap teardown EXIT
trap 'exit 130' INT TERM HUP

if [ "$scenario" != freebsd ]; then
    t0=$(date +%s)
    "$ROOT/tests/lab/build-image" >/dev/null
    echo "molecule.sh: lab image ready in $(( $(date +%s) - t0 )) s"
fi
cd "$ROOT"
molecule "$@"
