"""Ship a trained run as the package's base model: ``facesearch/models/base/model.pt`` in half precision.

    python tools/ship_base.py RUN_DIR POOL_DIR

Copies RUN_DIR's best checkpoint without its training state (optimizer, RNG, history) and with half-precision
weights, and POOL_DIR/never_seen.txt (written by ``tools/base_pool.py``) beside it; prints the fingerprint
that MODEL_CARD.md must name. Check that half precision loses nothing measurable before committing
(``facesearch evaluate pairs`` on both files: docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from facesearch.checkpoint import export_checkpoint, load_checkpoint

BASE_DIR = Path(__file__).resolve().parents[1] / "facesearch" / "models" / "base"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="The training run folder (its best.pt) or a checkpoint.")
    ap.add_argument("pool", type=Path, help="The tools/base_pool.py folder the run was prepared from.")
    args = ap.parse_args()

    target = export_checkpoint(args.run, BASE_DIR / "model.pt", half=True)
    shutil.copy(args.pool / "never_seen.txt", BASE_DIR / "never_seen.txt")
    loaded = load_checkpoint(target)
    print(f"{target}: {target.stat().st_size / 2**20:.1f} MB, fingerprint {loaded.fingerprint}, "
          f"{len(loaded.class_names)} identities, {loaded.preprocess.input_size} px, fc7 {loaded.config.fc_width}-d")


if __name__ == "__main__":
    main()
