#!/usr/bin/env bash
# The lent-GPU check, one command (about 5 minutes on an H100/H200):
#   1. ViT-B-32 (random init) fine-tune and eval images/s at batch 256, 224 px, bf16
#      (and fp32 for comparison), through the harness's own training loop and predict;
#   2. one full trial at 224 px: badnets on ViT-B-32 (stage 1), then none + tbar and the
#      evaluation (stage 2), printing its timings and peak GPU memory.
# Everything it writes goes to $OUT (default /tmp/gpu-check). The GPU image has torch,
# timm and the scientific stack; open_clip and its text deps travel as wheels in .whl/
# (see benchmarks/gpu/README.md for how they are fetched).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 BENCH_CACHE=/tmp/bench-cache
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
  python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)"
  for prec in bf16 fp32; do
    python3 benchmarks/throughput.py --model ViT-B-32 --batch 256 --resolution 224 --device cuda \
      --precision "$prec" --train-steps 30 --eval-batches 20 --warmup 5 --json "$OUT/throughput_vitb32_$prec.json"
  done
  python3 benchmarks/throughput.py --model tiny-clip --batch 256 --device cuda --precision bf16 \
    --train-steps 30 --eval-batches 20 --warmup 5 --json "$OUT/throughput_tinyclip_bf16.json"
  start=$(date +%s)
  python3 -m bench.cli run --suite benchmarks/gpu/gpu224.yaml --executor serial --device cuda \
    --results /tmp/gpu-results --leaderboards "$OUT" --summary-json "$OUT/trial_summary.json"
  echo "full trial (data generation + stage 1 + stage 2), wall: $(( $(date +%s) - start )) s"
  python3 benchmarks/gpu/trial_timings.py /tmp/gpu-results | tee "$OUT/trial_timings.txt"
} 2>&1 | tee "$OUT/check.log"
