"""Image embeddings of a frozen encoder, computed once and cached on disk by content (the CPU recipe).

LiteMedSAM's encoder costs ~75 GFLOPs per 256 x 256 image: on 2 CPU cores, back-propagating
through it for 5 folds is out of reach, but running it once per image and view is not. With the
encoder frozen (no LoRA on it), training the decoder side on cached embeddings is exact: the
decoder sees the same embeddings it will see at inference. Both TTA views are cached per image
(:func:`psfh.model.inference.tta_views`: the identity and the horizontal flip), which gives the flip
augmentation for free.

The cache outlives work trees and sessions: it lives under ``$PSFH_CACHE`` (default
``~/.cache/psfh``) as ``embeddings/<base key>/<content key>.safetensors``, where the base key
hashes the base's weights and preprocessing and the content key hashes the preprocessed model
input. A changed image, base or preprocessing therefore never reads a stale embedding, and the
same frame reached under another path or id is computed once. Each file holds one tensor per
view (C x g x g, bfloat16 by default), is written atomically, and finished files are skipped, so
an interrupted build resumes where it stopped.

    python -m psfh.training.embedding_cache --data ../shared/data/psfhs --ids-file ids.txt
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from psfh.core.errors import PSFHInputError
from psfh.core.files import atomic_target, cache_root
from psfh.model import inference
from psfh.model.package import base_key

VIEWS = ("identity", "hflip")  # the order of inference.tta_views
FORMAT = "psfh-embeddings-1"


def content_key(pixel_values: torch.Tensor) -> str:
    """A hash of one preprocessed model input (1 x 3 x S x S)."""
    return hashlib.sha256(pixel_values.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:32]


class EmbeddingCache:
    """The cached embeddings of one model's frozen base.

    Args:
        model: a :class:`psfh.model.psfh_model.PSFHModel` whose adapters leave the image encoder frozen.
        root: the cache folder (default :func:`cache_root`).
        dtype: storage type of the embeddings (bfloat16 halves the disk; the decoder gets float32).
    """

    def __init__(self, model, root: str | os.PathLike | None = None, dtype: torch.dtype = torch.bfloat16):
        if model.encoder_scope != "none":
            raise PSFHInputError("the embedding cache serves packages whose adapters leave the image encoder "
                                 f"frozen; this one adapts it ({model.encoder_scope})")
        self.model = model
        self.dtype = dtype
        self.folder = Path(root or cache_root()) / "embeddings" / base_key(model, FORMAT)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    @torch.inference_mode()
    def views(self, pixels: np.ndarray, name: str = "image") -> torch.Tensor:
        """H x W image -> V x C x g x g float32 embeddings of its TTA views, from the cache or computed
        (in the stored precision either way, so a result never depends on whether it was cached)."""
        pixel_values = self.model.preprocess(pixels, name)
        path = self.path(content_key(pixel_values))
        if path.is_file():
            try:
                stored = load_file(str(path))
                return torch.stack([stored[view] for view in VIEWS]).float()
            except (SafetensorError, KeyError, OSError):
                pass  # a damaged file (e.g. a full disk): compute it again
        embeddings = self.model.base_model.get_image_embeddings(inference.tta_views(pixel_values, True))
        stored = embeddings.to(self.dtype).cpu()
        with atomic_target(path) as temporary:
            save_file({view: e.contiguous() for view, e in zip(VIEWS, stored)}, str(temporary),
                      metadata={"format": FORMAT})
        return stored.float()

    def build(self, ids: list[str], images, progress: bool = True) -> dict[str, torch.Tensor]:
        """{view: N x C x g x g} for ``images`` (H x W arrays, any intensity scale; ``images[i]`` is
        ``ids[i]``), computing the missing ones. ``images`` may be a lazy iterable."""
        per_image = [self.views(image, sample_id)
                     for sample_id, image in tqdm(zip(ids, images), total=len(ids), desc="embeddings",
                                                  unit="image", disable=not progress)]
        stacked = torch.stack(per_image).to(self.dtype)
        return {view: stacked[:, index] for index, view in enumerate(VIEWS)}
