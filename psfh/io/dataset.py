"""Labelled data sets: finding and checking image/label pairs, grouped folds, and the pack.

A labelled data set is a folder in one of two layouts (ids are the file names without
extension, and every image needs a label of the same id):

    published:  root/image_mha/<id>.mha  + root/label_mha/<id>.mha   (PSFHS, FH-PS-AOP 2023)
    png:        root/images/<id>.<ext>   + root/masks/<id>.<ext>      (any supported extension)

The pack is the whole set in one compressed file for a lent GPU machine: a zip of three .npy
members (ids, images N x H x W uint8, labels N x H x W uint8), bzip2-compressed, that
``np.load(path, allow_pickle=False)`` reads as it reads an .npz, or, with ``--webp-quality Q``,
the images as lossy WebP members (labels stay lossless) for a bundle that must fit the device
tool's 64 MiB. :func:`load_pack` reads both, with numpy and Pillow only. Why bzip2 and when
WebP (sizes, load times, what lossy costs in accuracy): docs/GPU.md, "The data pack".

Command line:
    python -m psfh.data check DIR        validate a data set and print a summary
    python -m psfh.data pack DIR OUT     write the pack (refuses to overwrite without --overwrite)
    python -m psfh.data pack DIR OUT --ids-file IDS --webp-quality 85    a lossy pack of some ids
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from psfh.core.errors import PSFHInputError
from psfh.core.files import atomic_target
from psfh.core.labels import SHORT_NAMES, check_label_map
from psfh.io.images import (
    LABEL_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    LoadedImage,
    as_uint8,
    image_extension,
    image_name,
    load_image,
    load_label_map,
)

# Layout name -> (image folder, label folder).
LAYOUTS = {"published": ("image_mha", "label_mha"), "png": ("images", "masks")}
PACK_MEMBERS = ("ids", "images", "labels")
MAX_LISTED_FILES = 10  # unpaired files named in an error
MAX_LISTED_PROBLEMS = 20  # problems listed in one validation error


@dataclass(frozen=True)
class Sample:
    """One labelled image: its id (the shared file stem) and the two files."""

    id: str
    image_path: Path
    label_path: Path


# --- finding samples -------------------------------------------------------------------------


def find_samples(root: str | os.PathLike) -> list[Sample]:
    """The image/label pairs of a labelled data set folder, sorted by id (numerically if numeric).

    Raises PSFHInputError when `root` is not a labelled data set in one of LAYOUTS, when a
    folder holds two files with the same id, or when some images or labels have no partner.
    """
    root = Path(root)
    image_folder, label_folder = _layout_folders(root)
    images = _files_by_id(image_folder, SUPPORTED_EXTENSIONS)
    labels = _files_by_id(label_folder, LABEL_EXTENSIONS)
    if not images:
        raise PSFHInputError(
            f"{root}: no images in {image_folder.name}/ (supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)}); {_expected_layouts()}"
        )
    _check_paired(root, images, labels)
    ordered = sorted(images, key=id_sort_key)
    return [Sample(sample_id, images[sample_id], labels[sample_id]) for sample_id in ordered]


def id_sort_key(sample_id: str) -> tuple:
    """Sort key: numeric ids by value ("999" before "1000"), then other ids alphabetically."""
    if sample_id.isascii() and sample_id.isdigit():
        return (0, int(sample_id), sample_id)
    return (1, 0, sample_id)


def _expected_layouts() -> str:
    return "expected a labelled data set: " + " or ".join(
        f"{images}/ + {labels}/ with the same file names" for images, labels in LAYOUTS.values()
    )


def _layout_folders(root: Path) -> tuple[Path, Path]:
    if not root.is_dir():
        raise PSFHInputError(f"{root}: folder not found; {_expected_layouts()}")
    found = [
        (root / images, root / labels)
        for images, labels in LAYOUTS.values()
        if (root / images).is_dir() and (root / labels).is_dir()
    ]
    if not found:
        raise PSFHInputError(f"{root}: not a labelled data set; {_expected_layouts()}")
    if len(found) > 1:
        # Silently preferring one would leave the other's images out of training.
        raise PSFHInputError(f"{root}: holds both data set layouts; keep one of them")
    return found[0]


def _files_by_id(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """id -> file for the readable files of a folder; other files (notes, .raw data) are ignored."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if image_extension(path) not in extensions:
            continue
        sample_id = image_name(path)
        if sample_id in files:
            raise PSFHInputError(
                f"{folder}: two files with the id '{sample_id}': "
                f"{files[sample_id].name} and {path.name}"
            )
        files[sample_id] = path
    return files


def _check_paired(root: Path, images: dict[str, Path], labels: dict[str, Path]) -> None:
    problems = []
    for what, partner, mine, theirs in (("image(s)", "a label", images, labels),
                                        ("label(s)", "an image", labels, images)):
        unpaired = sorted(set(mine) - set(theirs), key=id_sort_key)
        if unpaired:
            shown = unpaired[:MAX_LISTED_FILES]
            listed = ", ".join(str(mine[sample_id].relative_to(root)) for sample_id in shown)
            more = f", ... ({len(unpaired)} in all)" if len(unpaired) > MAX_LISTED_FILES else ""
            problems.append(f"{len(unpaired)} {what} without {partner}: {listed}{more}")
    if problems:
        raise PSFHInputError(f"{root}: unpaired files: " + "; ".join(problems))


# --- reading and checking pairs ------------------------------------------------------------


def validate_samples(samples: list[Sample], progress: bool = True) -> dict:
    """Read every pair and check it; raise one PSFHInputError that lists all problems found.

    Problems: unreadable image or label, image and label of different sizes, label values
    outside {0, 1, 2}. Returns a summary: {"count": N, "sizes": {(H, W): n}, "label_fraction":
    {"PS": mean fraction of the image, "FH": ...}, "missing": {"PS": images without PS, ...}}.
    """
    if not samples:
        raise PSFHInputError("no samples to check")
    sizes: Counter = Counter()
    fractions = {name: [] for name in SHORT_NAMES.values()}
    for _, image, label in _valid_pairs(samples, progress, "checking"):
        sizes[image.pixels.shape] += 1
        for value, name in SHORT_NAMES.items():
            fractions[name].append(float(np.mean(label == value)))
    return {
        "count": len(samples),
        "sizes": dict(sizes),
        "label_fraction": {name: float(np.mean(f)) for name, f in fractions.items()},
        "missing": {name: sum(f == 0 for f in values) for name, values in fractions.items()},
    }


def load_arrays(
    samples: list[Sample], size: int | None = None, progress: bool = True
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read and check all pairs into arrays: (ids, images N x H x W uint8, labels N x H x W uint8).

    Images become uint8 grayscale with :func:`psfh.io.images.as_uint8` (uint8 unchanged, other types
    min-max scaled; the model's preprocessing min-max scales again, so this changes no model
    input beyond 8-bit rounding). With `size`, pairs are resized by :func:`resize_pair`; without
    it all images must already share one size. Problems are collected as in :func:`validate_samples`.
    """
    if not samples:
        raise PSFHInputError("no samples to load")
    if size is not None and (not isinstance(size, int) or size < 8):
        raise PSFHInputError(f"size must be an integer of at least 8, not {size!r}")
    ids, images, labels = [], [], []
    for sample, image, label in _valid_pairs(samples, progress, "loading"):
        pixels = as_uint8(image)
        if size is not None:
            pixels, label = resize_pair(pixels, label, size)
        ids.append(sample.id)
        images.append(pixels)
        labels.append(label)
    _check_one_size(samples, images)
    return ids, np.stack(images), np.stack(labels)


def _valid_pairs(
    samples: list[Sample], progress: bool, description: str
) -> Iterator[tuple[Sample, LoadedImage, np.ndarray]]:
    """Yield (sample, image, label) for good pairs; after the last, raise one error for the rest."""
    problems = []
    for sample in tqdm(samples, desc=description, unit="image", disable=not progress):
        try:
            image, label = _read_pair(sample)
        except PSFHInputError as error:
            problems.append(str(error))
            continue
        yield sample, image, label
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        hidden = len(problems) - MAX_LISTED_PROBLEMS
        more = f"\n  ... and {hidden} more" if hidden > 0 else ""
        raise PSFHInputError(
            f"{len(problems)} of {len(samples)} samples have problems:\n  {listed}{more}"
        )


def _read_pair(sample: Sample) -> tuple[LoadedImage, np.ndarray]:
    image = load_image(sample.image_path)
    label = load_label_map(sample.label_path)
    if image.pixels.shape != label.shape:
        raise PSFHInputError(
            f"{sample.label_path}: label map is {size_text(label.shape)} but its image "
            f"{sample.image_path} is {size_text(image.pixels.shape)}"
        )
    return image, check_label_map(label, str(sample.label_path))


def size_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]} x {shape[0]} (W x H)"


def _check_one_size(samples: list[Sample], images: list[np.ndarray]) -> None:
    """All images share one size, or the error names one that differs from the most common."""
    shapes = Counter(image.shape for image in images)
    if len(shapes) > 1:
        counts = ", ".join(f"{size_text(shape)}: {n}" for shape, n in shapes.most_common())
        common = shapes.most_common(1)[0][0]
        # images were read from samples one for one (any failure raised before this point).
        odd = next(s for s, image in zip(samples, images) if image.shape != common)
        raise PSFHInputError(
            f"images of {len(shapes)} different sizes ({counts}; e.g. {odd.image_path}); "
            "pass size= to resize them all"
        )


def resize_label(label: np.ndarray, size: int) -> np.ndarray:
    """H x W uint8 label map -> size x size with "nearest-exact" (pixel-centre nearest neighbour,
    so classes never blend)."""
    import torch  # only resizing needs torch, and importing it costs seconds
    from torch.nn.functional import interpolate

    resized = interpolate(torch.from_numpy(label).float()[None, None], size=(size, size), mode="nearest-exact")
    return resized[0, 0].to(torch.uint8).numpy()


def resize_pair(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """H x W uint8 image and label -> size x size each, for storage (the pack): the image with
    torch's bilinear interpolation (align_corners=False, anti-aliased when shrinking), rounded to
    uint8; the label with :func:`resize_label`. Training does not resize images this way: it puts
    them on the model's grid with :func:`psfh.model.inference.unit_grid`, as inference does."""
    import torch
    from torch.nn.functional import interpolate

    resized = interpolate(torch.from_numpy(image).float()[None, None], size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True)
    return resized[0, 0].round().clamp(0, 255).to(torch.uint8).numpy(), resize_label(label, size)


# --- folds -----------------------------------------------------------------------------------


def id_blocks(ids: Iterable[str], block_size: int = 20) -> list[list[str]]:
    """Cut the ids into blocks that folds keep whole, in id order.

    Numeric ids are split into runs of consecutive integers; a block boundary at a gap in the
    numbering separates no neighbouring frames. A run of at most `block_size` ids is one block.
    A longer run is cut into ceil(len / block_size) consecutive blocks of near-equal length
    (within 1). The trade-off: each cut inside a run may put two neighbouring frames into
    different folds, but without cuts the PSFHS ids (8 runs, of 38 to 160 ids) could not be
    spread over 5 folds of equal size. A larger block_size means fewer such cuts and coarser
    balance. Non-numeric ids (or a mix) have no known gaps: sorted, they form one run.
    """
    if block_size < 1:
        raise PSFHInputError(f"block_size must be at least 1, not {block_size}")
    blocks = []
    for run in _consecutive_runs(sorted(ids, key=id_sort_key)):
        pieces = -(-len(run) // block_size)  # ceil
        bounds = np.linspace(0, len(run), pieces + 1).round().astype(int)
        blocks += [run[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]
    return blocks


def _consecutive_runs(ordered: list[str]) -> list[list[str]]:
    if not ordered:
        return []
    if not all(sample_id.isascii() and sample_id.isdigit() for sample_id in ordered):
        return [ordered]
    runs = [[ordered[0]]]
    for previous, sample_id in zip(ordered, ordered[1:]):
        if int(sample_id) == int(previous) + 1:
            runs[-1].append(sample_id)
        else:
            runs.append([sample_id])
    return runs


def make_folds(
    ids: Iterable[str],
    n_folds: int = 5,
    block_size: int = 20,
    seed: int = 0,
    linked: Iterable[Iterable[str]] = (),
) -> dict[str, int]:
    """Assign each id a fold in 0..n_folds-1, keeping neighbouring frames together.

    Blocks come from :func:`id_blocks`. `linked` lists groups of ids that must share a fold
    wherever they are (e.g. :func:`find_duplicate_images`: PSFHS holds identical images under
    ids up to 82 apart); blocks holding ids of one group are merged. Groups are then dealt out
    largest first, each to the fold with the fewest images so far (the lowest index on a tie);
    groups of equal size are taken in an order shuffled with `seed`. Deterministic for given
    arguments. Returns {id: fold}.
    """
    ids = list(ids)
    duplicates = [sample_id for sample_id, n in Counter(ids).items() if n > 1]
    if duplicates:
        raise PSFHInputError(f"ids must be unique; repeated: {duplicates[:MAX_LISTED_FILES]}")
    if n_folds < 2:
        raise PSFHInputError(f"n_folds must be at least 2, not {n_folds}")
    groups = _merge_linked(id_blocks(ids, block_size), linked)
    if len(groups) < n_folds:
        raise PSFHInputError(
            f"{len(ids)} ids form only {len(groups)} groups, too few for {n_folds} folds; "
            "lower block_size or n_folds"
        )
    shuffled = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    fold_sizes = [0] * n_folds
    folds = {}
    for group in sorted(shuffled, key=len, reverse=True):  # stable: ties keep shuffled order
        fold = fold_sizes.index(min(fold_sizes))
        fold_sizes[fold] += len(group)
        folds.update((sample_id, fold) for sample_id in group)
    return {sample_id: folds[sample_id] for sample_id in ids}


def _merge_linked(blocks: list[list[str]], linked: Iterable[Iterable[str]]) -> list[list[str]]:
    """Union the blocks that share a linked group (union-find over block indices)."""
    block_of = {sample_id: index for index, block in enumerate(blocks) for sample_id in block}
    parent = list(range(len(blocks)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for group in linked:
        group = list(group)
        unknown = [sample_id for sample_id in group if sample_id not in block_of]
        if unknown:
            raise PSFHInputError(f"linked ids not among the ids: {unknown[:MAX_LISTED_FILES]}")
        for sample_id in group[1:]:
            parent[root(block_of[sample_id])] = root(block_of[group[0]])
    merged: dict[int, list[str]] = {}
    for index, block in enumerate(blocks):
        merged.setdefault(root(index), []).extend(block)
    return list(merged.values())


def find_duplicate_images(ids: list[str], images: np.ndarray) -> list[list[str]]:
    """Groups of ids whose images (N x H x W) are pixel-for-pixel identical, for `linked`."""
    by_digest: dict[str, list[str]] = {}
    for sample_id, image in zip(ids, images):
        digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
        by_digest.setdefault(digest, []).append(sample_id)
    return [group for group in by_digest.values() if len(group) > 1]


# --- choosing samples ------------------------------------------------------------------------


def read_ids_file(path: str | os.PathLike) -> list[str]:
    """Ids, one per line; blank lines and lines starting with '#' are ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PSFHInputError(f"{path}: cannot read the ids file ({error})") from error
    ids = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not ids:
        raise PSFHInputError(f"{path}: the ids file lists no ids")
    return ids


def select_samples(samples: list[Sample], ids: Sequence[str] | None = None,
                   limit: int | None = None) -> list[Sample]:
    """The samples whose id is in `ids` (all when None), in data set order, then the first `limit`.

    An id that is not in the data set is an error, not a silent omission: evaluating fewer
    images than intended would go unnoticed in the summary's means.
    """
    if ids is not None:
        known = {sample.id for sample in samples}
        unknown = [sample_id for sample_id in dict.fromkeys(ids) if sample_id not in known]
        if unknown:
            raise PSFHInputError(f"{len(unknown)} id(s) not in the data set: {unknown[:10]}"
                                 + (" ..." if len(unknown) > 10 else ""))
        wanted = set(ids)
        samples = [sample for sample in samples if sample.id in wanted]
    if limit is not None:
        if limit < 1:
            raise PSFHInputError(f"--limit must be at least 1, not {limit}")
        samples = samples[:limit]
    return samples


# --- the pack --------------------------------------------------------------------------------


def pack(
    root: str | os.PathLike,
    out_path: str | os.PathLike,
    overwrite: bool = False,
    size: int | None = None,
    progress: bool = True,
    ids: Iterable[str] | None = None,
    webp_quality: int | None = None,
) -> Path:
    """Validate the data set at `root` and write it as one zip file (see the module docstring).

    Members: ids.npy (N unicode strings), labels.npy (N x H x W uint8) and the images, either
    lossless (images.npy, N x H x W uint8, bzip2) or, with ``webp_quality``, one lossy WebP per
    image (images/NNNNNN.webp, stored) for a bundle that must fit a size cap. ``ids`` keeps only
    those samples. Written to a temporary file beside `out_path` and renamed into place; refuses
    an existing `out_path` unless overwrite=True. Returns it.
    """
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise PSFHInputError(
            f"{out_path}: file exists; pass overwrite=True (--overwrite) to replace it"
        )
    if webp_quality is not None and not 1 <= webp_quality <= 100:
        raise PSFHInputError(f"WebP quality must be 1-100, not {webp_quality}")
    samples = select_samples(find_samples(root), None if ids is None else list(ids))
    ids, images, labels = load_arrays(samples, size=size, progress=progress)
    with atomic_target(out_path) as temporary:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_BZIP2) as archive:
            archive.writestr("ids.npy", _npy_bytes(np.array(ids)))
            archive.writestr("labels.npy", _npy_bytes(labels))
            if webp_quality is None:
                archive.writestr("images.npy", _npy_bytes(images))
            else:
                for index, image in enumerate(images):
                    archive.writestr(f"images/{index:06d}.webp", _webp_bytes(image, webp_quality),
                                     compress_type=zipfile.ZIP_STORED)  # WebP is compressed already
    return out_path


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _webp_bytes(image: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, "WEBP", quality=quality, method=6)
    return buffer.getvalue()


def _read_npy(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    with archive.open(name) as handle:
        return np.load(io.BytesIO(handle.read()), allow_pickle=False)


def load_pack(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read a pack: (ids, images N x H x W uint8, labels N x H x W uint8). Never unpickles.

    Needs numpy (and Pillow for a WebP pack) only: no medical-image reader.
    """
    path = Path(path)
    if not path.is_file():
        raise PSFHInputError(f"{path}: pack file not found")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            webp = sorted(n for n in names if n.startswith("images/") and n.endswith(".webp"))
            missing = [f"{m}.npy" for m in PACK_MEMBERS if f"{m}.npy" not in names and not (m == "images" and webp)]
            if missing:
                raise PSFHInputError(f"{path}: not a psfh pack (members {missing} missing)")
            ids, labels = _read_npy(archive, "ids.npy"), _read_npy(archive, "labels.npy")
            if webp:
                from PIL import Image

                images = np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("L"))
                                   for n in webp])
            else:
                images = _read_npy(archive, "images.npy")
    except PSFHInputError:
        raise
    except Exception as error:  # BadZipFile, ValueError (pickled or bad .npy), OSError, EOFError
        raise PSFHInputError(f"{path}: cannot read the pack ({error})") from error
    if (
        images.dtype != np.uint8 or labels.dtype != np.uint8 or images.ndim != 3
        or images.shape != labels.shape or ids.shape != images.shape[:1] or ids.dtype.kind != "U"
    ):
        raise PSFHInputError(
            f"{path}: inconsistent pack: ids {ids.shape}, images {images.shape} {images.dtype}, "
            f"labels {labels.shape} {labels.dtype}"
        )
    return ids.tolist(), images, labels


# --- command line ----------------------------------------------------------------------------
