"""Reading cine clips: a multi-frame DICOM, a video file or a folder of frames -> FrameSequence.

The sequence counterpart of :func:`psfh.io.images.load_image`: every frame becomes H x W float32
grayscale exactly as load_image would make it (psfh.io.images's checks and BT.601 conversion), and
``FrameSequence.image(i)`` hands frame i on as a :class:`~psfh.io.images.LoadedImage`, so per-frame
prediction is the single-image path. Frame times come from the DICOM (Frame Time or Frame
Time Vector) or the video container's timestamps; pixel spacing from the DICOM only (a video
or a folder of PNGs carries none).

All frames are decoded into memory (at most :data:`psfh.io.dicom.MAX_CLIP_PIXELS` pixels; read a
longer clip in parts with ``max_frames``). Videos are decoded by PyAV (FFmpeg bundled in its
wheels), imported only when a video is read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psfh.core.errors import PSFHInputError
from psfh.io.dicom import MAX_CLIP_PIXELS, DicomInfo, is_dicom, read_dicom, read_dicom_info, sitk_spatial
from psfh.io.images import SUPPORTED_EXTENSIONS, LoadedImage, image_extension, image_name, load_image

# A video frame is refused and turned into grayscale exactly as any image is.
from psfh.io.pixels import check_size, to_grayscale

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays with == is ambiguous
class FrameSequence:
    """The frames of one clip, in time order.

    frames: N arrays, each H x W float32 grayscale in the stored intensity scale (as
        LoadedImage.pixels); all share one H x W.
    names: N frame names: "clip_f0000", "clip_f0001", ... (0-based, as ``frames``) for a DICOM
        or video "clip.*"; each file's name without extension for a folder.
    frame_times_s: N times in seconds from the first frame (0.0 first); None when unknown
        (a folder, a DICOM without Frame Time).
    spacing_mm: (row, col) mm per pixel from the DICOM; None when unknown.
    source: what was read, in words ("multi-frame DICOM: US, RLE Lossless, 10 frames, spacing
        from PixelSpacing", "video: h264, 25 fps", "folder of 10 frames").
    path: the file or folder read.
    original_dtype: numpy dtype name of the stored pixels, shared by all frames.
    spatial: what each frame's LoadedImage.spatial gets (see psfh.io.images), so label maps written
        as .mha keep the geometry; None when unknown.
    dicom: the DICOM's technical fields (:class:`psfh.io.dicom.DicomInfo`); None for other sources.
    """

    frames: list[np.ndarray]
    names: list[str]
    frame_times_s: tuple[float, ...] | None
    spacing_mm: tuple[float, float] | None
    source: str
    path: Path
    original_dtype: str
    spatial: dict | None = None
    dicom: DicomInfo | None = None

    def __len__(self) -> int:
        return len(self.frames)

    def image(self, index: int) -> LoadedImage:
        """Frame `index` as a LoadedImage (name from ``names``, path of the clip), ready for
        ``PSFHModel.predict``."""
        return LoadedImage(self.frames[index], self.names[index], self.path, self.spatial,
                           self.original_dtype, self.dicom)


def is_sequence(path: str | os.PathLike, folders: bool = True) -> bool:
    """Whether :func:`read_sequence` is the reader for `path`: a video file (by extension), a
    DICOM with more than one frame, or (unless folders=False, for a command line where a folder
    means a batch of separate images) a folder. Never raises: a broken DICOM gives False, so
    load_image reports what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        return folders
    if image_extension(path) in VIDEO_EXTENSIONS:
        return True
    if path.is_file() and is_dicom(path):
        try:
            return read_dicom_info(path).number_of_frames > 1
        except PSFHInputError:
            return False
    return False


def read_sequence(path: str | os.PathLike, max_frames: int | None = None) -> FrameSequence:
    """Read a clip: a DICOM (any number of frames), a video (.mp4, .avi, .mov, .mkv), or a
    folder of image frames (any file load_image reads, sorted naturally by name: "f2" before
    "f10"; hidden files and other files skipped).

    max_frames: read only the first frames (None: all).
    Returns a :class:`FrameSequence` of N >= 1 frames.
    Raises PSFHInputError (naming the file) for a missing or unreadable file, a path that is no
    sequence, an empty folder, frames of different sizes or pixel types, or a clip over
    MAX_CLIP_PIXELS pixels. Warns (and reads) for a DICOM whose modality is not ultrasound.
    """
    path = Path(path)
    if max_frames is not None and max_frames < 1:
        raise PSFHInputError(f"max_frames must be at least 1, got {max_frames}")
    if not path.exists():
        raise PSFHInputError(f"{path}: file not found")
    if path.is_dir():
        return _read_folder(path, max_frames)
    if image_extension(path) in VIDEO_EXTENSIONS:
        return _read_video(path, max_frames)
    if is_dicom(path):
        return _read_dicom(path, max_frames)
    raise PSFHInputError(
        f"{path}: not a sequence; give a multi-frame DICOM, a video "
        f"({', '.join(VIDEO_EXTENSIONS)}) or a folder of frames (for one image use "
        "psfh.io.images.load_image)"
    )


def natural_key(name: str) -> list:
    """Sort key putting "f2" before "f10": digit runs compare as numbers, the rest case-blind."""
    # Splitting on a captured group puts the digit runs at the odd positions. [0-9], not \d or
    # isdigit(): int() cannot read every character those accept ("²").
    parts = re.split(r"([0-9]+)", name)
    return [int(part) if index % 2 else part.casefold() for index, part in enumerate(parts)]


# --- readers ---------------------------------------------------------------------------------


def _frame_names(path: Path, count: int) -> list[str]:
    # A scanner's "1.2.840.1136" has no extension to cut: keep the whole file name.
    known = image_extension(path) in SUPPORTED_EXTENSIONS + VIDEO_EXTENSIONS
    stem = image_name(path) if known else path.name
    return [f"{stem}_f{index:04d}" for index in range(count)]


def _read_dicom(path: Path, max_frames: int | None) -> FrameSequence:
    image = read_dicom(path, max_frames)
    info = image.info
    count = len(image.frames)
    times = info.frame_times_s[:count] if info.frame_times_s is not None else None
    spacing = f"spacing from {info.spacing_source}" if info.spacing_source else "no spacing"
    frames = f"{info.number_of_frames} frames" if info.number_of_frames > 1 else "1 frame"
    source = (f"{'multi' if info.number_of_frames > 1 else 'single'}-frame DICOM: "
              f"{info.modality or 'no modality'}, {info.transfer_syntax}, {frames}, {spacing}")
    return FrameSequence(list(image.frames), _frame_names(path, count), times, info.spacing_mm,
                         source, path, image.original_dtype, sitk_spatial(info), info)


def _av():
    """PyAV, imported when a video is read (it loads FFmpeg's libraries)."""
    try:
        import av
    except ImportError as error:
        raise PSFHInputError("reading a video needs PyAV: pip install av") from error
    return av


def _read_video(path: Path, max_frames: int | None) -> FrameSequence:
    av = _av()
    frames, times = [], []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise PSFHInputError(f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            height, width = stream.codec_context.height, stream.codec_context.width
            check_size(height, width, str(path))
            declared = _declared_frames(container, stream)
            wanted = declared if max_frames is None else min(declared, max_frames)
            if wanted * height * width > MAX_CLIP_PIXELS:  # refused from the header, before decoding
                raise PSFHInputError(
                    f"{path}: declares {declared} frames of {width} x {height} pixels, more than "
                    f"{MAX_CLIP_PIXELS:,} pixels in memory; read fewer frames (max_frames)"
                )
            for frame in container.decode(stream):
                if (len(frames) + 1) * height * width > MAX_CLIP_PIXELS:
                    raise PSFHInputError(
                        f"{path}: more than {MAX_CLIP_PIXELS:,} pixels in {len(frames)} frames; "
                        "read fewer frames (max_frames)"
                    )
                # Through RGB, so colour and gray videos both get psfh.io.images's BT.601 luma.
                where = f"{path} (frame {len(frames)})"
                frames.append(to_grayscale(frame.to_ndarray(format="rgb24"), where))
                times.append(frame.time)
                if max_frames is not None and len(frames) >= max_frames:
                    break
            codec, rate = stream.codec_context.name, stream.average_rate
    except PSFHInputError:
        raise
    except Exception as error:  # noqa: BLE001 - av.FFmpegError and its many subclasses, OSError
        raise PSFHInputError(f"{path}: cannot read the video file ({error})") from error
    if not frames:
        raise PSFHInputError(f"{path}: the video has no frames")
    if any(time is None for time in times):  # no timestamps: fall back on the nominal rate
        times = [index / float(rate) for index in range(len(frames))] if rate else None
    times = tuple(float(time - times[0]) for time in times) if times else None
    source = f"video: {codec}, {width} x {height}" + (f", {float(rate):.4g} fps" if rate else "")
    # rgb24 frames are 8-bit whatever the codec stored: a 10-bit video is read at 8 bits.
    return FrameSequence(frames, _frame_names(path, len(frames)), times, None, source, path,
                         "uint8")


def _declared_frames(container, stream) -> int:
    """How many frames the container says the stream has: its frame count, else its duration times
    its frame rate (a Matroska file states no count); 0 when it says neither."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if stream.duration and stream.time_base and rate:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration and rate:
        seconds = container.duration / 1_000_000  # av.time_base: microseconds
    else:
        return 0
    return max(0, int(seconds * float(rate)))


def _read_folder(folder: Path, max_frames: int | None) -> FrameSequence:
    files = sorted(
        (entry for entry in folder.iterdir()
         # Hidden files (.DS_Store) and subfolders are not frames; a DICOM may have no extension.
         if not entry.name.startswith(".") and entry.is_file()
         and (image_extension(entry) in SUPPORTED_EXTENSIONS or is_dicom(entry))),
        key=lambda entry: (natural_key(entry.name), entry.name),
    )
    if not files:
        raise PSFHInputError(
            f"{folder}: no image frames in the folder "
            f"(supported: {', '.join(SUPPORTED_EXTENSIONS)})"
        )
    files = files[:max_frames] if max_frames is not None else files
    images = []
    for file in files:
        image = load_image(file)
        first = images[0] if images else image
        if image.pixels.shape != first.pixels.shape or image.original_dtype != first.original_dtype:
            raise PSFHInputError(
                f"{file}: {image.pixels.shape[1]} x {image.pixels.shape[0]} {image.original_dtype} "
                f"pixels, but {first.path.name} is {first.pixels.shape[1]} x "
                f"{first.pixels.shape[0]} {first.original_dtype}; the frames of a sequence must "
                "share size and pixel type"
            )
        if (len(images) + 1) * image.pixels.size > MAX_CLIP_PIXELS:
            raise PSFHInputError(
                f"{folder}: more than {MAX_CLIP_PIXELS:,} pixels in {len(images)} frames; "
                "read fewer frames (max_frames)"
            )
        images.append(image)
    # Geometry is the sequence's only when every frame agrees on it.
    same_spatial = all(image.spatial == images[0].spatial for image in images)
    spatial = images[0].spatial if same_spatial else None
    spacings = {image.dicom.spacing_mm if image.dicom else None for image in images}
    spacing = spacings.pop() if len(spacings) == 1 else None
    return FrameSequence([image.pixels for image in images], [image.name for image in images],
                         None, spacing, f"folder of {len(images)} frames", folder,
                         images[0].original_dtype, spatial, None)
