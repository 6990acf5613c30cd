#!/usr/bin/env bash
# Where users wait, this checkout against an earlier commit, in one run (docs/BENCHMARKS.md, issue 15):
# cold `facesearch who` (alternating, 3 each, a 16-face gallery each side builds with its own code and base
# model) and `evaluate pairs` on LFW View 1's raw photos with the random baseline.
#   bash bench/against.sh OLD_REV [LFW_VIEW1_DIR]      (run idle: the figures are wall-clock times)
set -euo pipefail
OLD_REV="$1"; LFW="${2:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data/lfw-view1}"
NEW="$(cd "$(dirname "$0")/.." && pwd)"; WORK="$(mktemp -d /tmp/facesearch-against.XXXXXX)"
source "$NEW/scripts/env.sh"
git -C "$NEW" worktree add -f -q "$WORK/old" "$OLD_REV"
trap 'git -C "$NEW" worktree remove --force "$WORK/old" >/dev/null 2>&1 || true' EXIT
mkdir -p "$WORK/people/p1"; cp "$NEW"/sample/photos/07201/*.jpg "$WORK/people/p1/"
photo="$NEW/sample/photos/07201/018834.jpg"
fs() { local dir="$1"; shift; (cd "$dir" && PYTHONPATH="$dir" python -m facesearch "$@"); }
for side in old new; do dir=$([ $side = old ] && echo "$WORK/old" || echo "$NEW")
    fs "$dir" enroll "$WORK/people" -g "$WORK/gallery-$side" --device cpu --largest > /dev/null 2>&1; done
seconds() { local s e; s=$(date +%s.%N); "$@" > /dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
for i in 1 2 3; do for side in old new; do dir=$([ $side = old ] && echo "$WORK/old" || echo "$NEW")
    echo "cold who $side $(seconds fs "$dir" who "$photo" -g "$WORK/gallery-$side" --device cpu) s"; done; done
for side in old new; do dir=$([ $side = old ] && echo "$WORK/old" || echo "$NEW")
    t=$(seconds fs "$dir" evaluate pairs "$LFW/pairsDevTrain.txt" "$LFW/pairsDevTest.txt" "$LFW/images" -c base \
        --device cpu --results "$WORK/results-$side.jsonl")
    echo "LFW raw eval $side $t s"; done
