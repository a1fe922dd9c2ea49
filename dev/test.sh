#!/usr/bin/env bash
# Run lint and the whole test suite: current packages, A1111's pins, and the two WebUI UI stacks.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# LLMCOND_REQUIRE: what each environment must have; a missing one fails instead of skipping (tests/needs.py)
echo "== tests: current packages (.venv)"
LLMCOND_REQUIRE=oracles,tokenizers .venv/bin/python -m pytest -q "$@"
echo "== tests: A1111 1.10.1 pins (.venv-a1111)"
LLMCOND_REQUIRE=tokenizers .venv-a1111/bin/python -m pytest -q -p no:cacheprovider -m "not oracle" "$@"
declare -A UI_REQUIRE=([gradio3]=tokenizers,ui,browser [gradio4]=tokenizers,ui,browser,diffusers)
for ui in gradio3 gradio4; do
  if [ -x ".venv-$ui/bin/python" ]; then
    echo "== tests: WebUI UI stack .venv-$ui (host stand-in, API, browser, UNet, diffusers pipeline)"
    LLMCOND_REQUIRE="${UI_REQUIRE[$ui]}" ".venv-$ui/bin/python" -m pytest -q -p no:cacheprovider tests/webui_standin tests/test_diffusers_pipeline.py "$@"
  fi
done
