#!/usr/bin/env bash
# Create or refresh the controller venv (.venv, CPython 3.13) with the tools
# in requirements-dev.txt, plus the community.general and ansible.posix
# collections taken from the `ansible` wheel on PyPI (Galaxy is not
# reachable from these machines).
#
# Idempotent: does nothing when the venv's stamp matches the hash of
# requirements-dev.txt and the collection bundle below.
#
#   tools/venv.sh            create or refresh .venv
#   tools/venv.sh --force    rebuild even if the stamp matches
#   tools/venv.sh --check    exit 0 if up to date, 1 if a refresh is due
#
# Environment: ZFSYNC_VENV (default ROOT/.venv), ZFSYNC_PYTHON (an interpreter
# to build the venv with; default the newest CPython 3.13 pyenv has),
# ZFSYNC_CACHE (download cache, default ~/.cache/zfsync).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ZFSYNC_VENV:-$ROOT/.venv}"
REQUIREMENTS="$ROOT/requirements-dev.txt"
CACHE="${ZFSYNC_CACHE:-$HOME/.cache/zfsync}"
PYTHON_SERIES="3.13"

# Collections we need from the `ansible` package, and which release of it.
# ansible 14.x goes with ansible-core 2.21.
ANSIBLE_BUNDLE="ansible==14.5.0"
BUNDLED_COLLECTIONS=(community/general ansible/posix)

STAMP="$VENV/.zfsync-stamp"

say() { printf 'venv.sh: %s\n' "$*"; }
die() { printf 'venv.sh: error: %s\n' "$*" >&2; exit 2; }

MODE=build
case "${1:-}" in
    "") ;;
    --force) MODE=force ;;
    --check) MODE=check ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
esac

[ -f "$REQUIREMENTS" ] || die "missing $REQUIREMENTS"

wanted_stamp() {
    {
        echo "python $PYTHON_SERIES"
        echo "bundle $ANSIBLE_BUNDLE: ${BUNDLED_COLLECTIONS[*]}"
        cat "$REQUIREMENTS"
    } | sha256sum | cut -d' ' -f1
}

venv_python_ok() {
    [ -x "$VENV/bin/python" ] &&
        "$VENV/bin/python" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$PYTHON_SERIES' else 1)" 2>/dev/null
}

up_to_date() {
    venv_python_ok && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(wanted_stamp)" ]
}

find_python() {
    if [ -n "${ZFSYNC_PYTHON:-}" ]; then
        echo "$ZFSYNC_PYTHON"
        return
    fi
    # The pyenv shims fail unless the version is selected: resolve the real
    # binary of the newest installed 3.13.x instead.
    if command -v pyenv >/dev/null 2>&1; then
        local version
        version="$(pyenv versions --bare 2>/dev/null | grep -E "^${PYTHON_SERIES//./\\.}\.[0-9]+$" | sort -V | tail -n 1 || true)"
        if [ -n "$version" ]; then
            echo "$(pyenv root)/versions/$version/bin/python$PYTHON_SERIES"
            return
        fi
    fi
    for candidate in "/usr/bin/python$PYTHON_SERIES" "/usr/local/bin/python$PYTHON_SERIES"; do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return
        fi
    done
    die "no CPython $PYTHON_SERIES found (pyenv install $PYTHON_SERIES, or set ZFSYNC_PYTHON)"
}

if [ "$MODE" = check ]; then
    if up_to_date; then say "$VENV is up to date"; exit 0; fi
    say "$VENV needs a refresh"; exit 1
fi

# Two sessions may run this at once on the same checkout.
mkdir -p "$CACHE"
exec 9>"$CACHE/venv.lock"
if command -v flock >/dev/null 2>&1; then
    flock -w 900 9 || die "another tools/venv.sh holds $CACHE/venv.lock"
fi

if [ "$MODE" = build ] && up_to_date; then
    say "$VENV is up to date (stamp $(cut -c1-12 "$STAMP")), nothing to do"
    exit 0
fi

START=$(date +%s)
if ! venv_python_ok || [ "$MODE" = force ]; then
    PYTHON="$(find_python)"
    "$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 12)' ||
        die "$PYTHON is not CPython $PYTHON_SERIES"
    say "creating $VENV with $PYTHON ($("$PYTHON" --version 2>&1))"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
else
    say "refreshing $VENV ($("$VENV/bin/python" --version 2>&1)): requirements changed"
fi

say "upgrading pip"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
say "installing requirements-dev.txt"
"$VENV/bin/python" -m pip install --quiet --upgrade --upgrade-strategy only-if-needed -r "$REQUIREMENTS"

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS"
say "fetching $ANSIBLE_BUNDLE (cached in $WHEELS) for: ${BUNDLED_COLLECTIONS[*]}"
"$VENV/bin/python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$WHEELS" "$ANSIBLE_BUNDLE"
WHEEL="$(ls -1 "$WHEELS"/ansible-"${ANSIBLE_BUNDLE#ansible==}"-py3-none-any.whl)"
# Only the listed collections, not the 400 MB of the whole package.
"$VENV/bin/python" - "$WHEEL" "$SITE" "${BUNDLED_COLLECTIONS[@]}" <<'PY'
import os
import shutil
import sys
import zipfile

wheel, site, collections = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    for collection in collections:
        prefix = "ansible_collections/%s/" % collection
        target = os.path.join(site, prefix)
        shutil.rmtree(target, ignore_errors=True)
        members = [n for n in names if n.startswith(prefix) and not n.endswith("/")]
        if not members:
            sys.exit("venv.sh: %s has no %s" % (os.path.basename(wheel), collection))
        for name in members:
            archive.extract(name, site)
        print("venv.sh: installed %s (%d files) into %s" % (collection.replace("/", "."), len(members), target))
PY

wanted_stamp >"$STAMP"
VERSION_TEXT="$("$VENV/bin/ansible" --version)"
say "done in $(( $(date +%s) - START )) s: ${VERSION_TEXT%%$'\n'*}"
say "activate with: . $VENV/bin/activate"
