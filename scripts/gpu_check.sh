#!/usr/bin/env bash
# The first-GPU check (README, "GPU check"): two RL steps of a random-weight Qwen2.5-VL-3B with vLLM colocated
# (sleep mode, weight sync, bf16, DeepSpeed ZeRO-2), then the loss and logprob benchmarks on CUDA. Needs a CUDA GPU and
# the README's GPU install (the CUDA `vllm`); without them it prints one line saying what is missing and exits 2.
#   bash scripts/gpu_check.sh                 # 1 GPU
#   bash scripts/gpu_check.sh --gpus 2        # 2 ranks under torchrun (ZeRO-2, 2 RL steps, no benchmarks): each
#                                             # rank's engine must hold its weights on its own GPU (cuda:LOCAL_RANK)
#   bash scripts/gpu_check.sh --gpus 2 --dry-run   # print the command it would run, run nothing
# Other arguments go to scripts/gpu_check.py (e.g. --peak-tflops 312; --device cpu --tiny for a CPU dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
GPUS=1
DRY=0
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) GPUS="$2"; shift 2 ;;
    --gpus=*) GPUS="${1#--gpus=}"; shift ;;
    --dry-run) DRY=1; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [ "$GPUS" -gt 1 ]; then
  CMD=("$PY" -m torch.distributed.run --nproc_per_node "$GPUS" --master_port "${MASTER_PORT:-29531}"
       scripts/gpu_check.py --steps 2 --skip-benchmarks --out runs/gpu_check_${GPUS}gpu ${ARGS[@]+"${ARGS[@]}"})
else
  CMD=("$PY" scripts/gpu_check.py ${ARGS[@]+"${ARGS[@]}"})
fi
if [ "$DRY" = 1 ]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
if [ "$GPUS" -gt 1 ]; then
  # one line, exit 2, when the machine has fewer GPUs than asked (before torchrun starts anything)
  "$PY" - "$GPUS" <<'PYEOF' || exit 2
import sys
import torch
want, have = int(sys.argv[1]), torch.cuda.device_count()
if have < want:
    print(f"gpu_check: --gpus {want} needs {want} CUDA GPUs; this machine has {have}")
    sys.exit(2)
PYEOF
fi
exec "${CMD[@]}"
