"""Keep every ensemble member's class probabilities for labelled frames, to study fusions and
flags without running the encoders again (issues 10 and 12).

For each frame: the fold adapters' probabilities on both TTA views (F x V x 3 x S x S, the
``members`` that :meth:`PSFHModel.prediction_from_members` fuses), stored as float16 under
``$PSFH_CACHE/members/<package key>/<mode>/<id>.safetensors`` (outside the work tree, keyed by a
hash of the package's weight files). ``--mode oof``: the one fold that did not train on the frame
(the package's folds.json); ``--mode all``: every fold (the product's ensemble). Finished frames
are skipped, so a stopped run resumes.

    python -m experiments.cache_members --ids-file docs/splits/oof_every4th_ids.txt --mode oof
    python -m experiments.cache_members --ids-file docs/splits/test_ids.txt --mode all

The other experiments read them with experiments.common (members_folder, load_members, kept_samples).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from safetensors.torch import save_file

from experiments.common import DEFAULT_DATA, DEFAULT_PACKAGE, members_folder
from psfh.core.files import atomic_target
from psfh.io.dataset import find_samples, read_ids_file, select_samples
from psfh.io.images import load_image
from psfh.model.package import read_fold_assignment
from psfh.model.psfh_model import PSFHModel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--package", type=Path, default=DEFAULT_PACKAGE)
    parser.add_argument("--ids-file", type=Path, required=True)
    parser.add_argument("--mode", choices=("oof", "all"), required=True)
    args = parser.parse_args()

    model = PSFHModel.from_pretrained(args.package, device="cpu")
    fold_of = read_fold_assignment(args.package) if args.mode == "oof" else {}
    out = members_folder(args.package, args.mode)
    out.mkdir(parents=True, exist_ok=True)
    samples = select_samples(find_samples(args.data), read_ids_file(args.ids_file))
    start = time.perf_counter()
    done = 0
    for index, sample in enumerate(samples):
        path = out / f"{sample.id}.safetensors"
        if path.is_file():
            continue
        folds = [fold_of[sample.id]] if args.mode == "oof" else model.folds
        pixels = load_image(sample.image_path).pixels
        members = model.fold_probabilities(model.preprocess(pixels, sample.id), folds, tta=True)
        with atomic_target(path) as temporary:
            save_file({fold: m.half().contiguous() for fold, m in zip(folds, members)}, str(temporary))
        done += 1
        if done % 10 == 0:
            rate = (time.perf_counter() - start) / done
            print(f"{index + 1}/{len(samples)} {rate:.1f} s/frame", flush=True)
    print(f"done: {out} ({done} computed, {time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
