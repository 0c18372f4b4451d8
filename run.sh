#!/usr/bin/env bash
# Thin launcher: make the virtual environment, install the project, run.
#   ./run.sh         set up, then train the example (examples/quickstart.toml)
#   ./run.sh test    set up, then run the test suite
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --disable-pip-version-check -q -e ".[dev]"
if [ "${1:-}" = "test" ]; then
    shift
    exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/lora-train run examples/quickstart.toml "$@"
