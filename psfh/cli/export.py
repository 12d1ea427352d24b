"""The `psfh-export` command line (also `python -m psfh.export`): see :mod:`psfh.model.onnx_export`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import psfh.model.onnx_export
from psfh.model.onnx_export import export_onnx


def main(argv: list[str] | None = None) -> int:
    from psfh.cli.common import run_cli

    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="psfh-export", description=psfh.model.onnx_export.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="package folder or hub repo id (default: the embedded package)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the ONNX files and manifest.json")
    parser.add_argument("--folds", nargs="+", default=None, help="fold adapters to export (default: all)")
    parser.add_argument("--check-images", nargs="+", default=None,
                        help="images to check the export on (default: two of examples/)")
    args = parser.parse_args(argv)
    from psfh.model.psfh_model import PSFHModel

    model = PSFHModel.from_pretrained(args.model, device="cpu")
    manifest = export_onnx(model, args.out, args.folds, args.check_images)
    print(json.dumps({"out": str(args.out), "files": sorted(e["file"] for e in manifest["files"].values()),
                      "check": manifest["check"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
