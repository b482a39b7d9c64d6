#!/usr/bin/env bash
# The test command: installs what is needed (scripts/setup.sh, a no-op when .venv is current), then runs pytest.
#   bash scripts/test.sh             # everything: fast tests + slow end-to-end tests (vLLM, DeepSpeed, training)
#   bash scripts/test.sh -m "not slow"   # the fast suite only (extra arguments go to pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
