#!/usr/bin/env bash
# WebUI-side test environments (owned by the webui work; dev/setup.sh calls this if present).
#   .venv-gradio3: A1111 1.10.1's UI stack (gradio 3.41.2, fastapi 0.94, pydantic 1, numpy 1.26)
#   .venv-gradio4: Forge2's UI stack (gradio 4.40.0, pydantic 2) + diffusers (with transformers 4.57.6) for the
#                  SDXL-shaped UNet test and the diffusers pipeline test
# Both get torch 2.13.0 (CPU), the library's dependencies, pytest and playwright (driving Debian's chromium:
# playwright never downloads a browser here). Idempotent: an environment whose marker matches is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

APT=(chromium fonts-dejavu-core fonts-noto-color-emoji)
missing=()
for pkg in "${APT[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

COMMON=(torch==2.13.0 safetensors sentencepiece gguf psutil pytest pytest-timeout hypothesis playwright httpx)
GRADIO3=(gradio==3.41.2 gradio_client==0.5.0 fastapi==0.94.0 "pydantic<2" "huggingface_hub<0.26" numpy==1.26.4
         tokenizers==0.13.3 "starlette<0.27" httpx==0.24.1)
GRADIO4=(gradio==4.40.0 fastapi==0.112.2 httpx==0.27.2 "pydantic>=2,<3" "huggingface_hub>=0.34,<1" "numpy<2" tokenizers diffusers==0.37.1
         transformers==4.57.6)  # diffusers 0.37 SDXL pipelines import it (Forge2 pins 4.46.1: too old for them)

make_env() {  # dir packages...
  local dir=$1; shift
  local want; want=$(printf '%s\n' "$@" "${COMMON[@]}" | sha256sum | cut -c1-16)
  if [ -f "$dir/.llmcond-env" ] && [ "$(cat "$dir/.llmcond-env")" = "$want" ]; then return 0; fi
  if [ ! -x "$dir/bin/python" ]; then
    "$PY" -m venv "$dir"
    "$PY" dev/share_packages.py seed .venv "$dir" torch  # see dev/setup.sh
  fi
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@" "${COMMON[@]}"
  "$dir/bin/python" -c "import gradio, torch, playwright, pydantic; print('$dir: gradio', gradio.__version__, 'pydantic', pydantic.VERSION)"
  for other in .venv .venv-gradio3; do
    if [ "$other" != "$dir" ]; then "$PY" dev/share_packages.py dedupe "$other" "$dir"; fi
  done
  echo "$want" > "$dir/.llmcond-env"
}
make_env .venv-gradio3 "${GRADIO3[@]}"
make_env .venv-gradio4 "${GRADIO4[@]}"
