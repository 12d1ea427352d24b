"""Reading DICOM files: frames, pixel spacing and frame times, and nothing about the patient.

A DICOM file -> :class:`DicomImage`, whose ``frames`` are N x H x W float32 grayscale in the
stored intensity scale (as :attr:`psfh.io.images.LoadedImage.pixels`), plus :class:`DicomInfo`, the
technical fields psfh uses. Single-frame files reach the rest of psfh through
:func:`psfh.io.images.load_image`; multi-frame files (cine clips) through :mod:`psfh.io.sequence`.

**What is kept.** Only the elements in :data:`HEADER_TAGS` are parsed (pydicom's
``specific_tags``; the pixel decoder reads the Image Pixel module itself), and only these
fields leave this module (:class:`DicomInfo`): modality, transfer syntax (name and UID),
photometric interpretation, number of frames, rows and columns, pixel spacing in mm and where
it came from (Pixel Spacing or the Sequence of Ultrasound Regions), and the frame times.
Patient, study, institution, device and date elements are never read, so they cannot reach
outputs, logs or reports. pydicom's own warnings are silenced while reading because they can
quote element values.

Pixels:
    MONOCHROME2 as stored; MONOCHROME1 (low values shown white) is inverted within its bit
    depth so bright always means echo, as the model was trained; RGB, YBR_FULL and
    YBR_FULL_422 become RGB in pydicom, JPEG 2000's YBR_ICT / YBR_RCT in its decoder, PALETTE
    COLOR goes through its lookup table; colour then becomes grayscale with psfh.io.images's BT.601
    conversion. No Modality LUT (rescale) is applied: ultrasound has none, and psfh min-max
    scales every non-uint8 image anyway.

Compressed transfer syntaxes decode with whatever pydicom finds installed: RLE natively, JPEG
Baseline / Extended (8-bit) through Pillow, JPEG 2000 through Pillow or pylibjpeg-openjpeg.
A syntax with no decoder installed (JPEG Lossless and JPEG-LS need pylibjpeg-libjpeg, GPL-3.0,
or gdcm, which psfh does not install) is a :class:`~psfh.core.errors.PSFHInputError` naming the
syntax and the packages that would decode it.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psfh.core.errors import PSFHInputError

# A DICOM frame is refused and turned into grayscale exactly as any other image is.
from psfh.io.pixels import check_size, to_grayscale

DICOM_EXTENSIONS = (".dcm", ".dicom")

PREAMBLE_BYTES = 128  # a DICOM Part 10 file: 128 bytes of preamble, then b"DICM"
# All frames of a clip are decoded into memory as float32 (4 bytes a pixel): 250 M pixels is
# 1 GB, e.g. 520 frames of 600 x 800. Longer clips are read in parts with max_frames.
MAX_CLIP_PIXELS = 250_000_000
# The only elements parsed from a file (besides the file meta group and, in the decoder, the
# Image Pixel module). Pixel data is listed so its presence can be checked; its bytes are
# deferred, not read, by the header read.
HEADER_TAGS = (
    "Modality",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PixelSpacing",
    "SequenceOfUltrasoundRegions",
    "FrameTime",
    "FrameTimeVector",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
)
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# What the pixel decoders read from the header besides Rows, Columns and Number of Frames.
PIXEL_MODULE = ("SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation")
BITS_ALLOCATED = (1, 8, 16, 32, 64)
COLOUR_INTERPRETATIONS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
SUPPORTED_INTERPRETATIONS = ("MONOCHROME1", "MONOCHROME2") + COLOUR_INTERPRETATIONS
ULTRASOUND_CM = 3  # PhysicalUnitsX/YDirection code for centimetres (PS3.3 C.8.5.5.1.15)
TISSUE_2D = 1  # RegionSpatialFormat code for a 2-D tissue (B-mode) region


@dataclass(frozen=True)
class DicomInfo:
    """The technical fields psfh keeps from a DICOM file (nothing about the patient).

    modality: the Modality element ("US", "CT", ...), None when missing.
    transfer_syntax: the transfer syntax's name ("JPEG Baseline (Process 1)", ...).
    transfer_syntax_uid: its UID ("1.2.840.10008.1.2.4.50", ...).
    photometric_interpretation: as stored ("MONOCHROME2", "YBR_FULL_422", ...).
    number_of_frames: N (1 for a single-frame file).
    rows, columns: H and W of each frame.
    spacing_mm: (row spacing, column spacing) in mm per pixel, the order of DICOM's Pixel
        Spacing and of psfh.measure.hsd; None when the file gives none.
    spacing_source: where spacing_mm came from ("PixelSpacing" or "SequenceOfUltrasoundRegions
        region 1 of 2 (cm)"), None when unknown.
    frame_times_s: N times in seconds from the first frame (0.0 first), from FrameTime or
        FrameTimeVector; None when the file gives neither.
    """

    modality: str | None
    transfer_syntax: str
    transfer_syntax_uid: str
    photometric_interpretation: str
    number_of_frames: int
    rows: int
    columns: int
    spacing_mm: tuple[float, float] | None
    spacing_source: str | None
    frame_times_s: tuple[float, ...] | None


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays with == is ambiguous
class DicomImage:
    """The decoded frames of one DICOM file.

    frames: N x H x W float32 grayscale in the stored intensity scale (N may be fewer than
        info.number_of_frames when a caller asked for the first frames only).
    info: the file's :class:`DicomInfo`.
    original_dtype: numpy dtype name of the decoded pixels ("uint8", "uint16", ...), as
        :attr:`psfh.io.images.LoadedImage.original_dtype`.
    path: the file read.
    """

    frames: np.ndarray
    info: DicomInfo
    original_dtype: str
    path: Path


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether `path` looks like a DICOM file: a .dcm / .dicom name, or (any name) the b"DICM"
    marker after the 128-byte preamble. Reads at most 132 bytes; never raises."""
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as file:
            head = file.read(PREAMBLE_BYTES + 4)
    except OSError:
        return False
    return len(head) == PREAMBLE_BYTES + 4 and head[PREAMBLE_BYTES:] == b"DICM"


def read_dicom_info(path: str | os.PathLike) -> DicomInfo:
    """The technical header of a DICOM file, without decoding any pixel.

    Raises PSFHInputError (naming the file) for a missing or unreadable file, a file that is not
    DICOM, a truncated one, one without pixel data, a photometric interpretation psfh cannot
    turn into grayscale, or frames outside psfh.io.images's size limits.
    """
    path = Path(path)
    return _info(path, _read_header(path))


def modality_note(info: DicomInfo) -> str | None:
    """What to tell a user about a DICOM whose modality is not ultrasound (None for "US"): the
    same words the reader warns with, for a caller (the demo) that shows them instead."""
    if info.modality == "US":
        return None
    shown = f"modality '{info.modality}'" if info.modality else "no modality given"
    return (f"{shown}, not ultrasound (US); psfh was trained on transperineal ultrasound, so its result may be "
            "meaningless. Reading it anyway.")


def read_dicom(path: str | os.PathLike, max_frames: int | None = None) -> DicomImage:
    """Decode a DICOM file's frames (all, or the first `max_frames`).

    Returns a :class:`DicomImage` with N x H x W float32 frames. Warns (warnings.warn, naming the
    file and modality) when the modality is not ultrasound ("US"), and still reads it.
    Raises PSFHInputError as :func:`read_dicom_info`, and also for a compressed transfer syntax
    with no decoder installed (naming the syntax and the packages that decode it), pixel data
    that cannot be decoded, more than MAX_CLIP_PIXELS pixels in all, or `max_frames` below 1.
    """
    path = Path(path)
    if max_frames is not None and max_frames < 1:
        raise PSFHInputError(f"max_frames must be at least 1, got {max_frames}")
    info = read_dicom_info(path)
    note = modality_note(info)
    if note is not None:
        warnings.warn(f"{path}: {note}", stacklevel=2)
    count = info.number_of_frames if max_frames is None else min(max_frames, info.number_of_frames)
    if count * info.rows * info.columns > MAX_CLIP_PIXELS:
        raise PSFHInputError(
            f"{path}: {count} frames of {info.columns} x {info.rows} pixels are more than "
            f"{MAX_CLIP_PIXELS:,} pixels in memory; read fewer frames (max_frames)"
        )
    frames, dtype = _decode(path, info, count)
    return DicomImage(frames, info, dtype, path)


def sitk_spatial(info: DicomInfo) -> dict | None:
    """The spacing as :attr:`psfh.io.images.LoadedImage.spatial` holds it ((x, y) = (column, row) mm,
    origin 0, identity direction), so a label map written as .mha keeps the mm geometry; None
    when the file gives no spacing."""
    if info.spacing_mm is None:
        return None
    row, col = info.spacing_mm
    return {"spacing": (col, row), "origin": (0.0, 0.0), "direction": (1.0, 0.0, 0.0, 1.0)}


# --- header ----------------------------------------------------------------------------------


def _pydicom():
    """pydicom, imported when a DICOM is read: training and the GPU image need no DICOM."""
    try:
        import pydicom
    except ImportError as error:
        raise PSFHInputError("reading a DICOM file needs pydicom: pip install pydicom") from error
    return pydicom


def _read_header(path: Path):
    """The dataset restricted to HEADER_TAGS (pixel bytes deferred, not read)."""
    if not path.exists():
        raise PSFHInputError(f"{path}: file not found")
    if path.is_dir():
        raise PSFHInputError(f"{path}: is a folder, not a DICOM file")
    if path.stat().st_size == 0:
        raise PSFHInputError(f"{path}: file is empty (0 bytes)")
    pydicom = _pydicom()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = pydicom.dcmread(path, specific_tags=list(HEADER_TAGS), defer_size=1024)
    except pydicom.errors.InvalidDicomError as error:
        raise PSFHInputError(
            f"{path}: not a DICOM file (no 'DICM' marker after the 128-byte preamble)"
        ) from error
    except Exception as error:  # noqa: BLE001 - pydicom raises many types for corrupt files
        raise PSFHInputError(f"{path}: cannot read the DICOM file ({_reason(error)})") from error
    # A file cut short only warns in pydicom (and drops the element it was in): make it an error,
    # so a truncated cine is not reported as "no pixel data".
    truncated = any("end of file" in str(warning.message).lower() for warning in caught)
    # Pixel bytes of a stated length are deferred, not read, so a file cut inside them is
    # caught here, from the length stated, rather than as an odd reshape error when decoding.
    for keyword in PIXEL_DATA_KEYWORDS:
        element = dataset.get_item(keyword, keep_deferred=True) if keyword in dataset else None
        length, start = getattr(element, "length", None), getattr(element, "value_tell", None)
        if length is not None and start is not None and length != 0xFFFFFFFF:  # not undefined
            truncated |= start + length > path.stat().st_size
    if truncated:
        raise PSFHInputError(f"{path}: the DICOM file is truncated (it ends inside an element)")
    if "TransferSyntaxUID" not in dataset.file_meta:
        raise PSFHInputError(f"{path}: DICOM file without a transfer syntax in its file meta")
    return dataset


def _info(path: Path, dataset) -> DicomInfo:
    if not any(keyword in dataset for keyword in PIXEL_DATA_KEYWORDS):
        raise PSFHInputError(
            f"{path}: the DICOM file has no pixel data (a report, structured report or other "
            "non-image object); psfh needs an image"
        )
    interpretation = str(dataset.get("PhotometricInterpretation", "")).strip()
    if interpretation not in SUPPORTED_INTERPRETATIONS:
        raise PSFHInputError(
            f"{path}: photometric interpretation '{interpretation or 'missing'}' is not "
            f"supported; psfh reads {', '.join(SUPPORTED_INTERPRETATIONS)}"
        )
    _check_pixel_module(path, dataset, interpretation)
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    check_size(rows, columns, str(path))
    frames = _frame_count(path, dataset)
    _check_native_length(path, dataset, frames, rows * columns)
    spacing, source = _spacing(dataset)
    modality = str(dataset.get("Modality", "")).strip() or None
    return DicomInfo(
        modality=modality,
        transfer_syntax=dataset.file_meta.TransferSyntaxUID.name,
        transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID),
        photometric_interpretation=interpretation,
        number_of_frames=frames,
        rows=rows,
        columns=columns,
        spacing_mm=spacing,
        spacing_source=source,
        frame_times_s=_frame_times(dataset, frames),
    )


def _check_pixel_module(path: Path, dataset, interpretation: str) -> None:
    """The Image Pixel module's elements the decoders need, present and consistent, checked from the
    header so that a broken one is named in words before any pixel is decoded."""
    # Float Pixel Data has neither Bits Stored nor Pixel Representation (PS3.3 C.7.6.24).
    needed = PIXEL_MODULE if "PixelData" in dataset else ("SamplesPerPixel", "BitsAllocated")
    missing = [keyword for keyword in needed if dataset.get(keyword) in (None, "")]
    if missing:
        raise PSFHInputError(f"{path}: the DICOM header lacks {', '.join(missing)}, which the pixel data "
                             "needs to be read")
    try:
        values = {keyword: int(dataset.get(keyword)) for keyword in needed}
    except (TypeError, ValueError):
        raise PSFHInputError(f"{path}: the DICOM header's "
                             f"{', '.join(f'{k} {dataset.get(k)!r}' for k in needed)} are not all numbers") from None
    allocated, samples = values["BitsAllocated"], values["SamplesPerPixel"]
    stored = values.get("BitsStored", allocated)
    if allocated not in BITS_ALLOCATED:
        raise PSFHInputError(f"{path}: Bits Allocated is {allocated}; a DICOM image has "
                             f"{', '.join(map(str, BITS_ALLOCATED))}")
    if not 1 <= stored <= allocated:
        raise PSFHInputError(f"{path}: Bits Stored is {stored} with Bits Allocated {allocated}; expected 1 to "
                             f"{allocated}")
    expected = 3 if interpretation in COLOUR_INTERPRETATIONS and interpretation != "PALETTE COLOR" else 1
    if samples != expected:
        raise PSFHInputError(f"{path}: Samples per Pixel is {samples}, but a {interpretation} image has "
                             f"{expected}")
    if values.get("PixelRepresentation", 0) not in (0, 1):
        raise PSFHInputError(f"{path}: Pixel Representation is {values['PixelRepresentation']}; expected 0 "
                             "(unsigned) or 1 (signed)")


def _check_native_length(path: Path, dataset, frames: int, pixels: int) -> None:
    """Uncompressed pixel data shorter than its header describes (a file re-saved with a wrong
    Number of Frames, a broken export) gets a message saying so, not a reshape error."""
    syntax = dataset.file_meta.TransferSyntaxUID
    if syntax.is_encapsulated or syntax.is_deflated or "PixelData" not in dataset:
        return
    element = dataset.get_item("PixelData", keep_deferred=True)
    stated = getattr(element, "length", None)  # deferred: the length the file states
    if stated is None:
        stated = len(dataset["PixelData"].value or b"")
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if str(dataset.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        samples = 2  # the two chroma samples are shared by each pair of pixels
    bits = int(dataset.get("BitsAllocated", 8) or 8)
    expected = math.ceil(frames * pixels * samples * bits / 8)
    if stated < expected:
        raise PSFHInputError(
            f"{path}: the pixel data holds {stated:,} bytes, fewer than the {expected:,} its "
            f"header describes ({frames} frame(s) of {int(dataset.Columns)} x {int(dataset.Rows)}, "
            f"{samples} sample(s) of {bits} bits)"
        )


def _frame_count(path: Path, dataset) -> int:
    value = dataset.get("NumberOfFrames", 1)
    try:
        frames = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        raise PSFHInputError(f"{path}: Number of Frames is not a number ({value!r})") from None
    if frames < 1:
        raise PSFHInputError(f"{path}: Number of Frames is {frames}; expected at least 1")
    return frames


def _spacing(dataset) -> tuple[tuple[float, float] | None, str | None]:
    """(row, col) mm from Pixel Spacing, else from an ultrasound region in cm; (None, None)."""
    spacing = _positive_pair(dataset.get("PixelSpacing"))
    if spacing is not None:
        return spacing, "PixelSpacing"
    regions = list(dataset.get("SequenceOfUltrasoundRegions", []) or [])
    usable = []
    for number, region in enumerate(regions, start=1):
        in_cm = (region.get("PhysicalUnitsXDirection") == ULTRASOUND_CM
                 and region.get("PhysicalUnitsYDirection") == ULTRASOUND_CM)
        # Deltas are signed in the standard (an axis may run backwards); spacing is a length.
        deltas = _positive_pair([abs(_number(region.get("PhysicalDeltaY"))),
                                 abs(_number(region.get("PhysicalDeltaX")))])
        if in_cm and deltas is not None:
            usable.append((number, region, deltas))
    if not usable:
        return None, None
    # A screen can hold several regions (B-mode beside a Doppler strip): the spacing that matters
    # is the 2-D tissue image's, and of several such, the largest (the main image).
    tissue = [entry for entry in usable if entry[1].get("RegionSpatialFormat") == TISSUE_2D]
    number, _, (row_cm, col_cm) = max(tissue or usable, key=lambda entry: _region_area(entry[1]))
    source = f"SequenceOfUltrasoundRegions region {number} of {len(regions)} (cm)"
    return (row_cm * 10.0, col_cm * 10.0), source


def _region_area(region) -> float:
    width = _number(region.get("RegionLocationMaxX1")) - _number(region.get("RegionLocationMinX0"))
    height = _number(region.get("RegionLocationMaxY1")) - _number(region.get("RegionLocationMinY0"))
    return max(width, 0.0) * max(height, 0.0)


def _number(value) -> float:
    """A DICOM number as float; 0.0 for a missing or malformed one (never a usable spacing)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _positive_pair(values) -> tuple[float, float] | None:
    try:
        pair = tuple(float(value) for value in values)
    except (TypeError, ValueError):
        return None
    if len(pair) != 2 or not all(math.isfinite(value) and value > 0 for value in pair):
        return None
    return pair


def _frame_times(dataset, frames: int) -> tuple[float, ...] | None:
    """Seconds from the first frame: i x FrameTime, or the running sum of FrameTimeVector (whose
    first entry, the time before the first frame, is taken as 0)."""
    milliseconds = _number(dataset.get("FrameTime"))
    if milliseconds > 0:
        return tuple(index * milliseconds / 1000.0 for index in range(frames))
    vector = dataset.get("FrameTimeVector")
    if vector is None:
        return None
    try:  # one value comes as a number, several as a MultiValue
        increments = [float(value) for value in np.atleast_1d(np.asarray(vector, dtype=np.float64))]
    except (TypeError, ValueError):
        return None
    if len(increments) != frames or not all(math.isfinite(v) and v >= 0 for v in increments[1:]):
        return None
    times = np.concatenate([[0.0], np.cumsum(increments[1:])]) / 1000.0
    return tuple(float(value) for value in times)


# --- pixels ----------------------------------------------------------------------------------


def _decode(path: Path, info: DicomInfo, count: int) -> tuple[np.ndarray, str]:
    """The first `count` frames as count x H x W float32, and the decoded dtype's name."""
    pydicom = _pydicom()
    from pydicom.pixels import apply_color_lut, get_decoder, iter_pixels

    syntax = pydicom.uid.UID(info.transfer_syntax_uid)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise PSFHInputError(
            f"{path}: transfer syntax {syntax.name} ({syntax}) cannot be decoded by pydicom"
        ) from None
    if not decoder.is_available:
        packages = "; ".join(decoder.missing_dependencies) or "a pydicom pixel data plugin"
        raise PSFHInputError(
            f"{path}: pixel data compressed as {syntax.name} ({syntax}), and no decoder for it "
            f"is installed; install one of: {packages}"
        )
    frames = np.empty((count, info.rows, info.columns), np.float32)
    dtype, decoded = None, 0
    pixel_module = pydicom.Dataset()  # filled by iter_pixels with the Image Pixel module (LUTs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warnings can quote element values
            arrays = iter_pixels(path, ds_out=pixel_module, indices=range(count))
            for index, array in enumerate(arrays):
                if info.photometric_interpretation == "PALETTE COLOR":
                    array = apply_color_lut(array, pixel_module)
                elif info.photometric_interpretation == "MONOCHROME1":
                    array = _invert(array, pixel_module)
                dtype = array.dtype.name
                where = str(path) if count == 1 else f"{path} (frame {index})"
                frames[index] = to_grayscale(array, where)
                decoded += 1
    except PSFHInputError:
        raise
    except Exception as error:  # noqa: BLE001 - decoders raise RuntimeError, ValueError, ...
        reason = _reason(error)
        if "could not broadcast" in reason:  # a compressed frame of another size than Rows x Columns
            reason = f"a frame decodes to another size than the header's {info.columns} x {info.rows} ({reason})"
        raise PSFHInputError(f"{path}: cannot decode the pixel data ({syntax.name}): {reason}") from error
    if decoded != count:  # the empty rows of `frames` must never pass for pixels
        raise PSFHInputError(
            f"{path}: holds {decoded} frames of pixel data, but its Number of Frames says "
            f"{info.number_of_frames}"
        )
    return frames, dtype


def _invert(array: np.ndarray, pixel_module) -> np.ndarray:
    """MONOCHROME1 -> MONOCHROME2 within the stored bit depth (an unsigned b-bit value v becomes
    2^b - 1 - v; a signed one -1 - v), so the darkest stored value becomes the brightest."""
    bits = int(pixel_module.get("BitsStored", array.dtype.itemsize * 8))
    if array.dtype.kind == "u":
        return ((1 << bits) - 1 - array.astype(np.int64)).astype(array.dtype)
    if array.dtype.kind == "i":
        return (-1 - array.astype(np.int64)).astype(array.dtype)
    return -array


def _reason(error: Exception) -> str:
    """The last line of an exception's message (pydicom's plugin errors span several lines)."""
    text = str(error).strip()
    return text.splitlines()[-1].strip() if text else type(error).__name__
