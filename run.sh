#!/usr/bin/env bash
# Thin launcher: make the virtual environment, install the project, run.
#   ./run.sh         set up, then open the wizard with the example loaded
#                    (examples/quickstart.toml); not in a terminal, or with arguments
#                    (e.g. --set ...), train the example headless with lora-train
#   ./run.sh test    set up, then run the test suite
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
# Install only when pyproject.toml changed since the last install (the code itself is an
# editable install): a relaunch starts in about a second.
if ! cmp -s pyproject.toml .venv/.installed-pyproject.toml; then
    .venv/bin/python -m pip install --disable-pip-version-check -q -e ".[dev]"
    cp pyproject.toml .venv/.installed-pyproject.toml
fi
if [ "${1:-}" = "test" ]; then
    shift
    exec .venv/bin/python -m pytest "$@"
fi
if [ $# -eq 0 ] && [ -t 0 ] && [ -t 1 ]; then
    exec .venv/bin/lora-tui examples/quickstart.toml
fi
exec .venv/bin/lora-train run examples/quickstart.toml "$@"
