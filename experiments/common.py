"""What the experiments share, defined once: where the data and the package are, the ensemble
members kept for labelled frames (``python -m experiments.cache_members``) and their fusion by
psfh's own functions, what counts as a bad AoP, and the quality checks judged again from a
per_image.csv's rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from psfh.core.files import cache_root
from psfh.io.dataset import Sample, find_samples, select_samples
from psfh.measure import quality
from psfh.measure.metrics import BAD_AOP_ERROR_DEG  # noqa: F401  (re-exported: what counts as a bad AoP)
from psfh.model import inference
from psfh.model.bases import EMBEDDED_PACKAGE_DIR
from psfh.model.package import package_key

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "psfhs"  # the PSFHS copy beside the repository
DEFAULT_PACKAGE = EMBEDDED_PACKAGE_DIR  # the shipped package


# The id lists of the measured frames (under the repository): every 4th cross-validation frame
# (out of fold) and the 100 held-out test frames.
OOF_IDS_FILE = "docs/splits/oof_every4th_ids.txt"
TEST_IDS_FILE = "docs/splits/test_ids.txt"
# experiments.measure_views's rows of each kept set with both views fused (the product): the
# AoP error and the quality measures per frame, {title: per_image.csv under the repository}.
VIEW_ROWS = {"out of fold": "docs/results/views/oof/both/per_image.csv",
             "test": "docs/results/views/test/both/per_image.csv"}


def members_folder(package: Path, mode: str) -> Path:
    """Where the members of ``package`` are kept for ``mode`` ("oof" or "all"): outside the work
    tree, keyed by a hash of the package's weight files (psfh.model.package.package_key)."""
    return cache_root() / "members" / package_key(package) / mode


def load_members(folder: Path, sample_id: str) -> tuple[torch.Tensor, list[str]]:
    """-> (F x V x 3 x S x S float32 members, their fold names)."""
    stored = load_file(str(folder / f"{sample_id}.safetensors"))
    folds = sorted(stored)
    return torch.stack([stored[f] for f in folds]).float(), folds


def kept_samples(data: Path, folder: Path, ids: list[str]) -> list[Sample]:
    """The samples of ``data`` among ``ids`` whose members are kept in ``folder``, in data set order."""
    return select_samples(find_samples(data), [i for i in ids if (folder / f"{i}.safetensors").exists()])


def fused_label_map(members: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Members (F x V x 3 x S x S) -> the product's H x W label map and 3 x H x W probabilities,
    fused by the functions :meth:`PSFHModel.prediction_from_members` calls (soft ensemble, largest components)."""
    return inference.to_label_map(inference.ensemble(members.flatten(0, 1))[0], size)


def checks_from_rows(rows: list[dict]) -> list[quality.QualityCheck]:
    """The quality checks of per_image.csv rows (psfh.batch.evaluate's quality columns), judged
    again from their measures with psfh.measure.quality's bounds as they are now."""
    checks = []
    for row in rows:
        measures = {key: float(row[key]) for key in quality.MEASURES if row.get(key) not in (None, "")}
        checks.append(quality.QualityCheck(reasons=quality.judge(measures), measures=measures))
    return checks
