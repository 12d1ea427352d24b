"""Write the example cine clip examples/dicom/cine_10f.dcm (issue 14), reproducibly.

A 10-frame RLE Lossless ultrasound DICOM made from the repository's example frames with the
writers the tests use (tests/dicom_fixtures.py): the eight examples in name order, then the first
two again shifted 3 pixels, Frame Time 40 ms (25 frames a second), obviously synthetic patient
elements ("Test^Synthetic"), and no pixel spacing by default, because PSFHS gives none (pass
--spacing-mm ROW COL to write a made-up one). RLE is lossless, so every frame equals its source,
and pydicom decodes it without any extra package.

    python scripts/make_dicom_examples.py            # writes examples/dicom/cine_10f.dcm
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from pydicom import dcmread, uid

ROOT = Path(__file__).resolve().parents[1]


def load_fixtures():
    """tests/dicom_fixtures.py as a module, loaded from its file (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("dicom_fixtures", ROOT / "tests" / "dicom_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAX_BYTES = 1_000_000  # examples/ is committed: keep the clip small


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "dicom" / "cine_10f.dcm")
    parser.add_argument("--spacing-mm", type=float, nargs=2, metavar=("ROW", "COL"), default=None,
                        help="write this (made-up) Pixel Spacing; default: none")
    args = parser.parse_args(argv)
    fixtures = load_fixtures()
    path = fixtures.write_cine(args.out, count=10, syntax=uid.RLELossless, frame_time_ms=fixtures.FRAME_TIME_MS)
    dataset = dcmread(path)
    # UIDs derived from fixed text, not random: rerunning the script rewrites the same bytes.
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        fixed = uid.generate_uid(entropy_srcs=["psfh examples/dicom/cine_10f", keyword])
        setattr(dataset, keyword, fixed)
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    if args.spacing_mm is None:
        del dataset.PixelSpacing  # the fixture writes one for the tests; PSFHS has none
    else:
        dataset.PixelSpacing = list(args.spacing_mm)
    dataset.save_as(path, enforce_file_format=True)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{path}: {size:,} bytes, over the {MAX_BYTES:,} allowed for an example")
    print(f"wrote {path} ({size:,} bytes)")
    return path


if __name__ == "__main__":
    main()
