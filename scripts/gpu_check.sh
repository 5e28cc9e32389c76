#!/usr/bin/env bash
# The GPU check of issue 24, sized to finish within 8 minutes on one H100/H200 (docs/performance.md#gpu-check):
# the gpu-marked tests, then scripts/gpu_check.py (PGD-AT fp32 vs bf16 + channels_last, AutoAttack on 1,000
# points, streamed ResNet-50 steps with GPU JPEG decoding on and off, 2-process evaluation where 2 GPUs exist).
#   bash scripts/gpu_check.sh            (writes outputs/bench/gpu_check.json; prints every number)
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: no GPU visible"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
status=0
timeout 150 python -m pytest -m gpu -p no:xdist -q -o addopts="" tests || status=$?
timeout 330 python scripts/gpu_check.py "$@" || status=$?
exit $status
