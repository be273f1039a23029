#!/usr/bin/env bash
# Run ansible-test (sanity + units) against the BUILT and INSTALLED
# collection, as Galaxy users get it:
#
#   1. ansible-galaxy collection build  -> a temp dir; fail if the artifact is
#      over 2 MB or holds venv/VM/cache files
#   2. ansible-galaxy collection install --no-deps into a temp
#      ansible_collections/zfsync/zfsync tree
#   3. write the get-pip stand-in ansible-test needs offline (see DESIGN.md)
#   4. ansible-test sanity --local   (every test that applies; explicit skips)
#   5. ansible-test units --local    over tests/unit/plugins (and --venv on
#      Python 3.9, the oldest a managed host may have)
#
#   tools/ansible-test.sh                 everything
#   tools/ansible-test.sh sanity|units|build   one step (build always runs)
#   tools/ansible-test.sh sanity --test pep8   extra args go to ansible-test
#
# Environment: ZFSYNC_VENV (default ROOT/.venv, made by tools/venv.sh),
# ZFSYNC_TEST_PYTHONS (target Pythons for the multi-version sanity tests,
# default "3.9 3.10 3.11 3.12 3.13"), ZFSYNC_UNIT_PYTHONS (Pythons for the
# units, default "3.13 3.9": the controller's with --local, others in a
# venv), ZFSYNC_KEEP_TREE=1 keeps the temp tree.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ZFSYNC_VENV:-$ROOT/.venv}"
PYTHONS="${ZFSYNC_TEST_PYTHONS:-3.9 3.10 3.11 3.12 3.13}"
UNIT_PYTHONS="${ZFSYNC_UNIT_PYTHONS:-3.13 3.9}"
MAX_ARTIFACT_BYTES=$((2 * 1024 * 1024))

# Sanity tests we do not run, each with the reason; printed on every run.
# The shellcheck sanity test needs its binary (Debian package `shellcheck`):
# it is skipped only when the binary is missing, and says so.
declare -A SKIP_SANITY=()
if ! command -v shellcheck >/dev/null 2>&1; then
    SKIP_SANITY[shellcheck]="the shellcheck binary is not installed (apt-get install shellcheck)"
fi
# pslint lints PowerShell; this collection has none, and pwsh is not here.
SKIP_SANITY[pslint]="no PowerShell in this collection and no pwsh on this machine"

say() { printf 'ansible-test.sh: %s\n' "$*"; }
die() { printf 'ansible-test.sh: error: %s\n' "$*" >&2; exit 2; }

STEP="${1:-all}"
case "$STEP" in
    all|sanity|units|build) shift || true ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown step: $STEP (all, sanity, units, build)" ;;
esac
EXTRA=("$@")

"$ROOT/tools/venv.sh" >/dev/null || die "tools/venv.sh failed: run it to see why"
PATH="$VENV/bin:$PATH"
export PATH

WORK="$(mktemp -d /tmp/zfsync-ansible-test.XXXXXX)"
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [ "${ZFSYNC_KEEP_TREE:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
declare -A TIMES=()
declare -A STATUS=()

# -- 1. build ---------------------------------------------------------------
build() {
    local start artifact size listing bad
    start=$(now)
    say "building the collection from $ROOT"
    ansible-galaxy collection build --force --output-path "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 ||
        { cat "$WORK/build.log"; die "ansible-galaxy collection build failed"; }
    artifact="$(ls -1 "$WORK"/dist/*.tar.gz)"
    size=$(stat -c %s "$artifact")
    listing="$(tar -tzf "$artifact")"
    say "artifact $(basename "$artifact"): $size bytes, $(printf '%s\n' "$listing" | wc -l) entries"
    if [ "$size" -gt "$MAX_ARTIFACT_BYTES" ]; then
        tar -tvzf "$artifact" | sort -k3 -n -r | head -n 15
        die "artifact is $size bytes, over the $MAX_ARTIFACT_BYTES byte limit (biggest files above)"
    fi
    # Files that must never ship: venvs, VM images, caches, test output.
    bad="$(printf '%s\n' "$listing" | grep -E \
        '(^|/)(\.venv[^/]*|\.cache|\.pytest_cache|__pycache__|\.hypothesis|\.benchmarks|\.sandbox|\.molecule|\.tox|\.git|tests/output|tests/lab/cache|collections/ansible_collections)(/|$)|\.(pyc|qcow2|img|raw|iso|tar\.gz|whl)$' || true)"
    if [ -n "$bad" ]; then
        printf '%s\n' "$bad" | head -n 20
        die "the artifact holds files that must not ship (above): extend build_ignore in galaxy.yml"
    fi
    ansible-galaxy collection install --no-deps --force -p "$WORK/tree" "$artifact" >"$WORK/install.log" 2>&1 ||
        { cat "$WORK/install.log"; die "ansible-galaxy collection install failed"; }
    TREE="$WORK/tree/ansible_collections/zfsync/zfsync"
    [ -f "$TREE/galaxy.yml" ] || [ -f "$TREE/MANIFEST.json" ] || die "install did not produce $TREE"
    TIMES[build]=$(elapsed "$start")
    STATUS[build]=ok
    say "installed into $TREE (${TIMES[build]} s)"
}

# -- 2. offline helpers -----------------------------------------------------
# ansible-test bootstraps pip in each test venv with a get-pip script it
# downloads from a host these machines cannot reach, unless a copy is cached.
# The pip versions it asks for are read from its own source, so an upgrade of
# ansible-core that changes them is picked up.
write_get_pip_stand_ins() {
    local versions version cache
    cache="$HOME/.ansible/test/cache"
    versions="$(python - <<'PY'
import ast
import inspect

from ansible_test._internal import python_requirements

source = inspect.getsource(python_requirements.get_venv_packages)
versions = set()
for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.keyword) and node.arg == "pip" and isinstance(node.value, ast.Constant):
        versions.add(node.value.value)
    if isinstance(node, ast.Dict):
        for key, value in zip(node.keys, node.values):
            if isinstance(key, ast.Constant) and key.value == "pip" and isinstance(value, ast.Constant):
                versions.add(value.value)
print(" ".join(sorted(v for v in versions if v)))
PY
)"
    [ -n "$versions" ] || die "could not find the pip versions in ansible-test's python_requirements.py"
    mkdir -p "$cache"
    for version in $versions; do
        cat >"$cache/get_pip_${version//./_}.py" <<'PY'
"""Offline stand-in for get-pip.py, written by zfsync's tools/ansible-test.sh.

ansible-test runs this in a fresh venv with the arguments of a `pip install`
(pip==VERSION and its own options). Bootstrap pip from the interpreter's
bundled wheel, then install what was asked from the package index.
"""
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"],
                      stdout=subprocess.DEVNULL)
args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))
PY
    done
    say "get-pip stand-ins for pip $versions in $cache"
}

# The pyenv shims on PATH fail unless their version is selected: give
# ansible-test real interpreters for every target Python we test.
link_pythons() {
    local bin="$WORK/bin" version found=""
    mkdir -p "$bin"
    for version in $PYTHONS; do
        local real=""
        if command -v pyenv >/dev/null 2>&1; then
            local full
            full="$(pyenv versions --bare 2>/dev/null | grep -E "^${version//./\\.}\.[0-9]+$" | sort -V | tail -n 1 || true)"
            [ -n "$full" ] && real="$(pyenv root)/versions/$full/bin/python$version"
        fi
        [ -z "$real" ] && [ -x "/usr/bin/python$version" ] && real="/usr/bin/python$version"
        if [ -n "$real" ] && [ -x "$real" ]; then
            ln -sf "$real" "$bin/python$version"
            found="$found $version"
        else
            say "SKIP Python $version for the multi-version sanity tests: no interpreter found"
        fi
    done
    # The controller Python is the venv's; keep it first.
    ln -sf "$VENV/bin/python" "$bin/python$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    PATH="$bin:$PATH"
    export PATH
    say "target Pythons:$found"
}

# -- 3. sanity --------------------------------------------------------------
sanity() {
    local start rc=0 name skip_args=()
    start=$(now)
    for name in "${!SKIP_SANITY[@]}"; do
        say "SKIP sanity test $name: ${SKIP_SANITY[$name]}"
        skip_args+=(--skip-test "$name")
    done
    say "ansible-test sanity --local (controller $(python --version 2>&1))"
    (cd "$TREE" && ansible-test sanity --local --color no "${skip_args[@]}" "${EXTRA[@]}") || rc=$?
    TIMES[sanity]=$(elapsed "$start")
    if [ $rc -eq 0 ]; then STATUS[sanity]=passed; else STATUS[sanity]="FAILED (exit $rc)"; fi
    say "sanity: ${STATUS[sanity]} in ${TIMES[sanity]} s"
    return $rc
}

# -- 4. units ---------------------------------------------------------------
# On the controller's Python with --local (the venv has what ansible-test
# needs), and on the oldest managed-host Python in a venv ansible-test builds,
# since the engine and the modules run on hosts' Python 3.9+.
units() {
    local start rc=0 controller version
    start=$(now)
    if [ ! -d "$TREE/tests/unit/plugins" ]; then
        STATUS[units]="FAILED (no tests/unit/plugins in the artifact)"
        say "units: ${STATUS[units]}"
        return 1
    fi
    controller="$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    for version in $UNIT_PYTHONS; do
        if [ "$version" = "$controller" ]; then
            say "ansible-test units --local --python $version tests/unit/plugins/"
            (cd "$TREE" && ansible-test units --local --color no --python "$version" \
                "${EXTRA[@]}" tests/unit/plugins/) || rc=$?
        elif command -v "python$version" >/dev/null 2>&1; then
            say "ansible-test units --venv --python $version tests/unit/plugins/ (oldest managed-host Python)"
            (cd "$TREE" && ansible-test units --venv --color no --python "$version" \
                "${EXTRA[@]}" tests/unit/plugins/) || rc=$?
        else
            say "SKIP units on Python $version: no interpreter found"
        fi
    done
    TIMES[units]=$(elapsed "$start")
    if [ $rc -eq 0 ]; then STATUS[units]=passed; else STATUS[units]="FAILED (exit $rc)"; fi
    say "units: ${STATUS[units]} in ${TIMES[units]} s"
    return $rc
}

TOTAL_START=$(now)
FAILED=0
build
if [ "$STEP" != build ]; then
    write_get_pip_stand_ins
    link_pythons
fi
case "$STEP" in
    all) sanity || FAILED=1; units || FAILED=1 ;;
    sanity) sanity || FAILED=1 ;;
    units) units || FAILED=1 ;;
esac

say "summary (total $(elapsed "$TOTAL_START") s):"
for step in build sanity units; do
    [ -n "${STATUS[$step]:-}" ] && printf '  %-7s %-22s %s s\n' "$step" "${STATUS[$step]}" "${TIMES[$step]}"
done
if [ -n "${STATUS[sanity]:-}" ]; then
    for name in "${!SKIP_SANITY[@]}"; do
        printf '  skipped sanity test %s: %s\n' "$name" "${SKIP_SANITY[$name]}"
    done
fi
exit $FAILED
