"""Keep every ensemble member's class probabilities for labelled frames, to study fusions and
flags without running the encoders again (issues 10 and 12).

For each frame: the fold adapters' probabilities on both TTA views (F x V x 3 x S x S, the
``members`` that :meth:`PSFHModel.finish` fuses), stored as float16 under
``$PSFH_CACHE/members/<package key>/<mode>/<id>.safetensors`` (outside the work tree, keyed by a
hash of the package's weight files). ``--mode oof``: the one fold that did not train on the frame
(the package's folds.json); ``--mode all``: every fold (the product's ensemble). Finished frames
are skipped, so a stopped run resumes.

    python scripts/cache_members.py --ids-file docs/splits/oof_every4th_ids.txt --mode oof
    python scripts/cache_members.py --ids-file docs/splits/test_ids.txt --mode all
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from psfh import inference  # noqa: E402
from psfh.io.dataset import find_samples, read_ids_file, select_samples  # noqa: E402
from psfh.core.files import atomic_target  # noqa: E402
from psfh.io.images import load_image  # noqa: E402
from psfh.model.psfh_model import PSFHModel  # noqa: E402
from psfh.model.package import read_fold_assignment  # noqa: E402
from psfh.training.embedding_cache import cache_root  # noqa: E402


# The frames members are kept for (the commands above): {title: (mode, ids file under the repository)}.
KEPT_SETS = {"out of fold": ("oof", "docs/splits/oof_every4th_ids.txt"), "test": ("all", "docs/splits/test_ids.txt")}


def package_key(folder: Path) -> str:
    """A hash of the package's weight and config files (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".safetensors", ".json"):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return f"{folder.name}-{digest.hexdigest()[:16]}"


def members_folder(package: Path, mode: str) -> Path:
    return cache_root() / "members" / package_key(package) / mode


def load_members(folder: Path, sample_id: str) -> tuple[torch.Tensor, list[str]]:
    """-> (F x V x 3 x S x S float32 members, their fold names)."""
    stored = load_file(str(folder / f"{sample_id}.safetensors"))
    folds = sorted(k for k in stored)
    return torch.stack([stored[f] for f in folds]).float(), folds


def kept_samples(data: Path, folder: Path, ids: list[str]) -> list:
    """The samples of ``data`` among ``ids`` whose members are kept in ``folder``, in data set order."""
    return select_samples(find_samples(data), [i for i in ids if (folder / f"{i}.safetensors").exists()])


def kept_frames(data: Path, package: Path, mode: str, ids_file: str):
    """(sample, F x V x 3 x S x S members) of each frame of a kept set (a KEPT_SETS value), in data set order.

    Raises:
        SystemExit: no member of the set is kept for this package (its command is in the module docstring).
    """
    folder = members_folder(package, mode)
    samples = kept_samples(data, folder, read_ids_file(ROOT / ids_file))
    if not samples:
        raise SystemExit(f"no members kept in {folder} for {ids_file}: run python scripts/cache_members.py "
                         f"--ids-file {ids_file} --mode {mode} --package {package} first")
    for sample in samples:
        yield sample, load_members(folder, sample.id)[0]


def fused_label_map(members: torch.Tensor, size: tuple[int, int]):
    """Members (F x V x 3 x S x S) -> the product's H x W label map and 3 x H x W probabilities,
    fused as :meth:`PSFHModel.finish` fuses them (soft ensemble, largest components)."""
    return inference.to_label_map(inference.ensemble(members.flatten(0, 1))[0], size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "psfhs")
    parser.add_argument("--package", type=Path, default=ROOT / "models" / "psfh-lite-medsam")
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
