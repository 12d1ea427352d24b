"""Writing result files: atomically (a crash never leaves half of one), with CSV cells alike everywhere.

Every file psfh writes for a user or a resumable run (label maps, CSV and JSON results, configs,
weights, checkpoints, cached embeddings, packs, ONNX exports, the demo's downloads) goes through
:func:`atomic_target`, with one deliberate exception: the batch CLI's ``aop.csv``
(:mod:`psfh.batch.predict`) is a log, written row by row and flushed as each image finishes, so
that an interrupted run keeps the rows of the images done (an atomic write would lose them all):

    with atomic_target(path) as temporary:
        save_file(tensors, str(temporary))      # any writer that takes a path
    # now `path` holds the whole file; on an exception nothing at `path` changed

The temporary file lives in the target's folder (so ``os.replace`` is an atomic rename on the
same file system), is hidden (a leading dot, so folder scans such as the batch CLI's skip it) and
is removed if the writer fails.
"""

from __future__ import annotations

import csv
import io
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_target(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it replaces ``path``.

    Args:
        path: the file to write (its folder is created).
        suffix: appended to the temporary name, for writers that choose a format by extension
            (e.g. ".png", ".nii.gz").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str, newline: str | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_target(path) as temporary:
        with open(temporary, "w", encoding="utf-8", newline=newline) as handle:
            handle.write(text)
    return path


def format_cell(value) -> str:
    """A CSV cell: "" for None, 6 significant digits for floats, str() for the rest."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_csv_atomic(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[dict]) -> Path:
    """A CSV with a header of ``columns`` and one line per row (missing keys: empty cells), atomically."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows({key: format_cell(row.get(key)) for key in columns} for row in rows)
    return write_text_atomic(path, table.getvalue(), newline="")


def cache_root() -> Path:
    """The persistent cache folder: ``$PSFH_CACHE``, else ``~/.cache/psfh``."""
    return Path(os.environ.get("PSFH_CACHE") or Path.home() / ".cache" / "psfh").expanduser()


def earlier_claimants(sources: Sequence, targets: Sequence[Path | None]) -> list:
    """For each (source, target) in order, the earlier source whose target is the same path
    (resolved, compared case-insensitively: a case-insensitive file system would merge them), or
    None when it is the first to claim it. A None target claims nothing (a refused item)."""
    claimed: dict[str, object] = {}
    earlier = []
    for source, target in zip(sources, targets, strict=True):
        if target is None:
            earlier.append(None)
            continue
        key = str(Path(target).resolve()).casefold()
        earlier.append(claimed.get(key))
        claimed.setdefault(key, source)
    return earlier

