"""Reading ultrasound images and reading/writing label maps.

The first step of psfh's data flow: file (or array) -> :class:`LoadedImage`, an H x W float32
grayscale array in the image's own intensity scale, plus what is needed to write a label map
back aligned with it. Label maps are H x W uint8 with the values of :mod:`psfh.core.labels`
(0 background, 1 pubic symphysis, 2 fetal head).

Single-frame DICOM files (.dcm, .dicom, or any name with the DICM marker) are read through
:mod:`psfh.io.dicom`, which keeps their pixel spacing and nothing about the patient; multi-frame
ones are clips, read with :func:`psfh.io.sequence.read_sequence`.

Every problem a user can cause raises :class:`~psfh.core.errors.PSFHInputError` naming the file (or
"array input") and the problem; reader exceptions never escape.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from psfh.core.errors import PSFHInputError
from psfh.core.files import atomic_target
from psfh.core.labels import check_label_map
from psfh.io.dicom import DICOM_EXTENSIONS, DicomInfo, is_dicom, read_dicom, read_dicom_info, sitk_spatial
from psfh.io.pixels import MAX_CHANNELS, MAX_DECODED_BYTES, MAX_PIXELS, check_dtype, check_size, to_grayscale

PILLOW_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SITK_EXTENSIONS = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd")
SUPPORTED_EXTENSIONS = PILLOW_EXTENSIONS + SITK_EXTENSIONS + DICOM_EXTENSIONS
# Lossless formats only: a JPEG label map would have its class values smeared by compression.
LABEL_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff") + SITK_EXTENSIONS
# .mhd is left out: it writes a second (.raw) file, which cannot be replaced atomically.
LABEL_WRITE_EXTENSIONS = (".png", ".mha", ".nii", ".nii.gz", ".nrrd")

# ITU-R BT.601 luma weights (what Pillow's "L" conversion uses) for R, G, B.


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays with == is ambiguous
class LoadedImage:
    """One image, ready for preprocessing.

    pixels: H x W float32 grayscale in the original intensity scale (not normalised).
    name: file name without extension ("03744" for "03744.mha"), None for arrays.
    path: the file read, None for arrays and PIL images.
    spatial: for SimpleITK files, {"spacing": (sx, sy), "origin": (ox, oy), "direction":
        (d00, d01, d10, d11)} of the 2-D image, so a label map can be written back aligned;
        for a DICOM with a pixel spacing, the same with (sx, sy) = (column, row) mm, origin 0
        and identity direction; None otherwise.
    original_dtype: numpy dtype name of the stored pixels ("uint8", "uint16", "float32", ...).
    dicom: for a DICOM file, its technical fields (:class:`psfh.io.dicom.DicomInfo`: modality,
        transfer syntax, spacing_mm as (row, col) and its source, ...); None otherwise.
    """

    pixels: np.ndarray
    name: str | None
    path: Path | None
    spatial: dict | None
    original_dtype: str
    dicom: DicomInfo | None = None


def pixel_spacing_mm(image: LoadedImage) -> tuple[float, float] | None:
    """(row, col) mm per pixel of an image, when its file says: a DICOM's Pixel Spacing or
    Ultrasound Regions (:mod:`psfh.io.dicom`), or a SimpleITK file's spacing unless it is exactly
    1 x 1 — the default that many tools write when the spacing is unknown (PSFHS's .mha files
    carry it) — else None. Arrays and Pillow formats carry no spacing."""
    if image.dicom is not None:
        return image.dicom.spacing_mm
    if image.spatial is not None:
        col, row = (float(v) for v in image.spatial["spacing"])
        if (col, row) != (1.0, 1.0):
            return row, col
    return None


def image_extension(path: str | os.PathLike) -> str:
    """The lower-case extension of `path`, with the double extension ".nii.gz" kept whole."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def image_name(path: str | os.PathLike) -> str:
    """The file name without its extension: "03744" for "03744.mha", "case" for "case.nii.gz"."""
    name = Path(path).name
    return name[: len(name) - len(image_extension(name))]


def load_image(source: str | os.PathLike | np.ndarray | Image.Image | LoadedImage) -> LoadedImage:
    """Read one 2-D image from a file path, a numpy array or a PIL image (a LoadedImage is
    returned as it is, so a caller that read the file already passes it on instead of reading again).

    Arrays are H x W or H x W x C (channels last, C <= 4). Colour becomes grayscale: 1 channel
    is squeezed, 2 (gray + alpha) keep the first, 3 (RGB) become BT.601 luminance (exactly the
    channel when all three are equal), 4 (RGBA) drop alpha and are then treated as RGB.

    Returns a :class:`LoadedImage` whose pixels are H x W float32. Raises PSFHInputError for a
    missing, empty, corrupt or unsupported file and for arrays that are not a usable image.
    """
    if isinstance(source, LoadedImage):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _load_file(Path(source))
    if isinstance(source, Image.Image):
        where = "PIL image input"
        array = _pil_to_array(source, where)
    elif isinstance(source, np.ndarray):
        where = "array input"
        array = source
    else:
        raise PSFHInputError(
            f"cannot read an image from a {type(source).__name__}: "
            "give a file path, a numpy array (H x W or H x W x C) or a PIL image"
        )
    pixels = to_grayscale(array, where)
    return LoadedImage(pixels, None, None, None, array.dtype.name)


def load_label_map(path: str | os.PathLike) -> np.ndarray:
    """Read a label map file (.png, .bmp, .tif, .mha, .mhd, .nii, .nii.gz, .nrrd).

    Returns H x W uint8. A leading singleton axis (a 1 x H x W volume) is squeezed, and so are
    identical colour channels (an RGB or gray+alpha PNG). Raises PSFHInputError when the file
    cannot be read, is not 2-D, or holds values that are not integers in 0..255.
    """
    path = Path(path)
    _check_file(path, LABEL_EXTENSIONS, "a label map")
    where = str(path)
    # _read_sitk already turns a 1 x H x W volume into H x W x 1, squeezed by _label_array.
    if image_extension(path) in SITK_EXTENSIONS:
        array = _read_sitk(path)[0]
    else:
        array = _read_pillow(path, palette_indices=True)
    return _label_array(array, where)


def save_label_map(
    label_map: np.ndarray,
    path: str | os.PathLike,
    spatial: dict | None = None,
    overwrite: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write an H x W label map with values in {0, 1, 2} as uint8.

    .png goes through Pillow (mode "L"); .mha, .nii, .nii.gz and .nrrd through SimpleITK,
    compressed, with spacing/origin/direction from `spatial` (as in :class:`LoadedImage`) when
    given (PNG has no geometry, so `spatial` is ignored there). `metadata` ({key: text}, e.g.
    which structures a user corrected) goes into PNG text chunks and the .mha / .nrrd header
    (NIfTI has no free-text fields and drops it). The file is written next to its
    destination and moved into place with os.replace, so a crash never leaves half a file.
    With overwrite=False an existing file is refused (the CLI uses this to protect inputs).
    Parent folders are created. Returns the path written.
    """
    path = Path(path)
    extension = image_extension(path)
    if extension not in LABEL_WRITE_EXTENSIONS:
        raise PSFHInputError(
            f"{path}: cannot write a label map as '{extension or 'no extension'}'; "
            f"use one of {', '.join(LABEL_WRITE_EXTENSIONS)}"
        )
    if path.is_dir():
        raise PSFHInputError(f"{path}: is a folder; give a file name for the label map")
    if path.exists() and not overwrite:
        raise PSFHInputError(f"{path}: file exists; refusing to overwrite it")
    labels = check_label_map(label_map, f"label map for {path}")
    try:
        # The temporary file keeps the extension: the writers pick their format from the name.
        with atomic_target(path, suffix=extension) as temporary:
            if extension == ".png":
                Image.fromarray(labels).save(temporary, format="PNG", pnginfo=_png_text(metadata))
            else:
                image = _label_sitk_image(labels, spatial, path)
                for key, value in (metadata or {}).items():
                    image.SetMetaData(str(key), str(value))
                _sitk().WriteImage(image, str(temporary), True)
    except PSFHInputError:
        raise
    except Exception as error:  # OSError from Pillow, RuntimeError from SimpleITK
        raise PSFHInputError(f"{path}: cannot write the label map ({error})") from error
    return path


def as_uint8(image: LoadedImage) -> np.ndarray:
    """The image as H x W uint8, the form training and inference feed the network.

    uint8 images pass through unchanged (colour ones as rounded luminance); any other type is
    min-max scaled per image to 0..255 (a constant image becomes all zeros), because 16-bit or
    float images have no fixed display range.
    """
    pixels = image.pixels
    if image.original_dtype == "uint8":
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return np.zeros(pixels.shape, np.uint8)
    scaled = (pixels.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# --- files -----------------------------------------------------------------------------------


def _load_file(path: Path) -> LoadedImage:
    if image_extension(path) in DICOM_EXTENSIONS or _unnamed_dicom(path):
        return _load_dicom(path)
    _check_file(path, SUPPORTED_EXTENSIONS, "an image")
    spatial = None
    if image_extension(path) in SITK_EXTENSIONS:
        array, spatial = _read_sitk(path)
    else:
        array = _read_pillow(path)
    pixels = to_grayscale(array, str(path))
    return LoadedImage(pixels, image_name(path), path, spatial, array.dtype.name)


def _unnamed_dicom(path: Path) -> bool:
    """A DICOM file without a known extension ("IM_0001", "1.2.840.1136"): the names scanners
    export. Sniffed only for names psfh would otherwise refuse, so other files read as before."""
    if image_extension(path) in SUPPORTED_EXTENSIONS or not path.is_file():
        return False
    return is_dicom(path)


def _load_dicom(path: Path) -> LoadedImage:
    if image_extension(path) in DICOM_EXTENSIONS:
        _check_file(path, DICOM_EXTENSIONS, "a DICOM")
    info = read_dicom_info(path)
    if info.number_of_frames > 1:
        raise PSFHInputError(
            f"{path}: a multi-frame DICOM ({info.number_of_frames} frames, a cine clip); "
            "load_image reads one image: read the clip with psfh.io.sequence.read_sequence"
        )
    image = read_dicom(path)
    # A scanner's "1.2.840.1136" has no extension to cut: keep the whole file name.
    name = image_name(path) if image_extension(path) in DICOM_EXTENSIONS else path.name
    return LoadedImage(image.frames[0], name, path, sitk_spatial(info), image.original_dtype, info)


def _check_file(path: Path, extensions: tuple[str, ...], what: str) -> None:
    """Fail early, with the file named, for problems visible before reading."""
    if not path.exists():
        raise PSFHInputError(f"{path}: file not found")
    if path.is_dir():
        raise PSFHInputError(f"{path}: is a folder, not {what} file")
    extension = image_extension(path)
    if extension not in extensions:
        raise PSFHInputError(
            f"{path}: unsupported file type '{extension or 'no extension'}' for {what}; "
            f"use one of {', '.join(extensions)}"
        )
    if path.stat().st_size == 0:
        raise PSFHInputError(f"{path}: file is empty (0 bytes)")


def _read_pillow(path: Path, palette_indices: bool = False) -> np.ndarray:
    """Decode with Pillow; the size is checked from the header before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # Pillow warns about huge images at open time; our own, lower, limit is checked
            # right after and names the size, so the warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                check_size(height, width, str(path))
                frames = getattr(image, "n_frames", 1)
                if frames > 1:
                    raise PSFHInputError(
                        f"{path}: holds {frames} frames; psfh takes one 2-D image"
                    )
                image.load()
                return _pil_to_array(image, str(path), palette_indices)
    except PSFHInputError:
        raise
    except Image.DecompressionBombError as error:  # over twice Pillow's limit: refused in open
        raise PSFHInputError(
            f"{path}: image is too large (Pillow: {error}); the limit is {MAX_PIXELS:,} pixels"
        ) from error
    except Exception as error:  # corrupt files raise OSError, SyntaxError, struct.error, ...
        raise PSFHInputError(f"{path}: cannot read the image file ({error})") from error


def _pil_to_array(image: Image.Image, where: str, palette_indices: bool = False) -> np.ndarray:
    """H x W (or H x W x C) array of a PIL image in its native depth (16-bit stays 16-bit).

    With palette_indices, a palette ("P") image gives its indices: a palette label map stores
    the class values as indices and only colours them for display.
    """
    if image.mode == "P" and palette_indices:
        return np.asarray(image)
    if image.mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        # Palette, bilevel and other colour spaces: convert to the plain equivalent first.
        image = image.convert("RGBA" if "A" in image.mode or "a" in image.mode else "RGB")
    array = np.asarray(image)
    if array.dtype.byteorder == ">":  # "I;16B": make it native so later maths is ordinary
        array = array.astype(array.dtype.newbyteorder("="))
    if array.size == 0:
        raise PSFHInputError(f"{where}: image is empty")
    return array


def _sitk():
    """SimpleITK, imported when a medical-format file is read or written: the GPU machine's
    image lacks it, and training from a pack needs no file reader."""
    import SimpleITK

    return SimpleITK


def _read_sitk(path: Path) -> tuple[np.ndarray, dict]:
    """Read with SimpleITK: returns (H x W or H x W x C array, 2-D spatial dict).

    A 3-D image of identical slices is one frame (the PSFHS .mha files are 3 x 256 x 256 with
    three identical slices); differing slices, or more than MAX_CHANNELS, are a volume, which psfh
    refuses (before reading the pixels when the header says more than MAX_CHANNELS).
    """
    where = str(path)
    try:
        sitk = _sitk()
        reader = sitk.ImageFileReader()
        reader.SetFileName(where)
        reader.ReadImageInformation()  # header only: check the size before reading pixels
        size = reader.GetSize()  # (x, y[, z]) = (W, H[, D])
        if len(size) < 2 or len(size) > 3:
            raise PSFHInputError(f"{where}: {len(size)}-D image; psfh takes one 2-D image")
        if len(size) == 3 and size[2] > MAX_CHANNELS:
            raise PSFHInputError(
                f"{where}: 3-D volume with {size[2]} slices; psfh takes one 2-D image"
            )
        check_size(size[1], size[0], where)
        _check_sitk_bytes(reader, size, where)
        image = reader.Execute()
        array = sitk.GetArrayFromImage(image)
    except PSFHInputError:
        raise
    except Exception as error:  # SimpleITK raises RuntimeError for unreadable files
        # Its message starts with C++ source locations; the last line says what went wrong.
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
        raise PSFHInputError(f"{where}: cannot read the image file ({reason})") from error

    vector = image.GetNumberOfComponentsPerPixel() > 1
    if image.GetDimension() == 3:
        depth = array.shape[0]
        if vector:  # D x H x W x C: only a single slice can be a 2-D colour image
            if depth != 1:
                raise PSFHInputError(
                    f"{where}: 3-D volume with {depth} slices of vector pixels; "
                    "psfh takes one 2-D image"
                )
            array = array[0]
        else:  # D x H x W with D <= 4: one 2-D frame stored as identical slices (PSFHS: 3 of them)
            if depth > 1 and not (array == array[:1]).all():
                raise PSFHInputError(
                    f"{where}: 3-D volume with {depth} differing slices; psfh takes one 2-D image "
                    "(a frame stored as identical slices, as PSFHS stores its frames, is read as one)"
                )
            array = np.moveaxis(array, 0, -1)
    return array, _spatial_2d(image)


def _check_sitk_bytes(reader, size: tuple[int, ...], where: str) -> None:
    """Refuse, from the header, pixels whose bytes (pixels x components x component size) no frame
    needs: a header can declare a size within the pixel limit and thousands of float64 channels."""
    sitk = _sitk()
    components = reader.GetNumberOfComponents()
    if components > MAX_CHANNELS:
        raise PSFHInputError(f"{where}: {components} components per pixel; at most {MAX_CHANNELS} are "
                             "supported (gray, gray + alpha, RGB, RGBA)")
    component_bytes = sitk.Image([1] * len(size), reader.GetPixelID(), components).GetSizeOfPixelComponent()
    depth = size[2] if len(size) == 3 else 1
    total = size[0] * size[1] * depth * components * component_bytes
    if total > MAX_DECODED_BYTES:
        raise PSFHInputError(
            f"{where}: {size[0]} x {size[1]} pixels of {depth * components} x {component_bytes} bytes = "
            f"{total:,} bytes to decode; the limit is {MAX_DECODED_BYTES:,} bytes"
        )


def _spatial_2d(image) -> dict:
    """Spacing, origin and direction of the image's first two axes (its 2-D plane)."""
    dimension = image.GetDimension()
    direction = image.GetDirection()
    return {
        "spacing": tuple(float(value) for value in image.GetSpacing()[:2]),
        "origin": tuple(float(value) for value in image.GetOrigin()[:2]),
        # Upper-left 2 x 2 of the row-major D x D direction matrix.
        "direction": tuple(
            float(direction[row * dimension + col]) for row in range(2) for col in range(2)
        ),
    }


def _png_text(metadata: dict[str, str] | None):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(str(key), str(value))
    return info


def _label_sitk_image(labels: np.ndarray, spatial: dict | None, path: Path):
    image = _sitk().GetImageFromArray(labels)
    if spatial is None:
        return image
    try:
        image.SetSpacing([float(value) for value in spatial["spacing"]])
        image.SetOrigin([float(value) for value in spatial["origin"]])
        image.SetDirection([float(value) for value in spatial["direction"]])
    except (KeyError, TypeError, RuntimeError) as error:
        raise PSFHInputError(
            f"{path}: bad spatial information {spatial!r} ({error}); expected 2 spacings, "
            "2 origin coordinates and 4 direction values"
        ) from error
    return image


# --- arrays ----------------------------------------------------------------------------------


def _label_array(array: np.ndarray, where: str) -> np.ndarray:
    """Any integer-valued H x W (or H x W x C with equal channels) array -> H x W uint8."""
    check_dtype(array, where)
    if array.ndim == 3:
        array = _label_channel(array, where)
    if array.ndim != 2:
        raise PSFHInputError(f"{where}: label map has shape {array.shape}; expected H x W")
    check_size(array.shape[0], array.shape[1], where)
    # NaN never equals itself, so this also catches NaN; inf fails the range check below.
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise PSFHInputError(f"{where}: label map holds values that are not integers")
    if array.min() < 0 or array.max() > 255:
        raise PSFHInputError(
            f"{where}: label values range {array.min()}..{array.max()}; expected 0..255"
        )
    return array.astype(np.uint8)


def _label_channel(array: np.ndarray, where: str) -> np.ndarray:
    """H x W x C label map saved as gray(+alpha) or colour with equal channels -> H x W."""
    colour = array[..., :3] if array.shape[2] >= 3 else array[..., :1]  # alpha ignored
    if not all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(colour.shape[2])):
        raise PSFHInputError(
            f"{where}: label map has {array.shape[2]} differing channels; expected one channel"
        )
    return array[..., 0]
