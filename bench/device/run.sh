#!/usr/bin/env bash
# Run ON the GPU machine (device tool), from the repo root, with .dev/ carried (see bench/device/transfer.sh).
#   bash bench/device/run.sh faces   # matmul peak, 112 px images/s + MFU, face training, LFW View 1, open-set
#   bash bench/device/run.sh cifar   # CIFAR-10 in a 5-minute budget
# Only torch, torchvision, numpy, pillow (and matplotlib for plots) are needed there. Reports go to $OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
case "${1:?faces or cifar}" in
  faces)
    python3 bench/device/pack.py unpack .dev/celeba.pack /tmp/celeba
    python3 bench/device/pack.py unpack .dev/lfw.pack /tmp/lfw
    python3 bench/gpu.py --faces /tmp/celeba --lfw /tmp/lfw --lfw-pairs .dev --budget-faces "${BUDGET:-180}" \
      --skip cifar10 --out /tmp/f 2>&1 | tee "$OUT/faces.log"
    cp /tmp/f/gpu_bench.json /tmp/f/gpu_bench.md /tmp/f/faces-run/metrics.jsonl /tmp/f/faces-run/curves.png "$OUT/" || true
    cp /tmp/f/lfw/*.png "$OUT/" 2>/dev/null || true ;;
  cifar)
    python3 bench/device/pack.py unpack .dev/cifar10.pack /tmp/cifar10
    python3 bench/gpu.py --cifar /tmp/cifar10 --budget-cifar "${BUDGET:-300}" --skip faces,throughput,peak \
      --out /tmp/b 2>&1 | tee "$OUT/cifar.log"
    cp /tmp/b/gpu_bench.json "$OUT/cifar_bench.json"; cp /tmp/b/gpu_bench.md "$OUT/cifar_bench.md"
    cp /tmp/b/cifar10-run/metrics.jsonl "$OUT/cifar_metrics.jsonl"; cp /tmp/b/cifar10-run/curves.png "$OUT/cifar_curves.png" || true ;;
esac
