"""The `psfh-data` command line (also `python -m psfh.data`): see :mod:`psfh.io.dataset`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psfh.io.dataset
from psfh.io.dataset import find_samples, pack, read_ids_file, size_text, validate_samples


def _summary_text(summary: dict) -> str:
    sizes = ", ".join(f"{size_text(shape)}: {n}" for shape, n in summary["sizes"].items())
    areas = ", ".join(
        f"{name} {100 * fraction:.1f} % (absent in {summary['missing'][name]})"
        for name, fraction in summary["label_fraction"].items()
    )
    return f"{summary['count']} labelled images; sizes {sizes}; mean label area {areas}"


def main(argv: list[str] | None = None) -> int:
    from psfh.cli.common import run_cli
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="psfh-data", description=psfh.io.dataset.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a labelled data set and summarise it")
    check.add_argument("root", type=Path)
    packer = commands.add_parser("pack", help="write the data set as one compressed file")
    packer.add_argument("root", type=Path)
    packer.add_argument("out", type=Path)
    packer.add_argument("--size", type=int, default=None, help="resize to SIZE x SIZE")
    packer.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    packer.add_argument("--ids-file", type=Path, default=None, help="pack only these ids (one per line)")
    packer.add_argument("--webp-quality", type=int, default=None,
                        help="store images as lossy WebP of this quality (1-100) instead of lossless")
    args = parser.parse_args(argv)
    if args.command == "check":
        print(_summary_text(validate_samples(find_samples(args.root))))
        return 0
    start = time.perf_counter()
    ids = read_ids_file(args.ids_file) if args.ids_file else None
    out = pack(args.root, args.out, overwrite=args.overwrite, size=args.size, ids=ids,
               webp_quality=args.webp_quality)
    print(f"wrote {out}: {out.stat().st_size / 1e6:.1f} MB "
          f"({out.stat().st_size:,} bytes) in {time.perf_counter() - start:.1f} s")
    return 0

if __name__ == "__main__":
    sys.exit(main())
