#!/usr/bin/env bash
# End-to-end demo on the bundled sample (sample/): creates .venv on first use, then runs
# prepare -> train (on sample/train) -> enroll -> calibrate -> who -> evaluate open-set -> explain (on the
# never-trained sample/photos people). Outputs: demo-out/.
# Extra arguments go to scripts/demo.py (see --help there).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python scripts/demo.py "$@"
