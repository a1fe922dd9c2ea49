#!/usr/bin/env bash
# Run lint and the whole test suite in both environments (current packages, then A1111's pins).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== tests: current packages (.venv)"
.venv/bin/python -m pytest -q "$@"
echo "== tests: A1111 1.10.1 pins (.venv-a1111)"
.venv-a1111/bin/python -m pytest -q -m "not oracle and not browser" -p no:cacheprovider "$@"
