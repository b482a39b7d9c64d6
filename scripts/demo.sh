#!/usr/bin/env bash
# The main job on the embedded default: offline, CPU only. Builds (or reuses) a tiny random Qwen2.5-VL, warm-starts
# it with a little SFT on the bundled synthetic geometry set, then RL-trains it with MHPO through vLLM and plots
# the run. Extra arguments are config overrides (e.g. algorithm.loss=grpo trainer.output_dir=runs/demo_grpo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=runs/demo_cpu
for arg in "$@"; do case "$arg" in trainer.output_dir=*) out=${arg#trainer.output_dir=};; esac; done
.venv/bin/mhpo-vl train --config configs/demo_cpu.yaml "$@"
.venv/bin/mhpo-vl plot "$out" --out "$out/curves.png" --smooth 3
