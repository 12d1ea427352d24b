"""DICOM files, videos and frame folders made at test time from the example frames.

Plain functions (no pytest here, so scripts/make_dicom_examples.py can use the same writers):
each ``write_*`` takes a destination path and writes one file with pydicom (or PyAV for videos)
from :func:`cine_frames`, the repository's example frames. Every DICOM carries obviously
synthetic patient, study and institution elements (:data:`PATIENT_FIELDS`), so tests can check
that none of them reaches anything psfh returns. Nothing is downloaded.
"""

from __future__ import annotations

import io as _io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence

from psfh.io.images import load_image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_IMAGES = sorted((ROOT / "examples" / "image_mha").glob("*.mha"))

# Patient-identifying elements filled with values no real file has; each value is searched for
# in what psfh returns. Dates and times too: they identify a visit.
PATIENT_FIELDS = {
    "PatientName": "Test^Synthetic",
    "PatientID": "SYNTHETIC-0001",
    "PatientBirthDate": "19010203",
    "PatientSex": "O",
    "StudyDate": "19020304",
    "StudyTime": "111213",
    "AccessionNumber": "SYNACC42",
    "InstitutionName": "Synthetic Test Hospital",
    "ReferringPhysicianName": "Doctor^Synthetic",
    "StationName": "SYNSTATION",
    "StudyDescription": "Synthetic intrapartum study",
}
# Strings that must appear nowhere in psfh's outputs (the name's parts separately, too); the
# one-letter sex code is left out, as any text holds an "O".
PATIENT_STRINGS = [value for value in PATIENT_FIELDS.values() if len(value) > 1]
PATIENT_STRINGS += ["Synthetic", "SYNTHETIC"]

FRAME_TIME_MS = 40.0  # 25 frames a second, a common cine rate
PIXEL_SPACING_MM = (0.21, 0.23)  # (row, col): deliberately anisotropic so an order swap shows
REGION_DELTAS_CM = (0.017, 0.019)  # (PhysicalDeltaY, PhysicalDeltaX) of the B-mode region


def example_frame(index: int = 0) -> np.ndarray:
    """Example frame `index` (sorted by name) as H x W uint8 (256 x 256)."""
    return load_image(EXAMPLE_IMAGES[index]).pixels.astype(np.uint8)


def cine_frames(count: int = 10) -> np.ndarray:
    """count x 256 x 256 uint8, all different: the eight example frames in name order, then again
    shifted 3 pixels to the right per round, so frame i is never frame j."""
    rounds = len(EXAMPLE_IMAGES)
    frames = [np.roll(example_frame(i % rounds), 3 * (i // rounds), axis=1) for i in range(count)]
    return np.stack(frames)


def colour_frame() -> np.ndarray:
    """256 x 256 x 3 uint8 whose channels differ (an RGB screen capture), so a wrong colour
    conversion changes the grayscale."""
    gray = example_frame(0)
    return np.stack([gray, np.flipud(gray), np.full_like(gray, 60)], axis=-1)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """H x W float: BT.601 luma, psfh.io.images's colour conversion."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


# --- DICOM -----------------------------------------------------------------------------------


def dataset(sop_class: str = uid.UltrasoundImageStorage, modality: str = "US",
            syntax: str = uid.ExplicitVRLittleEndian) -> Dataset:
    """A dataset with file meta, SOP identity, modality and the synthetic patient elements."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid.generate_uid()
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.Modality = modality
    for keyword, value in PATIENT_FIELDS.items():
        setattr(ds, keyword, value)
    return ds


def set_pixels(ds: Dataset, frames: np.ndarray, interpretation: str = "MONOCHROME2") -> Dataset:
    """Uncompressed pixel data (uint8, uint16 or int16): H x W or N x H x W for the monochrome
    and palette interpretations, H x W x 3 or N x H x W x 3 for the colour ones; a leading N
    writes Number of Frames."""
    colour = interpretation not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")
    multi = frames.ndim == (4 if colour else 3)
    height, width = frames.shape[1:3] if multi else frames.shape[:2]
    bits = frames.dtype.itemsize * 8
    ds.Rows, ds.Columns = height, width
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = interpretation
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if frames.dtype.kind == "i" else 0
    if multi:
        ds.NumberOfFrames = frames.shape[0]
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_single_frame(path: Path, spacing_mm=PIXEL_SPACING_MM) -> Path:
    """One uint8 MONOCHROME2 ultrasound frame (example frame 0) with Pixel Spacing."""
    ds = set_pixels(dataset(), example_frame(0))
    if spacing_mm is not None:
        ds.PixelSpacing = list(spacing_mm)
    return save(ds, path)


def write_cine(path: Path, count: int = 10, syntax: str = uid.ExplicitVRLittleEndian,
               frame_time_ms: float | None = FRAME_TIME_MS, time_vector_ms=None) -> Path:
    """A count-frame ultrasound cine (:func:`cine_frames`) with Frame Time (or a Frame Time
    Vector) and Pixel Spacing; compressed when `syntax` is RLE or JPEG 2000 (pydicom and
    pylibjpeg-openjpeg encode them)."""
    frames = cine_frames(count)
    ds = set_pixels(dataset(uid.UltrasoundMultiFrameImageStorage), frames)
    ds.PixelSpacing = list(PIXEL_SPACING_MM)
    if time_vector_ms is not None:
        ds.FrameTimeVector = list(time_vector_ms)
        ds.FrameIncrementPointer = 0x00181065  # (0018,1065) Frame Time Vector
    elif frame_time_ms is not None:
        ds.FrameTime = frame_time_ms
        ds.FrameIncrementPointer = 0x00181063  # (0018,1063) Frame Time
    if syntax != uid.ExplicitVRLittleEndian:
        ds.compress(syntax, frames, generate_instance_uid=False)
    return save(ds, path)


def write_regions(path: Path) -> Path:
    """Ultrasound regions instead of Pixel Spacing: a small Doppler-like strip in mm/s first,
    then the B-mode tissue region in cm, whose deltas give the spacing."""
    ds = set_pixels(dataset(), example_frame(1))
    strip = Dataset()  # a velocity trace: units cm/s (7) and seconds (4), not a length
    strip.RegionSpatialFormat = 3
    strip.RegionDataType = 3
    strip.PhysicalUnitsXDirection = 4
    strip.PhysicalUnitsYDirection = 7
    strip.PhysicalDeltaX = 0.01
    strip.PhysicalDeltaY = 0.5
    strip.RegionLocationMinX0, strip.RegionLocationMinY0 = 0, 200
    strip.RegionLocationMaxX1, strip.RegionLocationMaxY1 = 255, 255
    tissue = Dataset()
    tissue.RegionSpatialFormat = 1  # 2-D tissue
    tissue.RegionDataType = 1
    tissue.PhysicalUnitsXDirection = 3  # cm
    tissue.PhysicalUnitsYDirection = 3
    tissue.PhysicalDeltaY, tissue.PhysicalDeltaX = REGION_DELTAS_CM
    tissue.RegionLocationMinX0, tissue.RegionLocationMinY0 = 0, 0
    tissue.RegionLocationMaxX1, tissue.RegionLocationMaxY1 = 255, 199
    ds.SequenceOfUltrasoundRegions = Sequence([strip, tissue])
    return save(ds, path)


def write_rgb(path: Path, interpretation: str = "RGB") -> Path:
    """:func:`colour_frame` stored as RGB, or converted and stored as YBR_FULL."""
    rgb = colour_frame()
    stored = rgb if interpretation == "RGB" else convert_color_space(rgb, "RGB", interpretation)
    return save(set_pixels(dataset(), stored, interpretation), path)


def write_jpeg(path: Path, colour: bool = True, quality: int = 95) -> Path:
    """JPEG Baseline, encoded by Pillow and encapsulated by pydicom (pydicom has no JPEG
    encoder): :func:`colour_frame` as YBR_FULL_422 (4:2:2 chroma), or example frame 0 as
    MONOCHROME2."""
    image = colour_frame() if colour else example_frame(0)
    buffer = _io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=1)
    ds = dataset(syntax=uid.JPEGBaseline8Bit)
    set_pixels(ds, image, "YBR_FULL_422" if colour else "MONOCHROME2")
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.PixelSpacing = list(PIXEL_SPACING_MM)
    return save(ds, path)


def write_undecodable(path: Path, syntax: str = uid.JPEGLosslessSV1) -> Path:
    """A frame claiming a compressed syntax for which no decoder is installed here (JPEG
    Lossless: pylibjpeg-libjpeg and gdcm are not requirements); the bytes are never decoded."""
    ds = dataset(syntax=syntax)
    set_pixels(ds, example_frame(0))
    ds.PixelData = encapsulate([b"\xff\xd8not really a jpeg\xff\xd9"])
    ds["PixelData"].VR = "OB"
    return save(ds, path)


def write_ct(path: Path) -> Path:
    """A non-ultrasound modality: a signed 16-bit CT slice (example frame 0 minus 1000)."""
    pixels = example_frame(0).astype(np.int16) - 1000
    ds = set_pixels(dataset(uid.CTImageStorage, modality="CT"), pixels)
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    return save(ds, path)


def write_monochrome1(path: Path) -> Path:
    """Example frame 0 stored inverted (255 - v) as MONOCHROME1."""
    return save(set_pixels(dataset(), 255 - example_frame(0), "MONOCHROME1"), path)


def write_palette(path: Path) -> Path:
    """Example frame 0 as PALETTE COLOR indices through an 8-bit gray ramp (entry i = i)."""
    ds = set_pixels(dataset(), example_frame(0), "PALETTE COLOR")
    ramp = np.arange(256, dtype=np.uint16)
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", (ramp * 257).astype("<u2").tobytes())
    return save(ds, path)


def write_no_pixels(path: Path) -> Path:
    """An ultrasound dataset with everything but pixel data (as a report or a KOS would be)."""
    ds = dataset()
    ds.Rows, ds.Columns = 256, 256
    return save(ds, path)


def write_truncated(path: Path) -> Path:
    """A single-frame DICOM cut in the middle of its pixel data."""
    whole = write_single_frame(path)
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) - 20_000])
    return path


# --- videos and folders ----------------------------------------------------------------------


def write_video(path: Path, frames: np.ndarray | None = None, codec: str = "mpeg4",
                fps: int = 25, pix_fmt: str = "yuv420p", options: dict | None = None) -> Path:
    """N x H x W uint8 frames (default :func:`cine_frames`) as a video, encoded by PyAV's
    bundled FFmpeg. mpeg4 is lossy; ffv1 with pix_fmt "gray" is lossless."""
    import av

    frames = cine_frames() if frames is None else frames
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        for pixels in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="gray")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    return Path(path)


def write_frame_folder(folder: Path, frames: np.ndarray | None = None,
                       prefix: str = "frame") -> list[Path]:
    """Frames as PNGs named prefix1.png .. prefixN.png (unpadded numbers: sorting them as text
    would put 10 before 2). Returns the paths in frame order."""
    frames = cine_frames() if frames is None else frames
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, pixels in enumerate(frames, start=1):
        path = folder / f"{prefix}{number}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths
