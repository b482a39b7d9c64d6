#!/usr/bin/env bash
# The first-GPU check (README, "GPU check"): two RL steps of a random-weight Qwen2.5-VL-3B with vLLM colocated
# (sleep mode, weight sync, bf16), then the loss and logprob benchmarks on CUDA. Needs one CUDA GPU and the README's
# GPU install (the CUDA `vllm`); without them it prints one line saying what is missing and exits 2.
# Arguments go to scripts/gpu_check.py (e.g. --peak-tflops 312; --device cpu --tiny for a CPU dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
exec "$PY" scripts/gpu_check.py "$@"
