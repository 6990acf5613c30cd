#!/usr/bin/env bash
# Run HERE (the CPU machine) before a GPU session: builds the data that travels to the GPU machine under
# .dev/ (git-ignored; name it in the device call's `carry`). Needs the prepare outputs of CelebA and LFW:
#   facesearch prepare ../shared/data/celeba-wild-299 /tmp/celeba
#   facesearch prepare ../shared/data/lfw-view1/images /tmp/lfw --select center --val 0 --test 0
# Crops are re-encoded at JPEG quality 85 so both sets fit one 64 MB transfer (~23 + ~17 MB);
# CIFAR-10 (~21 MB packed) goes in a second call.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DATA="${DATA:-../shared/data}"
CELEBA="${CELEBA:-/tmp/celeba}"
LFW="${LFW:-/tmp/lfw}"
PY="${PY:-.venv/bin/python}"
mkdir -p .dev
"$PY" bench/device/transcode.py "$CELEBA" /tmp/celeba-q85 --quality 85
"$PY" bench/device/transcode.py "$LFW" /tmp/lfw-q85 --quality 85
"$PY" bench/device/pack.py pack /tmp/celeba-q85 .dev/celeba.pack
"$PY" bench/device/pack.py pack /tmp/lfw-q85 .dev/lfw.pack
"$PY" bench/device/pack.py pack "$DATA/cifar10" .dev/cifar10.pack
cp "$DATA/lfw-view1/pairsDevTrain.txt" "$DATA/lfw-view1/pairsDevTest.txt" .dev/
du -sh .dev/*
