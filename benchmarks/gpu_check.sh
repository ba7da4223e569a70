#!/usr/bin/env bash
# The prepared GPU check (issue 14): one GPU machine, under 8 minutes, no hub access.
#   benchmarks/gpu_check.sh            # installs vllm + peft + trl, gpu tests, GRPO side by side
#   benchmarks/gpu_check.sh --dry-run  # here on CPU: no installs, a tiny model, the same code path
# Writes gpu_check.json (or $OUT/gpu_check.json when OUT is set) and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT_JSON=${OUT:-.}/gpu_check.json
DRY=""
[[ "${1:-}" == "--dry-run" ]] && DRY="--dry-run"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
if [[ -z "$DRY" ]]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  # vllm brings its own CUDA torch; keep r1lab's install otherwise
  timeout 300 $PY -m pip install -q "vllm>=0.10.2" "peft>=0.13" "trl>=0.20" || echo "install failed: continuing with what is there"
  timeout 120 $PY -m pytest -m gpu -q -p no:cacheprovider tests || echo "gpu tests FAILED"
else
  $PY -m pytest -q -p no:cacheprovider tests/rollout/test_vllm_engine.py tests/rollout/test_sync_probe.py
fi
timeout 420 $PY benchmarks/gpu_check.py $DRY --out "$OUT_JSON"
echo "gpu_check done in $(( $(date +%s) - start )) s; results in $OUT_JSON"
