#!/usr/bin/env bash
# One GPU call for the explain benchmark (run from the repo root on the lent GPU machine, $OUT set):
# train CIFAR-10 and the face model with bench/gpu.py, run the faithfulness benchmark on the face model,
# compute CIFAR-10 feature-map grids, and send back the reports plus both models in fp16 parts.
# Needs .dev/cifar10.pack and .dev/celeba112q85.pack (bench/device/pack.py) carried along.
#   CIFAR_S / FACES_S: training seconds; PAIRS: faithfulness pairs.
set -uo pipefail
T=/tmp/xg
CIFAR_S=${CIFAR_S:-120}
FACES_S=${FACES_S:-210}
PAIRS=${PAIRS:-400}
SMOKE=${SMOKE:-}  # set: a tiny CPU rehearsal of the whole script
if [ -n "$SMOKE" ]; then GPU_ARGS="--smoke"; DEV=cpu; PAIRS=4; else GPU_ARGS=""; DEV=cuda; fi
mkdir -p "$T/e"
python3 bench/device/pack.py unpack .dev/cifar10.pack "$T/cifar" >/dev/null
python3 bench/device/pack.py unpack .dev/celeba112q85.pack "$T/faces" >/dev/null
python3 bench/gpu.py --cifar "$T/cifar" --faces "$T/faces" --budget-cifar "$CIFAR_S" --budget-faces "$FACES_S" \
  --fc-width 512 --no-compile --skip throughput $GPU_ARGS --out "$T/b" >"$T/e/gpu.log" 2>&1
tail -25 "$T/e/gpu.log"
python3 bench/explain.py --checkpoint "$T/b/faces-run/best.pt" --data "$T/faces" --pairs "$PAIRS" --batch 25 \
  --device "$DEV" --threads 8 --out "$T/e" --work "$T/e" >/dev/null 2>"$T/e/explain.log"
tail -3 "$T/e/explain.log"
python3 bench/explain_gpu.py grid "$T/b/cifar10-run/best.pt" "$T/cifar" "$T/e/cifar_grid.npz"
cp "$T/b/gpu_bench.json" "$T/b/gpu_bench.md" "$T/e/" 2>/dev/null
cp "$T/b/faces-run/metrics.jsonl" "$T/e/faces_metrics.jsonl" 2>/dev/null
cp "$T/b/cifar10-run/metrics.jsonl" "$T/e/cifar10_metrics.jsonl" 2>/dev/null
tar czf "$OUT/small.tgz" -C "$T" e
python3 bench/explain_gpu.py export "$T/b/faces-run/best.pt" "$OUT/faces"
python3 bench/explain_gpu.py export "$T/b/cifar10-run/best.pt" "$T/cifarmodel"
total=$(du -cb "$OUT"/* "$T"/cifarmodel.part* | tail -1 | cut -f1)
if [ "$total" -lt 66000000 ]; then mv "$T"/cifarmodel.part* "$OUT/"; else echo "cifar model left behind ($total bytes)"; fi
ls -la "$OUT"
