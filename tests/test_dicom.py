"""psfh.io.dicom: frames, spacing, frame times and technical fields from DICOM files made here
(tests/dicom_fixtures.py), clear errors for bad files, and no patient data in anything returned."""

from __future__ import annotations

import dataclasses
import warnings

import dicom_fixtures as fx
import numpy as np
import pytest
from pydicom import uid
from pydicom.pixels import get_decoder

from psfh.core.errors import PSFHInputError
from psfh.io import dicom
from psfh.io.dicom import DicomInfo, is_dicom, read_dicom, read_dicom_info, sitk_spatial


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> path of every DICOM variant, written once for the module."""
    folder = tmp_path_factory.mktemp("dicom")
    writers = {
        "single": fx.write_single_frame,
        "cine": fx.write_cine,
        "time_vector": lambda path: fx.write_cine(path, count=4, time_vector_ms=[0, 30, 40, 50]),
        "rle": lambda path: fx.write_cine(path, syntax=uid.RLELossless),
        "j2k": lambda path: fx.write_cine(path, count=3, syntax=uid.JPEG2000Lossless),
        "jpeg_colour": fx.write_jpeg,
        "jpeg_gray": lambda path: fx.write_jpeg(path, colour=False),
        "regions": fx.write_regions,
        "rgb": fx.write_rgb,
        "ybr": lambda path: fx.write_rgb(path, "YBR_FULL"),
        "monochrome1": fx.write_monochrome1,
        "palette": fx.write_palette,
        "ct": fx.write_ct,
        "no_pixels": fx.write_no_pixels,
        "truncated": fx.write_truncated,
        "undecodable": fx.write_undecodable,
    }
    return {name: write(folder / f"{name}.dcm") for name, write in writers.items()}


def assert_no_patient_data(*objects) -> None:
    """None of the synthetic patient values appears in the objects' repr (dataclasses: every
    field, recursively)."""
    for thing in objects:
        text = repr(dataclasses.asdict(thing)) if dataclasses.is_dataclass(thing) else repr(thing)
        text += repr(thing)
        for value in fx.PATIENT_STRINGS:
            assert value not in text, f"{value!r} leaked into {type(thing).__name__}"


# --- reading ---------------------------------------------------------------------------------


def test_single_frame_pixels_spacing_and_fields(files):
    image = read_dicom(files["single"])
    assert image.frames.shape == (1, 256, 256) and image.frames.dtype == np.float32
    np.testing.assert_array_equal(image.frames[0], fx.example_frame(0))
    assert image.original_dtype == "uint8" and image.path == files["single"]
    assert image.info == DicomInfo(
        modality="US", transfer_syntax="Explicit VR Little Endian",
        transfer_syntax_uid="1.2.840.10008.1.2.1", photometric_interpretation="MONOCHROME2",
        number_of_frames=1, rows=256, columns=256, spacing_mm=fx.PIXEL_SPACING_MM,
        spacing_source="PixelSpacing", frame_times_s=None,
    )


def test_cine_frames_in_order_with_frame_time(files):
    image = read_dicom(files["cine"])
    np.testing.assert_array_equal(image.frames, fx.cine_frames(10))
    assert image.info.number_of_frames == 10
    expected = [index * fx.FRAME_TIME_MS / 1000 for index in range(10)]
    assert image.info.frame_times_s == pytest.approx(expected)


def test_frame_time_vector_is_summed_from_the_first_frame(files):
    info = read_dicom_info(files["time_vector"])
    assert info.frame_times_s == pytest.approx([0.0, 0.030, 0.070, 0.120])


def test_max_frames_reads_the_first_frames_only(files):
    image = read_dicom(files["cine"], max_frames=3)
    np.testing.assert_array_equal(image.frames, fx.cine_frames(3))
    assert image.info.number_of_frames == 10  # the file's count, not what was read
    with pytest.raises(PSFHInputError, match="max_frames must be at least 1"):
        read_dicom(files["cine"], max_frames=0)


@pytest.mark.parametrize("name, syntax, frames", [
    ("rle", "RLE Lossless", 10),
    ("j2k", "JPEG 2000 Image Compression (Lossless Only)", 3),
])
def test_lossless_compression_gives_the_exact_frames(files, name, syntax, frames):
    image = read_dicom(files[name])
    assert image.info.transfer_syntax == syntax
    np.testing.assert_array_equal(image.frames, fx.cine_frames(frames))


def test_jpeg_baseline_monochrome_and_ybr_422(files):
    gray = read_dicom(files["jpeg_gray"])
    assert gray.info.transfer_syntax == "JPEG Baseline (Process 1)"
    error = np.abs(gray.frames[0] - fx.example_frame(0))
    assert error.mean() < 1.5 and error.max() < 40  # quality 95: lossy, but close
    colour = read_dicom(files["jpeg_colour"])
    assert colour.info.photometric_interpretation == "YBR_FULL_422"
    # Decoded to RGB, then BT.601 luma: as far from the source luma as JPEG's loss, no farther
    # (a missing YBR -> RGB conversion would be off by tens of grey levels).
    assert np.abs(colour.frames[0] - fx.luminance(fx.colour_frame())).mean() < 3


def test_rgb_and_ybr_full_become_bt601_grayscale(files):
    expected = fx.luminance(fx.colour_frame())
    np.testing.assert_allclose(read_dicom(files["rgb"]).frames[0], expected, atol=1e-3)
    ybr = read_dicom(files["ybr"])
    assert ybr.info.photometric_interpretation == "YBR_FULL"
    np.testing.assert_allclose(ybr.frames[0], expected, atol=1.5)  # two 8-bit colour conversions


def test_monochrome1_is_inverted_and_palette_goes_through_its_table(files):
    np.testing.assert_array_equal(read_dicom(files["monochrome1"]).frames[0], fx.example_frame(0))
    palette = read_dicom(files["palette"])
    assert palette.original_dtype == "uint16"  # 16-bit table entries
    np.testing.assert_array_equal(palette.frames[0], fx.example_frame(0).astype(np.float32) * 257)


def test_spacing_from_the_tissue_ultrasound_region(files):
    info = read_dicom_info(files["regions"])
    row_cm, col_cm = fx.REGION_DELTAS_CM
    assert info.spacing_mm == pytest.approx((row_cm * 10, col_cm * 10))
    # Region 1 (a Doppler strip in cm/s) is skipped for region 2, the B-mode tissue in cm.
    assert info.spacing_source == "SequenceOfUltrasoundRegions region 2 of 2 (cm)"


def test_sitk_spatial_is_x_y_order(files):
    spatial = sitk_spatial(read_dicom_info(files["single"]))
    row, col = fx.PIXEL_SPACING_MM
    assert spatial == {"spacing": (col, row), "origin": (0.0, 0.0),
                       "direction": (1.0, 0.0, 0.0, 1.0)}
    assert sitk_spatial(read_dicom_info(files["rgb"])) is None  # no spacing in the file


def test_non_ultrasound_modality_warns_and_still_reads(files):
    with pytest.warns(UserWarning, match=r"ct\.dcm: modality 'CT', not ultrasound") as caught:
        image = read_dicom(files["ct"])
    assert image.original_dtype == "int16"  # stored values: no rescale applied
    np.testing.assert_array_equal(image.frames[0], fx.example_frame(0).astype(np.float32) - 1000)
    assert_no_patient_data(*[str(warning.message) for warning in caught])


def test_ultrasound_reads_without_any_warning(files):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # also pydicom's: they must not reach the user
        read_dicom(files["single"])
        read_dicom(files["regions"])


def test_no_patient_data_in_anything_returned(files):
    for name in ("single", "cine", "rle", "jpeg_colour", "regions", "palette"):
        image = read_dicom(files[name])
        assert_no_patient_data(image.info, image, read_dicom_info(files[name]))


def test_clip_over_the_memory_limit_is_refused_before_decoding(files, monkeypatch):
    monkeypatch.setattr(dicom, "MAX_CLIP_PIXELS", 256 * 256 * 5)
    with pytest.raises(PSFHInputError, match=r"cine\.dcm: 10 frames of 256 x 256.*max_frames"):
        read_dicom(files["cine"])
    assert len(read_dicom(files["cine"], max_frames=5).frames) == 5


# --- bad files -------------------------------------------------------------------------------


def test_bad_files_name_the_file_and_the_problem(files, tmp_path):
    (tmp_path / "text.dcm").write_text("this is not a DICOM file " * 20)
    (tmp_path / "empty.dcm").write_bytes(b"")
    cases = {
        files["truncated"]: "truncated",
        files["no_pixels"]: "has no pixel data",
        tmp_path / "text.dcm": "not a DICOM file",
        tmp_path / "empty.dcm": "empty (0 bytes)",
        tmp_path / "missing.dcm": "file not found",
        tmp_path: "is a folder",
    }
    for path, problem in cases.items():
        with pytest.raises(PSFHInputError) as caught:
            read_dicom(path)
        assert str(path) in str(caught.value) and problem in str(caught.value), path


def test_a_syntax_without_decoder_names_it_and_the_packages(files):
    # psfh's requirements leave JPEG Lossless's decoders out (pylibjpeg-libjpeg is GPL-3.0).
    assert not get_decoder(uid.JPEGLosslessSV1).is_available, "a JPEG Lossless decoder is installed"
    with pytest.raises(PSFHInputError) as caught:
        read_dicom(files["undecodable"])
    message = str(caught.value)
    assert str(files["undecodable"]) in message
    assert "JPEG Lossless, Non-Hierarchical, First-Order Prediction" in message
    assert "1.2.840.10008.1.2.4.70" in message and "pylibjpeg-libjpeg" in message


def test_corrupt_compressed_data_is_a_decode_error(files, tmp_path):
    path = fx.write_undecodable(tmp_path / "bad_jpeg.dcm", syntax=uid.JPEGBaseline8Bit)
    with pytest.raises(PSFHInputError,
                       match=r"bad_jpeg\.dcm: cannot decode the pixel data \(JPEG Baseline"):
        read_dicom(path)


def test_pixel_data_shorter_than_its_header(tmp_path):
    ds = fx.set_pixels(fx.dataset(uid.UltrasoundMultiFrameImageStorage), fx.cine_frames(3))
    ds.NumberOfFrames = 4  # one frame more than the pixel data holds
    path = fx.save(ds, tmp_path / "short.dcm")
    with pytest.raises(PSFHInputError, match=r"short\.dcm: the pixel data holds 196,608 bytes, "
                                             r"fewer than the 262,144 its header describes"):
        read_dicom(path)


def test_unsupported_photometric_interpretation(tmp_path):
    ds = fx.set_pixels(fx.dataset(), fx.colour_frame(), "YBR_PARTIAL_420")
    path = fx.save(ds, tmp_path / "partial.dcm")
    with pytest.raises(PSFHInputError,
                       match=r"partial\.dcm: photometric interpretation 'YBR_PARTIAL_420'"):
        read_dicom_info(path)


# --- recognising DICOM files -----------------------------------------------------------------


def test_is_dicom_by_name_or_marker(files, tmp_path):
    unnamed = tmp_path / "IM_0001"
    unnamed.write_bytes(files["single"].read_bytes())
    (tmp_path / "short").write_bytes(b"DICM")
    (tmp_path / "notes").write_text("x" * 200)
    assert is_dicom(files["single"]) and is_dicom(unnamed) and is_dicom(tmp_path / "named.DCM")
    assert not is_dicom(tmp_path / "short") and not is_dicom(tmp_path / "notes")
    assert not is_dicom(tmp_path / "missing") and not is_dicom(fx.EXAMPLE_IMAGES[0])


@pytest.mark.parametrize("change, problem", [
    (lambda ds: delattr(ds, "BitsAllocated"), r"the DICOM header lacks BitsAllocated"),
    (lambda ds: delattr(ds, "SamplesPerPixel"), r"the DICOM header lacks SamplesPerPixel"),
    (lambda ds: setattr(ds, "BitsAllocated", 12), r"Bits Allocated is 12; a DICOM image has 1, 8, 16, 32, 64"),
    (lambda ds: setattr(ds, "BitsStored", 40), r"Bits Stored is 40 with Bits Allocated 8; expected 1 to 8"),
    (lambda ds: setattr(ds, "SamplesPerPixel", 3), r"Samples per Pixel is 3, but a MONOCHROME2 image has 1"),
    (lambda ds: setattr(ds, "PixelRepresentation", 2), r"Pixel Representation is 2"),
], ids=["no-bits-allocated", "no-samples", "bits-12", "stored-40", "samples-3", "representation-2"])
def test_a_broken_pixel_module_is_named_from_the_header(tmp_path, change, problem, monkeypatch):
    """Contradictory or missing Image Pixel elements are refused in words before any pixel is decoded."""
    ds = fx.set_pixels(fx.dataset(), fx.example_frame(0))
    ds["PixelData"].VR = "OB"  # stated, so pydicom can write it without Bits Allocated
    change(ds)
    path = fx.save(ds, tmp_path / "broken.dcm")
    monkeypatch.setattr(dicom, "_decode", lambda *a: pytest.fail("decoded a refused file"))
    with pytest.raises(PSFHInputError, match=r"broken\.dcm: " + problem):
        read_dicom(path)
