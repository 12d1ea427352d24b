"""psfh.io.sequence: cine clips from a multi-frame DICOM, a video and a folder of frames, all made
here from the example frames (tests/dicom_fixtures.py)."""

from __future__ import annotations

import dataclasses

import dicom_fixtures as fx
import numpy as np
import pytest
from PIL import Image
from pydicom import uid

from psfh.core.errors import PSFHInputError
from psfh.io import sequence
from psfh.io.images import LoadedImage
from psfh.io.sequence import FrameSequence, is_sequence, natural_key, read_sequence

FRAMES = 10
TIMES_25_FPS = [index / 25 for index in range(FRAMES)]


@pytest.fixture(scope="module")
def source():
    """The clip every file here holds: 10 x 256 x 256 uint8."""
    return fx.cine_frames(FRAMES)


@pytest.fixture(scope="module")
def cine(tmp_path_factory):
    return fx.write_cine(tmp_path_factory.mktemp("cine") / "clip.dcm", syntax=uid.RLELossless)


def assert_in_order(sequence_: FrameSequence, source: np.ndarray, tolerance: float) -> None:
    """Each frame is closest to its own source frame (so none is dropped, doubled or swapped),
    and no farther from it than `tolerance` grey levels on average."""
    assert len(sequence_) == len(source)
    for index, frame in enumerate(sequence_.frames):
        assert frame.shape == (256, 256) and frame.dtype == np.float32
        distances = np.abs(source.astype(np.float32) - frame).mean(axis=(1, 2))
        assert int(np.argmin(distances)) == index
        assert distances[index] <= tolerance, (index, distances[index])


# --- multi-frame DICOM -----------------------------------------------------------------------


def test_multi_frame_dicom(cine, source):
    clip = read_sequence(cine)
    assert_in_order(clip, source, tolerance=0)  # RLE is lossless
    assert clip.names == [f"clip_f{index:04d}" for index in range(FRAMES)]
    assert clip.frame_times_s == pytest.approx(TIMES_25_FPS)
    assert clip.spacing_mm == fx.PIXEL_SPACING_MM and clip.original_dtype == "uint8"
    assert clip.source == ("multi-frame DICOM: US, RLE Lossless, 10 frames, "
                           "spacing from PixelSpacing")
    assert clip.dicom.number_of_frames == FRAMES and clip.path == cine
    text = repr(dataclasses.asdict(clip)) + repr(clip)
    assert not [value for value in fx.PATIENT_STRINGS if value in text]


def test_a_frame_as_a_loaded_image(cine, source):
    frame = read_sequence(cine).image(3)
    assert isinstance(frame, LoadedImage)
    np.testing.assert_array_equal(frame.pixels, source[3])
    assert frame.name == "clip_f0003" and frame.path == cine and frame.original_dtype == "uint8"
    row, col = fx.PIXEL_SPACING_MM
    assert frame.spatial["spacing"] == (col, row)  # (x, y) for a label map written as .mha
    assert frame.dicom.spacing_mm == (row, col)


def test_max_frames_and_a_single_frame_dicom(cine, source, tmp_path):
    first = read_sequence(cine, max_frames=4)
    assert len(first) == 4 and first.frame_times_s == pytest.approx(TIMES_25_FPS[:4])
    single = read_sequence(fx.write_single_frame(tmp_path / "one.dcm"))
    assert len(single) == 1 and single.names == ["one_f0000"] and single.frame_times_s is None
    assert single.source.startswith("single-frame DICOM: US")
    with pytest.raises(PSFHInputError, match="max_frames must be at least 1"):
        read_sequence(cine, max_frames=0)


# --- videos ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, codec, pix_fmt, tolerance", [
    ("clip.mp4", "libx264", "yuv420p", 6.0),  # lossy: the usual H.264 export
    ("clip.avi", "mpeg4", "yuv420p", 10.0),  # lossy, and older
    ("clip.mov", "mpeg4", "yuv420p", 10.0),
    ("clip.mkv", "ffv1", "gray", 0.0),  # lossless: exact frames
])
def test_video_frames_in_order_with_container_times(tmp_path, source, name, codec, pix_fmt,
                                                    tolerance):
    path = fx.write_video(tmp_path / name, source, codec=codec, pix_fmt=pix_fmt)
    clip = read_sequence(path)
    assert_in_order(clip, source, tolerance)
    assert clip.frame_times_s == pytest.approx(TIMES_25_FPS, abs=1e-3)
    assert clip.names[0] == "clip_f0000" and clip.names[-1] == "clip_f0009"
    assert clip.spacing_mm is None and clip.spatial is None and clip.dicom is None
    assert clip.original_dtype == "uint8" and clip.source.startswith("video: ")
    assert "25 fps" in clip.source


def test_video_max_frames(tmp_path, source):
    path = fx.write_video(tmp_path / "clip.mkv", source, codec="ffv1", pix_fmt="gray")
    clip = read_sequence(path, max_frames=3)
    np.testing.assert_array_equal(np.stack(clip.frames), source[:3])


def test_broken_video_names_the_file(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"not a video at all" * 50)
    with pytest.raises(PSFHInputError, match=r"broken\.mp4: cannot read the video file"):
        read_sequence(path)


# --- folders of frames -----------------------------------------------------------------------


def test_folder_in_natural_order(tmp_path, source):
    folder = tmp_path / "frames"
    fx.write_frame_folder(folder, source)
    (folder / ".DS_Store").write_bytes(b"junk")  # hidden and non-image files are not frames
    (folder / "notes.txt").write_text("frame rate unknown")
    clip = read_sequence(folder)
    # As text "frame10" would sort before "frame2".
    assert clip.names == [f"frame{number}" for number in range(1, FRAMES + 1)]
    assert_in_order(clip, source, tolerance=0)
    assert clip.frame_times_s is None and clip.spacing_mm is None and clip.spatial is None
    assert clip.source == "folder of 10 frames" and clip.path == folder
    assert [frame.name for frame in (clip.image(0), clip.image(9))] == ["frame1", "frame10"]


def test_folder_of_dicom_frames_keeps_their_spacing(tmp_path):
    for number in (1, 2, 10):
        fx.write_single_frame(tmp_path / f"IM{number}.dcm")
    clip = read_sequence(tmp_path)
    assert clip.names == ["IM1", "IM2", "IM10"]
    assert clip.spacing_mm == fx.PIXEL_SPACING_MM
    assert clip.spatial["spacing"] == fx.PIXEL_SPACING_MM[::-1]


def test_folder_problems(tmp_path, source):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PSFHInputError, match=r"empty: no image frames"):
        read_sequence(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    fx.write_frame_folder(mixed, source[:2])
    Image.fromarray(source[2][:100]).save(mixed / "frame3.png")
    with pytest.raises(PSFHInputError, match=r"frame3\.png: 256 x 100 uint8 pixels, but "
                                             r"frame1\.png is 256 x 256 uint8"):
        read_sequence(mixed)


def test_natural_key():
    names = ["f10.png", "F2.png", "f1.png", "f1b.png", "g0.png", "f².png", "10.png", "9.png"]
    assert sorted(names, key=natural_key) == [
        "9.png", "10.png", "f1.png", "f1b.png", "F2.png", "f10.png", "f².png", "g0.png"]


# --- choosing the reader ---------------------------------------------------------------------


def test_is_sequence(cine, tmp_path):
    single = fx.write_single_frame(tmp_path / "one.dcm")
    broken = fx.write_truncated(tmp_path / "broken.dcm")
    unnamed = tmp_path / "1.2.840.99"
    unnamed.write_bytes(cine.read_bytes())
    assert is_sequence(cine) and is_sequence(unnamed) and is_sequence(tmp_path / "any.mp4")
    assert is_sequence(tmp_path) and not is_sequence(tmp_path, folders=False)
    assert not is_sequence(single) and not is_sequence(broken)
    assert not is_sequence(fx.EXAMPLE_IMAGES[0]) and not is_sequence(tmp_path / "missing.dcm")
    assert read_sequence(unnamed).names[0] == "1.2.840.99_f0000"  # no extension cut off


def test_what_is_not_a_sequence(tmp_path):
    with pytest.raises(PSFHInputError, match=r"03811\.mha: not a sequence.*psfh\.io\.images\.load_image"):
        read_sequence(fx.EXAMPLE_IMAGES[0])
    with pytest.raises(PSFHInputError, match=r"gone\.mp4: file not found"):
        read_sequence(tmp_path / "gone.mp4")


def test_memory_limit_for_videos_and_folders(tmp_path, source, monkeypatch):
    video = fx.write_video(tmp_path / "clip.mkv", source, codec="ffv1", pix_fmt="gray")
    fx.write_frame_folder(tmp_path / "frames", source)
    monkeypatch.setattr(sequence, "MAX_CLIP_PIXELS", 256 * 256 * 4)
    # A video says how long it is (Matroska: its duration x frame rate): refused before decoding.
    with pytest.raises(PSFHInputError, match=r"clip\.mkv: declares 10 frames of 256 x 256 pixels, more than "
                                             r"262,144 pixels in memory.*max_frames"):
        read_sequence(video)
    with pytest.raises(PSFHInputError, match=r"more than 262,144 pixels in 4 frames.*max_frames"):
        read_sequence(tmp_path / "frames")
    for path in (video, tmp_path / "frames"):
        assert len(read_sequence(path, max_frames=4)) == 4


def test_a_video_longer_than_it_declares_is_still_stopped_at_the_limit(tmp_path, source, monkeypatch):
    """The header's count is checked first, the frames decoded are counted too: a header that
    understates the length does not get past the limit."""
    video = fx.write_video(tmp_path / "clip.mkv", source, codec="ffv1", pix_fmt="gray")
    monkeypatch.setattr(sequence, "MAX_CLIP_PIXELS", 256 * 256 * 4)
    monkeypatch.setattr(sequence, "_declared_frames", lambda container, stream: 2)
    with pytest.raises(PSFHInputError, match=r"clip\.mkv: more than 262,144 pixels in 4 frames.*max_frames"):
        read_sequence(video)
