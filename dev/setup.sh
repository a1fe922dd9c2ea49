#!/usr/bin/env bash
# Set up the development environments from scratch and run the demo.
# Creates .venv (current packages) and .venv-a1111 (A1111 1.10.1 pins), then runs the tiny end-to-end demo.
# Files the environments share (torch first of all) are hard links to .venv's: about 3 GB less disk for four.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
make_env() {  # name requirements-file
  if [ ! -x "$1/bin/python" ]; then
    "$PY" -m venv "$1"
    # the same torch wheel as .venv's: hard-linked instead of unpacked again (dev/share_packages.py)
    if [ "$1" != .venv ]; then "$PY" dev/share_packages.py seed .venv "$1" torch; fi
  fi
  "$1/bin/python" -m pip install -q --disable-pip-version-check -r "$2" 2>&1 | grep -v "is ignored: it is neither" || true
  "$1/bin/python" -c "import torch, safetensors" # fail loudly if the install did not work
  if [ "$1" != .venv ]; then "$PY" dev/share_packages.py dedupe .venv "$1"; fi
}
make_env .venv requirements-dev.txt
make_env .venv-a1111 requirements-a1111.txt
if [ -f dev/extra-setup.sh ]; then bash dev/extra-setup.sh; fi
.venv/bin/python -m lib_llmcond demo
