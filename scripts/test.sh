#!/usr/bin/env bash
# Set up .venv (pybert built and installed with `pip install .`, plus the test tools), then run
# the test suite. Extra arguments go to pytest. Works on a fresh machine with no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet ".[test]"
# The book's own code (d2l 0.17.6) for the compatibility tests; its pinned numpy/pandas/jupyter
# are not needed for the BERT chapter, so it is installed without dependencies.
.venv/bin/python -m pip install --quiet --no-deps d2l==0.17.6
# pytest (not python -m pytest): the checkout's pybert/ folder must not shadow the installed
# package, which holds the compiled extension.
exec .venv/bin/pytest "$@"
