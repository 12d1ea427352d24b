"""Add the fold soup to an existing model package (``psfh-soup``; train.py adds it to new ones).

    psfh-soup models/my-package                      # writes my-package/soup/ and updates its config
    psfh-soup models/my-package --default            # ... and makes the soup what predictions use
    psfh-soup models/my-package --folds fold_0 fold_1 fold_2

The soup is ONE adapter whose weight changes are the mean of the folds' (:mod:`psfh.model.soup`):
a prediction with it costs one encoder pass per view instead of one per fold and view. The
package's fold adapters and base are not touched; only ``soup/`` and ``psfh_config.json`` are written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from psfh.cli.common import run_cli
from psfh.core.errors import PSFHInputError
from psfh.model.package import PackageConfig
from psfh.model.soup import SOUP


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psfh-soup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path, help="a model package folder with fold adapters")
    parser.add_argument("--folds", nargs="+", default=None, metavar="FOLD", help="folds to soup (default: all)")
    parser.add_argument("--default", action="store_true",
                        help="make the soup the package's default (predictions that name no folds use it)")
    parser.add_argument("--max-rank", type=int, default=None,
                        help="keep at most this LoRA rank per layer (truncated SVD of the mean change; smaller "
                             "file); default: exact, the folds' ranks summed")
    parser.add_argument("--overwrite", action="store_true", help="replace a soup the package already has")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    config = PackageConfig.load(args.package)  # a folder that is no package fails here, before torch loads
    if (args.package / SOUP).exists() and not args.overwrite:
        raise PSFHInputError(f"{args.package / SOUP} exists; pass --overwrite to replace it")
    from psfh.model.psfh_model import PSFHModel

    model = PSFHModel.from_pretrained(args.package, device="cpu")
    name = model.add_soup(args.folds, max_rank=args.max_rank)
    if args.default:
        model.config.default_adapters = [name]
    model.save_pretrained(args.package, folds=[name], with_base=False)
    written = args.package / name
    size = sum(path.stat().st_size for path in written.iterdir()) / 2**20
    print(f"wrote {written} ({size:.1f} MiB) from {', '.join(model.config.soup['folds'])}"
          f"{'; it is now the default' if args.default else ''} (folds kept: {', '.join(config.folds)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
