"""psfh.io.images: reading images (files, arrays, PIL), label maps, and atomic label-map writing."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from psfh.core.errors import PSFHInputError
from psfh.io import images as io
from psfh.io import pixels
from psfh.io.images import as_uint8, image_name, load_image, load_label_map, save_label_map

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# A real PSFHS frame (a 3 x 256 x 256 .mha, as the whole data set) from the repository's examples.
IMAGE_03811 = EXAMPLES / "image_mha" / "03811.mha"
LABEL_03811 = EXAMPLES / "label_mha" / "03811.mha"


def gradient(height: int = 32, width: int = 40, dtype=np.uint8, high: int = 255) -> np.ndarray:
    """H x W test image with many distinct values."""
    ramp = np.linspace(0, high, height * width).reshape(height, width)
    return ramp.astype(dtype)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height; the pixel data is junk (never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"junk")
                     + chunk(b"IEND", b""))
    return path


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path, name", [
    ("03744.mha", "03744"), ("dir/case.nii.gz", "case"), ("case.NII.GZ", "case"),
    ("a.b.png", "a.b"), ("scan.tiff", "scan"), ("noext", "noext"),
])
def test_image_name(path, name):
    assert image_name(path) == name


# --- files -----------------------------------------------------------------------------------


def test_dataset_mha_is_its_first_channel():
    loaded = load_image(IMAGE_03811)
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(IMAGE_03811)))
    assert volume.shape == (3, 256, 256)
    assert loaded.pixels.shape == (256, 256) and loaded.pixels.dtype == np.float32
    np.testing.assert_array_equal(loaded.pixels, volume[0])
    assert loaded.name == "03811" and loaded.path == IMAGE_03811
    assert loaded.original_dtype == "uint8"
    assert loaded.spatial == {"spacing": (1.0, 1.0), "origin": (0.0, 0.0),
                              "direction": (1.0, 0.0, 0.0, 1.0)}


def test_png_gray_and_str_path(tmp_path):
    image = gradient()
    Image.fromarray(image).save(tmp_path / "scan.png")
    loaded = load_image(str(tmp_path / "scan.png"))
    np.testing.assert_array_equal(loaded.pixels, image)
    assert loaded.name == "scan" and loaded.spatial is None and loaded.original_dtype == "uint8"


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_keeps_full_range(tmp_path, suffix):
    image = gradient(dtype=np.uint16, high=65535)
    Image.fromarray(image).save(tmp_path / f"deep{suffix}")
    loaded = load_image(tmp_path / f"deep{suffix}")
    assert loaded.original_dtype == "uint16"
    assert loaded.pixels.max() == 65535 and loaded.pixels.min() == 0
    np.testing.assert_array_equal(loaded.pixels, image)


def test_rgba_png_drops_alpha(tmp_path):
    rgb = np.stack([gradient(), gradient()[::-1], np.full((32, 40), 7, np.uint8)], axis=-1)
    alpha = np.zeros((32, 40, 1), np.uint8)  # fully transparent: must not matter
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA").save(tmp_path / "rgba.png")
    loaded = load_image(tmp_path / "rgba.png")
    expected = np.asarray(Image.fromarray(rgb).convert("L"), np.float32)  # Pillow's BT.601
    np.testing.assert_allclose(loaded.pixels, expected, atol=0.51)


def test_sitk_vector_image_and_nifti_spacing(tmp_path):
    rgb = np.stack([gradient()] * 3, axis=-1)
    image = sitk.GetImageFromArray(rgb, isVector=True)
    image.SetSpacing((0.5, 0.25))
    sitk.WriteImage(image, str(tmp_path / "colour.nii.gz"))
    loaded = load_image(tmp_path / "colour.nii.gz")
    np.testing.assert_array_equal(loaded.pixels, gradient())
    assert loaded.name == "colour" and loaded.spatial["spacing"] == (0.5, 0.25)


def test_a_few_differing_slices_are_a_volume_not_colour(tmp_path):
    """Two to four slices that differ are a small volume: refused, not blended as colour channels."""
    volume = np.stack([np.full((32, 40), 10 * (k + 1), np.uint8) for k in range(4)])
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / "four.mha"))
    with pytest.raises(PSFHInputError, match=r"four\.mha.*3-D volume with 4 differing slices"):
        load_image(tmp_path / "four.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([volume[1]] * 3)), str(tmp_path / "same.mha"))
    assert np.array_equal(load_image(tmp_path / "same.mha").pixels, volume[1])


def test_volume_with_many_slices_is_refused(tmp_path):
    volume = sitk.GetImageFromArray(np.zeros((5, 16, 16), np.uint8))
    sitk.WriteImage(volume, str(tmp_path / "v.mha"))
    with pytest.raises(PSFHInputError, match=r"v\.mha.*3-D volume with 5 slices"):
        load_image(tmp_path / "v.mha")


# --- arrays and PIL images -------------------------------------------------------------------


def test_identical_channels_give_the_channel_exactly():
    channel = np.random.default_rng(0).random((16, 16)).astype(np.float32)  # not exact in weights
    loaded = load_image(np.stack([channel] * 3, axis=-1))
    np.testing.assert_array_equal(loaded.pixels, channel)
    assert loaded.name is None and loaded.path is None and loaded.original_dtype == "float32"


def test_rgb_array_uses_bt601_luminance():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 100
    rgb[..., 1] = 200
    expected = 0.299 * 100 + 0.587 * 200
    np.testing.assert_allclose(load_image(rgb).pixels, expected, rtol=1e-6)


@pytest.mark.parametrize("channels", [1, 2])
def test_one_and_two_channel_arrays_keep_the_first(channels):
    image = np.stack([gradient()] + [np.full((32, 40), 255, np.uint8)] * (channels - 1), axis=-1)
    np.testing.assert_array_equal(load_image(image).pixels, gradient())


def test_signed_and_pil_inputs():
    signed = gradient(dtype=np.int16) - 100
    np.testing.assert_array_equal(load_image(signed).pixels, signed)
    pil = Image.fromarray(gradient())
    np.testing.assert_array_equal(load_image(pil).pixels, gradient())
    palette = Image.fromarray(gradient()).convert("P")
    assert load_image(palette).pixels.shape == (32, 40)


@pytest.mark.parametrize("array, message", [
    (np.zeros(64, np.uint8), "1-D array"),
    (np.array(3.0), "0-D array"),
    (np.zeros((0, 0), np.uint8), "empty"),
    (np.zeros((1, 1), np.uint8), "minimum is 8 x 8"),
    (np.zeros((16, 16, 5), np.uint8), "5 channels"),
    (np.zeros((3, 256, 256), np.uint8), "256 channels"),
    (np.full((16, 16), np.nan, np.float32), "NaN or inf"),
    (np.full((16, 16), np.inf), "NaN or inf"),
    (np.zeros((16, 16), bool), "pixel type bool"),
    (np.zeros((16, 16), np.complex64), "pixel type complex64"),
    (np.zeros((16, 16), object), "pixel type object"),
    (np.zeros((16, 16, 2, 2), np.uint8), "4-D array"),
])
def test_bad_arrays(array, message):
    with pytest.raises(PSFHInputError, match="array input") as caught:
        load_image(array)
    assert message in str(caught.value)


def test_unsupported_source_type():
    with pytest.raises(PSFHInputError, match="list"):
        load_image([[0, 1], [2, 3]])


def test_max_pixels_for_arrays_and_files(tmp_path, monkeypatch):
    monkeypatch.setattr(pixels, "MAX_PIXELS", 1000)
    with pytest.raises(PSFHInputError, match=r"array input.*40 x 32 = 1,280 pixels.*1,000"):
        load_image(gradient())
    Image.fromarray(gradient()).save(tmp_path / "big.png")
    with pytest.raises(PSFHInputError, match=r"big\.png.*limit is 1,000"):
        load_image(tmp_path / "big.png")


@pytest.mark.parametrize("side", [12000, 20000])  # 20000^2 also trips Pillow's own bomb check
def test_huge_png_is_refused_from_its_header(tmp_path, side):
    path = png_header_only(tmp_path / "huge.png", side, side)
    with pytest.raises(PSFHInputError, match=r"huge\.png.*40,000,000"):
        load_image(path)


def test_huge_mha_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.mha"  # header only: reading the pixels would fail differently
    path.write_text("ObjectType = Image\nNDims = 2\nDimSize = 12000 12000\n"
                    "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n")
    with pytest.raises(PSFHInputError, match=r"huge\.mha.*12000 x 12000 = 144,000,000 pixels"):
        load_image(path)


def test_bad_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image at all")
    (tmp_path / "text.mha").write_text("not an image at all")
    (tmp_path / "notes.txt").write_text("hello")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "whole.png")  # noise: far longer than 200 bytes
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:200])
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "dot.png")
    cases = {
        "missing.png": "file not found",
        "empty.png": "empty (0 bytes)",
        "text.png": "cannot read the image file",
        "text.mha": "cannot read the image file",
        "cut.png": "cannot read the image file",
        "notes.txt": "unsupported file type '.txt' for an image",
        "dot.png": "minimum is 8 x 8",
        ".": "is a folder",
    }
    for name, problem in cases.items():
        path = tmp_path / name
        with pytest.raises(PSFHInputError) as caught:
            load_image(path)
        assert str(path) in str(caught.value) and problem in str(caught.value), name


# --- label maps ------------------------------------------------------------------------------


def test_load_label_map_dataset_and_png(tmp_path):
    labels = load_label_map(LABEL_03811)
    assert labels.shape == (256, 256) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2}
    Image.fromarray(np.stack([labels] * 3, axis=-1)).save(tmp_path / "rgb.png")  # colour mask
    np.testing.assert_array_equal(load_label_map(tmp_path / "rgb.png"), labels)


def test_palette_label_map_gives_its_indices(tmp_path):
    labels = (gradient() % 3).astype(np.uint8)
    mask = Image.fromarray(labels).convert("P")
    mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    mask.putdata(labels.ravel().tolist())
    mask.save(tmp_path / "palette.png")
    with Image.open(tmp_path / "palette.png") as written:
        assert written.mode == "P"
    np.testing.assert_array_equal(load_label_map(tmp_path / "palette.png"), labels)


def test_pixels_never_alias_the_input():
    array = np.zeros((16, 16), np.float32)
    loaded = load_image(array)
    array[0, 0] = 5
    assert loaded.pixels[0, 0] == 0


def test_load_label_map_squeezes_leading_axis_and_refuses_fractions(tmp_path):
    labels = (gradient() % 3).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(labels[None]), str(tmp_path / "one.nii.gz"))
    np.testing.assert_array_equal(load_label_map(tmp_path / "one.nii.gz"), labels)
    sitk.WriteImage(sitk.GetImageFromArray(labels + 0.5), str(tmp_path / "half.nrrd"))
    with pytest.raises(PSFHInputError, match=r"half\.nrrd.*not integers"):
        load_label_map(tmp_path / "half.nrrd")
    with pytest.raises(PSFHInputError, match="unsupported file type '.jpg' for a label map"):
        (tmp_path / "mask.jpg").write_bytes(b"x")
        load_label_map(tmp_path / "mask.jpg")


def test_nifti_round_trip_keeps_spacing(tmp_path):
    labels = (gradient() % 3).astype(np.uint8)
    spatial = {"spacing": (0.3, 0.7), "origin": (5.0, -2.0), "direction": (0.0, 1.0, 1.0, 0.0)}
    path = save_label_map(labels, tmp_path / "sub" / "case.nii.gz", spatial)
    np.testing.assert_array_equal(load_label_map(path), labels)
    written = sitk.ReadImage(str(path))
    assert written.GetSpacing() == pytest.approx((0.3, 0.7))
    assert written.GetOrigin() == pytest.approx((5.0, -2.0))
    assert written.GetDirection() == pytest.approx((0.0, 1.0, 1.0, 0.0))
    assert written.GetPixelID() == sitk.sitkUInt8
    assert sorted(p.name for p in path.parent.iterdir()) == ["case.nii.gz"]  # no temp left


def test_spatial_from_the_dataset_image_writes_back_aligned(tmp_path):
    spatial = load_image(IMAGE_03811).spatial
    path = save_label_map(load_label_map(LABEL_03811), tmp_path / "03811.mha", spatial)
    assert b"CompressedData = True" in path.read_bytes()[:600]
    np.testing.assert_array_equal(load_label_map(path), load_label_map(LABEL_03811))


def test_png_label_map_round_trip_and_overwrite(tmp_path):
    labels = (gradient() % 3).astype(np.int64)
    path = save_label_map(labels, tmp_path / "mask.png")
    with Image.open(path) as written:
        assert written.mode == "L"
    np.testing.assert_array_equal(load_label_map(path), labels)
    save_label_map(np.zeros_like(labels), path)  # overwrite=True by default
    assert load_label_map(path).max() == 0
    with pytest.raises(PSFHInputError, match=r"mask\.png: file exists"):
        save_label_map(labels, path, overwrite=False)


@pytest.mark.parametrize("labels, name, message", [
    (np.full((16, 16), 3, np.uint8), "a.png", "label values [3]"),
    (np.zeros((2, 16, 16), np.uint8), "a.png", "expected H x W"),
    (np.zeros((16, 16), np.uint8), "a.jpg", "cannot write a label map as '.jpg'"),
    (np.zeros((16, 16), np.uint8), "a.mhd", "cannot write a label map as '.mhd'"),
])
def test_save_label_map_refuses(tmp_path, labels, name, message):
    with pytest.raises(PSFHInputError, match=name.replace(".", r"\.")) as caught:
        save_label_map(labels, tmp_path / name)
    assert message in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_spatial_is_refused(tmp_path):
    with pytest.raises(PSFHInputError, match="bad spatial information"):
        save_label_map(np.zeros((16, 16), np.uint8), tmp_path / "a.mha", {"spacing": (1.0,)})
    assert list(tmp_path.iterdir()) == []


# --- uint8 conversion ------------------------------------------------------------------------


def test_as_uint8():
    image = gradient()
    np.testing.assert_array_equal(as_uint8(load_image(image)), image)
    deep = as_uint8(load_image(gradient(dtype=np.uint16, high=4000) + 1000))
    assert deep.dtype == np.uint8 and deep.min() == 0 and deep.max() == 255
    assert as_uint8(load_image(np.full((16, 16), 7.5))).max() == 0


# --- DICOM -----------------------------------------------------------------------------------


def test_single_frame_dicom_keeps_its_spacing(tmp_path):
    import dicom_fixtures as fx

    path = fx.write_single_frame(tmp_path / "us.dcm")
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.pixels, fx.example_frame(0))
    assert loaded.name == "us" and loaded.path == path and loaded.original_dtype == "uint8"
    row, col = fx.PIXEL_SPACING_MM
    assert loaded.dicom.spacing_mm == (row, col) and loaded.dicom.modality == "US"
    # spatial in SimpleITK's (x, y) order: a label map written as .mha is in mm.
    assert loaded.spatial == {"spacing": (col, row), "origin": (0.0, 0.0),
                              "direction": (1.0, 0.0, 0.0, 1.0)}
    written = save_label_map(np.zeros((256, 256), np.uint8), tmp_path / "us.mha", loaded.spatial)
    assert sitk.ReadImage(str(written)).GetSpacing() == pytest.approx((col, row))
    assert not any(value in repr(loaded) for value in fx.PATIENT_STRINGS)


def test_dicom_without_extension_and_without_spacing(tmp_path):
    import dicom_fixtures as fx

    path = fx.write_rgb(tmp_path / "1.2.840.113619.5")  # scanners name files by UID
    loaded = load_image(path)
    assert loaded.name == "1.2.840.113619.5"  # the whole name: ".5" is no extension
    assert loaded.spatial is None and loaded.dicom.spacing_mm is None
    np.testing.assert_allclose(loaded.pixels, fx.luminance(fx.colour_frame()), atol=1e-3)
    (tmp_path / "README").write_text("not an image")  # no marker: refused as before
    with pytest.raises(PSFHInputError, match="unsupported file type 'no extension'"):
        load_image(tmp_path / "README")


def test_multi_frame_dicom_is_sent_to_the_sequence_reader(tmp_path):
    import dicom_fixtures as fx

    path = fx.write_cine(tmp_path / "clip.dcm")
    with pytest.raises(PSFHInputError) as caught:
        load_image(path)
    message = str(caught.value)
    assert str(path) in message and "multi-frame DICOM (10 frames" in message
    assert "psfh.io.sequence.read_sequence" in message


def test_bad_dicom_files_through_load_image(tmp_path):
    import dicom_fixtures as fx

    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "text.dcm").write_text("not a DICOM " * 30)
    cases = {
        fx.write_truncated(tmp_path / "cut.dcm"): "truncated",
        fx.write_no_pixels(tmp_path / "report.dcm"): "no pixel data",
        tmp_path / "empty.dcm": "empty (0 bytes)",
        tmp_path / "text.dcm": "not a DICOM file",
        tmp_path / "missing.dcm": "file not found",
    }
    for path, problem in cases.items():
        with pytest.raises(PSFHInputError) as caught:
            load_image(path)
        assert str(path) in str(caught.value) and problem in str(caught.value), path


def test_dicom_is_a_supported_extension():
    assert ".dcm" in io.SUPPORTED_EXTENSIONS and ".dicom" in io.SUPPORTED_EXTENSIONS
    assert ".dcm" not in io.LABEL_EXTENSIONS  # label maps stay in lossless image formats
