"""Image embeddings of a frozen encoder, computed once and cached on disk (the CPU recipe).

LiteMedSAM's encoder costs ~75 GFLOPs per 256 x 256 image: on 2 CPU cores, back-propagating
through it for 5 folds is out of reach, but running it once per image and view is not. With the
encoder frozen (no LoRA on it), training the decoder side on cached embeddings is exact: the
decoder sees the same embeddings it will see at inference. Two views are cached per image, the
identity and the horizontal flip, which gives the flip augmentation for free.

Layout: ``FOLDER/<view>/<id>.safetensors`` holding ``embedding`` (C x g x g, bfloat16 by
default). One file per image and view makes the computation resumable: finished files are
skipped, and each is written atomically.

    python -m psfh.training.embedding_cache --data ../shared/data/psfhs --model models/psfh-lite-medsam \
        --out cache/psfhs-lite-medsam
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

VIEWS = ("identity", "hflip")


def embedding_path(folder: Path, view: str, sample_id: str) -> Path:
    return Path(folder) / view / f"{sample_id}.safetensors"


def missing_ids(folder: Path, ids: list[str], views=VIEWS) -> list[str]:
    """Ids with at least one view not cached yet."""
    return [i for i in ids if any(not embedding_path(folder, v, i).is_file() for v in views)]


@torch.inference_mode()
def compute_embeddings(encoder_model, pixel_values: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """B x 3 x S x S model inputs -> B x C x g x g embeddings of ``encoder_model`` (a SamModel)."""
    context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with context:
        return encoder_model.get_image_embeddings(pixel_values).float()


def build_cache(folder: Path, sam, ids: list[str], images, preprocess, precision: str = "fp32",
                dtype: torch.dtype = torch.bfloat16, progress: bool = True) -> dict:
    """Compute and store the embeddings of every id not cached yet.

    Args:
        folder: cache folder.
        sam: the frozen base SamModel.
        ids: sample ids; images[i] is the H x W image of ids[i] (any intensity scale).
        preprocess: ``preprocess(pixels, name) -> 1 x 3 x S x S`` (the model's own preprocessing).
    Returns:
        timing summary (images computed, seconds per image).
    """
    folder = Path(folder)
    for view in VIEWS:
        (folder / view).mkdir(parents=True, exist_ok=True)
    missing = set(missing_ids(folder, ids))
    # ``images`` may be a lazy generator: nothing is held in memory, and only missing ids are encoded.
    todo = ((i, image) for i, image in zip(ids, images) if i in missing)
    start = time.perf_counter()
    for sample_id, image in tqdm(todo, total=len(missing), desc="caching embeddings", disable=not progress,
                                 unit="image"):
        pixels = preprocess(image, sample_id)
        views = torch.cat([pixels, pixels.flip(-1)])  # the same two views as TTA at inference
        embeddings = compute_embeddings(sam, views, precision).to(dtype)
        for view, embedding in zip(VIEWS, embeddings):
            target = embedding_path(folder, view, sample_id)
            temporary = target.with_suffix(".tmp")
            save_file({"embedding": embedding.contiguous()}, str(temporary))
            os.replace(temporary, target)
    seconds = time.perf_counter() - start
    return {"computed": len(missing), "seconds": seconds, "seconds_per_image": seconds / max(len(missing), 1)}


def load_embeddings(folder: Path, ids: list[str], view: str) -> torch.Tensor:
    """N x C x g x g tensor of the cached embeddings of ``ids`` for one view."""
    missing = [i for i in ids if not embedding_path(folder, view, i).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} embeddings missing for view {view} (e.g. {missing[:3]})")
    return torch.stack([load_file(str(embedding_path(folder, view, i)))["embedding"] for i in ids])


def main(argv: list[str] | None = None) -> None:
    from psfh.data import find_samples
    from psfh.io import load_image
    from psfh.model import PSFHModel

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default=None, help="package folder or hub id of the base (default: embedded)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16 autocast is much slower on CPUs whose torch build lacks fast bf16 convolutions")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (smoke runs)")
    parser.add_argument("--ids-file", type=Path, default=None, help="only these ids (one per line)")
    args = parser.parse_args(argv)

    model = PSFHModel.from_pretrained(args.model, device="cpu")
    samples = find_samples(args.data)
    if args.ids_file:
        from psfh.data import read_ids_file, select_samples
        samples = select_samples(samples, read_ids_file(args.ids_file), None)
    samples = samples[: args.limit]
    ids = [s.id for s in samples]
    images = (load_image(s.image_path).pixels for s in samples)
    summary = build_cache(args.out, model.base_model, ids, images, model.preprocess, args.precision)
    (args.out / "cache_info.json").write_text(json.dumps({"model": str(model.source), "precision": args.precision,
                                                          "ids": len(ids), **summary}, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
