#!/usr/bin/env bash
# Small venvs with pytest for each managed-host Python the engine supports
# (3.9 ... 3.12, from pyenv), so its tests run on the oldest interpreters too.
#   tools/pyvenvs.sh 3.9 3.12     -> .venv-py3.9 .venv-py3.12
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for series in "$@"; do
    venv="$ROOT/.venv-py$series"
    if [ -x "$venv/bin/pytest" ]; then
        continue
    fi
    version="$(pyenv versions --bare 2>/dev/null | grep -E "^${series//./\\.}\.[0-9]+$" | sort -V | tail -n 1 || true)"
    [ -n "$version" ] || { echo "pyvenvs.sh: no CPython $series in pyenv" >&2; exit 2; }
    echo "pyvenvs.sh: $venv from CPython $version"
    PYENV_VERSION="$version" pyenv exec python -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "pytest>=7,<9" "hypothesis>=6,<7"
done
