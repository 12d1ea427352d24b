"""The `python -m psfh.cli.cache_embeddings` command line: see :mod:`psfh.training.embedding_cache`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import psfh.training.embedding_cache
from psfh.training.embedding_cache import EmbeddingCache


def main(argv: list[str] | None = None) -> int:
    from psfh.cli.common import run_cli
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    from psfh.io.dataset import find_samples, read_ids_file, select_samples
    from psfh.io.images import load_image
    from psfh.model.psfh_model import PSFHModel

    parser = argparse.ArgumentParser(prog="python -m psfh.cli.cache_embeddings", description=psfh.training.embedding_cache.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="labelled data set folder")
    parser.add_argument("--model", default=None, help="package folder or hub id of the base (default: embedded)")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: $PSFH_CACHE or ~/.cache/psfh)")
    parser.add_argument("--ids-file", type=Path, default=None, help="only these ids (one per line)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (smoke runs)")
    args = parser.parse_args(argv)

    samples = select_samples(find_samples(args.data), read_ids_file(args.ids_file) if args.ids_file else None,
                             args.limit)
    model = PSFHModel.from_pretrained(args.model, device="cpu")
    if model.encoder_scope != "none":  # the shipped package adapts its encoder: cache its frozen base
        model = PSFHModel.from_pretrained(args.model, device="cpu", folds=[])
    cache = EmbeddingCache(model, args.cache)
    start = time.perf_counter()
    cache.build([s.id for s in samples], (load_image(s.image_path).pixels for s in samples))
    seconds = time.perf_counter() - start
    print(json.dumps({"cache": str(cache.folder), "images": len(samples), "seconds": round(seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
