"""Fuzzing the readers (issue 31, part 4): malformed DICOMs and videos, and decompression bombs.

The corpora are made here, at test time, from the example frames and a fixed seed (nothing is
committed): 200 DICOMs (byte flips, truncations, wrong element lengths, missing or contradictory
Rows / Columns / Number of Frames / Bits Allocated / ..., huge declared sizes) and 50 videos
(byte flips, truncations, headers declaring huge frame counts or sizes). Each file is read in a
separate worker process, as psfh's commands read it (``load_image`` or, for a clip,
``read_sequence``) and as the demo's upload does (``app.describe_upload``, ``app.describe_clip``,
and what the Run buttons read: ``app.read_image``, ``app.check_clip`` + ``read_sequence`` with the
demo's frame limit), under

- a time limit per file (:data:`SECONDS_PER_FILE`): a file that takes longer is a hang;
- an address-space limit (:data:`MEMORY_MB` beyond what the worker holds after its imports): an
  allocation past it is a MemoryError, or kills the worker;
- the worker dying (a crash in a decoder) is seen, named with its file, and the worker restarted.

A file passes when it is read (a flip can land in an element psfh never reads) or refused with
:class:`~psfh.core.errors.PSFHInputError` whose message names the file; any other exception, a
hang, a crash or a memory error fails the test with the file and what happened.
The full corpora are the slow tier (about two minutes); the quick tier reads every tenth file.
"""

from __future__ import annotations

import copy
import io as _io
import json
import os
import random
import selectors
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import dicom_fixtures as fx
import numpy as np
import pytest
from PIL import Image
from pydicom import uid
from pydicom.datadict import tag_for_keyword as tag_for
from pydicom.dataelem import DataElement

from psfh.core.errors import PSFHInputError
from psfh.io import dicom as dicom_io
from psfh.io.images import load_image
from psfh.io.sequence import read_sequence

ROOT = Path(__file__).resolve().parents[1]
SEED = 31  # the number: the corpora are the same on every run
DICOM_COUNT = 200
VIDEO_COUNT = 50
SECONDS_PER_FILE = 30.0  # every base file reads in well under a second; a hang shows at once
MEMORY_MB = 1536  # address space a worker may add after its imports while reading one file
FIXED_UID = "1.2.826.0.1.3680043.10.1045.31"  # fixed UIDs keep the bytes, so the flips, stable


# --- the DICOM corpus ------------------------------------------------------------------------


def _fixed(ds):
    """The fixtures' dataset with fixed UIDs (they generate random ones), so a base file's bytes
    are the same on every run."""
    for n, keyword in enumerate(("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")):
        setattr(ds, keyword, f"{FIXED_UID}.{n + 1}")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def dicom_bases() -> dict:
    """The well-formed datasets every malformed DICOM starts from: a single uint8 frame, a 6-frame
    cine, a 4-frame RLE cine, a 16-bit frame and a JPEG Baseline frame."""
    frames = fx.cine_frames(6)
    single = fx.set_pixels(_fixed(fx.dataset()), frames[0])
    single.PixelSpacing = list(fx.PIXEL_SPACING_MM)
    cine = fx.set_pixels(_fixed(fx.dataset(uid.UltrasoundMultiFrameImageStorage)), frames)
    cine.FrameTime = fx.FRAME_TIME_MS
    cine.FrameIncrementPointer = 0x00181063
    rle = fx.set_pixels(_fixed(fx.dataset(uid.UltrasoundMultiFrameImageStorage)), frames[:4])
    rle.compress(uid.RLELossless, frames[:4], generate_instance_uid=False)
    wide = fx.set_pixels(_fixed(fx.dataset()), frames[1].astype(np.uint16) * 257)
    jpeg = _fixed(fx.dataset(syntax=uid.JPEGBaseline8Bit))
    fx.set_pixels(jpeg, frames[2])
    buffer = _io.BytesIO()
    Image.fromarray(frames[2]).save(buffer, format="JPEG", quality=90)
    from pydicom.encaps import encapsulate

    jpeg.PixelData = encapsulate([buffer.getvalue()])
    jpeg["PixelData"].VR = "OB"
    return {"single": single, "cine": cine, "rle": rle, "u16": wide, "jpeg": jpeg}


def _bytes(ds) -> bytes:
    buffer = _io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# Elements whose length fields the "length" mutation rewrites: (group, element, VR).
LENGTH_TARGETS = [(0x0028, 0x0010, b"US"), (0x0028, 0x0011, b"US"), (0x0028, 0x0008, b"IS"),
                  (0x0028, 0x0100, b"US"), (0x0028, 0x0002, b"US"), (0x0028, 0x0004, b"CS"),
                  (0x0002, 0x0010, b"UI"), (0x0008, 0x0060, b"CS"), (0x0028, 0x0030, b"DS"),
                  (0x7FE0, 0x0010, b"OB"), (0x7FE0, 0x0010, b"OW"), (0x0010, 0x0010, b"PN")]
MISSING = ["Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored", "SamplesPerPixel",
           "PhotometricInterpretation", "PixelRepresentation", "PixelData", "HighBit"]
CONTRADICTIONS = [
    ("Rows", lambda ds: int(ds.Rows) + 1), ("Rows", lambda ds: int(ds.Rows) * 2),
    ("Columns", lambda ds: int(ds.Columns) - 1), ("Columns", lambda ds: 0), ("Rows", lambda ds: 7),
    ("NumberOfFrames", lambda ds: 0), ("NumberOfFrames", lambda ds: -3), ("NumberOfFrames", lambda ds: 7),
    ("NumberOfFrames", lambda ds: "x1"), ("NumberOfFrames", lambda ds: 2),
    ("BitsAllocated", lambda ds: 16), ("BitsAllocated", lambda ds: 1), ("BitsAllocated", lambda ds: 12),
    ("BitsAllocated", lambda ds: 32), ("BitsAllocated", lambda ds: 64), ("BitsAllocated", lambda ds: 0),
    ("BitsStored", lambda ds: 40), ("BitsStored", lambda ds: 0), ("HighBit", lambda ds: 30),
    ("SamplesPerPixel", lambda ds: 3), ("SamplesPerPixel", lambda ds: 0), ("SamplesPerPixel", lambda ds: 4),
    ("PixelRepresentation", lambda ds: 2), ("PhotometricInterpretation", lambda ds: "RGB"),
    ("PhotometricInterpretation", lambda ds: "PALETTE COLOR"), ("PhotometricInterpretation", lambda ds: "YBR_FULL"),
    ("PlanarConfiguration", lambda ds: 7), ("FrameTime", lambda ds: "-5"), ("PixelSpacing", lambda ds: ["0", "nan"]),
    ("FrameTimeVector", lambda ds: ["1", "inf", "-2"]),
]
HUGE = [
    {"Rows": 65535, "Columns": 65535}, {"Rows": 6000, "Columns": 6000}, {"NumberOfFrames": 100000},
    {"NumberOfFrames": 2**31 - 1}, {"Rows": 6000, "Columns": 6000, "NumberOfFrames": 6},
    {"Rows": 4000, "Columns": 3000, "NumberOfFrames": 20}, {"Columns": 65535},
    {"Rows": 256, "Columns": 256, "NumberOfFrames": 3800}, {"Rows": 8, "Columns": 65535},
    {"Rows": 65535, "Columns": 8, "NumberOfFrames": 1000},
    {"NumberOfFrames": 100000, "Rows": 16, "Columns": 16},
]


def _mutate_bytes(data: bytes, kind: str, rng: random.Random) -> bytes:
    data = bytearray(data)
    if kind == "flip":
        header = rng.random() < 0.5  # half of the flips land in the first 2 kB: the header elements
        for _ in range(rng.randint(1, 16)):
            position = rng.randrange(132, min(len(data), 2048) if header else len(data))
            data[position] ^= rng.randrange(1, 256)
        return bytes(data)
    if kind == "truncate":
        return bytes(data[: rng.randrange(0, len(data))])
    # "length": rewrite the length field of one element found in the bytes
    found = []
    for group, element, vr in LENGTH_TARGETS:
        start = 0
        pattern = struct.pack("<HH", group, element) + vr
        while (at := data.find(pattern, start)) >= 0:
            found.append((at, vr))
            start = at + 1
    at, vr = rng.choice(found)
    if vr in (b"OB", b"OW"):  # 2 reserved bytes, then a 4-byte length
        value = rng.choice([0, 1, 3, 0xFFFFFFFF, 0x7FFFFFF0, len(data), rng.randrange(0, 2**32)])
        struct.pack_into("<I", data, at + 8, value)
    else:
        value = rng.choice([0, 1, 3, 0xFFFF, 0x7FFF, rng.randrange(0, 2**16)])
        struct.pack_into("<H", data, at + 6, value)
    return bytes(data)


def _mutate_dataset(ds, kind: str, rng: random.Random):
    ds = copy.deepcopy(ds)  # Dataset.copy() is shallow: a deletion would reach the base
    if kind == "missing":
        keyword = rng.choice([keyword for keyword in MISSING if keyword in ds])
        delattr(ds, keyword)
        return ds, f"no {keyword}"
    if kind == "contradict":
        keyword, value = rng.choice(CONTRADICTIONS)
        try:
            setattr(ds, keyword, value(ds))
        except ValueError:  # pydicom refuses "x1" as an IS: write it with the wrong VR instead
            ds[tag_for(keyword)] = DataElement(tag_for(keyword), "LO", value(ds))
        return ds, f"{keyword}={getattr(ds, keyword)!r}"
    values = rng.choice(HUGE)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds, ", ".join(f"{k}={v}" for k, v in values.items())


DICOM_KINDS = {"flip": 50, "truncate": 30, "length": 30, "missing": 30, "contradict": 30, "huge": 30}


def make_dicom_corpus(folder: Path, seed: int = SEED) -> list[tuple[Path, str]]:
    """:data:`DICOM_COUNT` malformed DICOMs in ``folder``: (path, what was done), the same on every run."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    bases = dicom_bases()
    encoded = {name: _bytes(ds) for name, ds in bases.items()}
    corpus = []
    for kind, count in DICOM_KINDS.items():
        for n in range(count):
            base = rng.choice(sorted(bases))
            if kind in ("flip", "truncate", "length"):
                data, what = _mutate_bytes(encoded[base], kind, rng), kind
            else:
                ds, what = _mutate_dataset(bases[base], kind, rng)
                data = _bytes(ds)
            path = folder / f"{kind}_{n:03d}_{base}.dcm"
            path.write_bytes(data)
            corpus.append((path, f"{base}: {what}"))
    assert len(corpus) == DICOM_COUNT
    return corpus


# --- the video corpus ------------------------------------------------------------------------


def write_video(path: Path, frames: np.ndarray, codec: str, pix_fmt: str) -> Path:
    """N x H x W uint8 frames as a video, bit-exact (no random Matroska segment id, no encoder
    version), so the same frames give the same bytes on every run."""
    import av

    with av.open(str(path), mode="w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=25, options={"flags": "+bitexact"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_bases(folder: Path) -> dict[str, bytes]:
    """Well-formed 6-frame clips: MPEG-4 in .mp4 and .mov, lossless FFV1 in .mkv, Motion JPEG in .avi."""
    frames = fx.cine_frames(6)
    folder.mkdir(parents=True, exist_ok=True)
    made = {
        "mp4": write_video(folder / "base.mp4", frames, "mpeg4", "yuv420p"),
        "mov": write_video(folder / "base.mov", frames, "mpeg4", "yuv420p"),
        "mkv": write_video(folder / "base.mkv", frames, "ffv1", "gray"),
        "avi": write_video(folder / "base.avi", frames, "mjpeg", "yuvj420p"),
    }
    return {name: path.read_bytes() for name, path in made.items()}


# Header fields a "declare" mutation rewrites: (container, box or chunk, byte offset after its
# 4-character name, struct format). AVI: avih's total frames, width, height; strh's length;
# strf's width and height. MP4 / MOV: mvhd's and mdhd's duration, tkhd's width and height
# (16.16 fixed point), stsz's sample count. Matroska: PixelWidth / PixelHeight (1-byte sizes).
DECLARED_FIELDS = {
    "avi": [(b"avih", 20, "<I"), (b"avih", 36, "<I"), (b"avih", 40, "<I"), (b"strh", 36, "<I"),
            (b"strf", 8, "<i"), (b"strf", 12, "<i")],
    "mp4": [(b"mvhd", 20, ">I"), (b"mdhd", 20, ">I"), (b"tkhd", 80, ">I"), (b"tkhd", 84, ">I"),
            (b"stsz", 12, ">I")],
    "mkv": [(b"\xb0\x82", 0, ">H"), (b"\xba\x82", 0, ">H")],
}
DECLARED_VALUES = [100000, 0xFFFFFFFF, 0x7FFFFFFF, 65535 << 16, 1 << 24, 0]


def _declare(data: bytes, container: str, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(data)
    name, offset, layout = rng.choice(DECLARED_FIELDS[container])
    at = data.find(name) + len(name) + offset
    value = rng.choice(DECLARED_VALUES) % (2 ** (8 * struct.calcsize(layout)))
    if layout == "<i":
        value = value if value < 2**31 else value - 2**32
    struct.pack_into(layout, data, at, value)
    return bytes(data), f"{name!r}+{offset}={value}"


VIDEO_KINDS = {"flip": 20, "truncate": 15, "declare": 15}


def make_video_corpus(folder: Path, seed: int = SEED) -> list[tuple[Path, str]]:
    """:data:`VIDEO_COUNT` malformed videos in ``folder``: (path, what was done), the same on every run."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    bases = video_bases(folder / "bases")
    corpus = []
    for kind, count in VIDEO_KINDS.items():
        for n in range(count):
            if kind == "declare":
                base = rng.choice(sorted(DECLARED_FIELDS))
                data, what = _declare(bases[base], base, rng)
            else:
                base = rng.choice(sorted(bases))
                data, what = _mutate_bytes(bases[base], kind, rng), kind
            path = folder / f"{kind}_{n:03d}.{base}"
            path.write_bytes(data)
            corpus.append((path, f"{base}: {what}"))
    assert len(corpus) == VIDEO_COUNT
    return corpus


# --- reading each file in a guarded worker ---------------------------------------------------

WORKER = r'''
import json, os, resource, sys, time, traceback, warnings
warnings.simplefilter("ignore")
config = json.loads(sys.argv[1])
sys.path.insert(0, config["root"])
from pathlib import Path
from psfh.core.errors import PSFHInputError
from psfh.io.images import load_image
from psfh.io.sequence import is_sequence, read_sequence
if config["mode"] == "app":
    import app

def read_cli(path):
    """What psfh-predict and psfh-cine read: the whole clip, or the image."""
    try:
        if is_sequence(path, folders=False):
            return "ok", f"{len(read_sequence(path))} frames"
        return "ok", "image %s" % (load_image(path).pixels.shape,)
    except PSFHInputError as error:
        return "refused", str(error)

def read_app(path):
    """The demo's uploads: the status lines shown on upload, then what each tab's Run reads."""
    shown = [app.describe_upload(str(path))[1], app.describe_clip(str(path))]
    try:
        if is_sequence(path, folders=False):
            app.check_clip(path)
            read_sequence(path, max_frames=app.CLIP_MAX_FRAMES)
        else:
            app.read_image(path)
        return "ok", " | ".join(shown)
    except PSFHInputError as error:
        return "refused", str(app._user_error(error, path).message) + " | " + " | ".join(shown)

def vm_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

read = read_app if config["mode"] == "app" else read_cli
faults = config.get("faults", {})  # the guard's own test: misbehaviour injected by file name
resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + config["memory_mb"] * 2**20, resource.RLIM_INFINITY))
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    path = Path(line.rstrip("\n"))
    start = time.perf_counter()
    try:
        fault = faults.get(path.name)
        if fault == "sleep":
            time.sleep(3600)
        elif fault == "exit":
            os._exit(9)
        elif fault == "allocate":
            bytearray(3 * 2**30)
        outcome, message = read(path)
    except MemoryError:
        outcome, message = "memory", "MemoryError"
    except BaseException as error:
        outcome, message = "error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
    print(json.dumps({"outcome": outcome, "message": message, "seconds": time.perf_counter() - start,
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
'''


class _Worker:
    """One reading process: a path per line in, one JSON line per path out."""

    def __init__(self, mode: str, memory_mb: int, log: Path, faults: dict | None = None):
        env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.log = open(log, "ab")
        config = {"mode": mode, "memory_mb": memory_mb, "root": str(ROOT), "faults": faults or {}}
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT, env=env)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)
        self.buffer = b""
        ready = self.line(120.0)  # the demo's imports (gradio, torch) take a while on a busy machine
        if ready is None or not json.loads(ready).get("ready"):
            self.close()
            raise RuntimeError(f"the reading worker did not start (log: {log})")

    def line(self, timeout: float) -> str | None:
        """The next line, or None after ``timeout`` seconds or when the worker died."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                return None
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:  # end of output: the worker is gone (or going)
                self.process.wait(timeout=30)
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def read(self, path: Path, timeout: float) -> dict:
        try:
            self.process.stdin.write(f"{path}\n".encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            pass
        answer = self.line(timeout)
        if answer is not None:
            return json.loads(answer)
        if self.process.poll() is None:
            return {"outcome": "hang", "message": f"no answer in {timeout:g} s"}
        return {"outcome": "crash", "message": f"the worker died (exit status {self.process.returncode})"}

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


def read_guarded(paths: list[Path], mode: str, log: Path, timeout: float = SECONDS_PER_FILE,
                 memory_mb: int = MEMORY_MB, faults: dict | None = None) -> dict[Path, dict]:
    """{path: {"outcome": ok / refused / error / memory / hang / crash, "message", ...}}, each path read
    by a worker process (``mode`` "cli": psfh's readers; "app": the demo's upload handlers) that is
    replaced after a hang or a crash."""
    results, worker = {}, None
    try:
        for path in paths:
            worker = worker or _Worker(mode, memory_mb, log, faults)
            results[path] = worker.read(path, timeout)
            if results[path]["outcome"] in ("hang", "crash"):
                worker.close()
                worker = None
    finally:
        if worker is not None:
            worker.close()
    return results


def problems(results: dict[Path, dict], corpus: list[tuple[Path, str]], name_of) -> list[str]:
    """What went wrong, one line per file: anything but a read or a refusal naming the file."""
    what = dict(corpus)
    bad = []
    for path, result in results.items():
        if result["outcome"] == "ok":
            continue
        if result["outcome"] == "refused" and name_of(path) in result["message"]:
            continue
        if result["outcome"] == "refused":
            result = {**result, "outcome": "refused without naming the file"}
        bad.append(f"{path.name} ({what[path]}): {result['outcome']}: {result['message'][:600]}")
    return bad


def summary(results: dict[Path, dict]) -> dict:
    outcomes = [r["outcome"] for r in results.values()]
    seconds = [r.get("seconds", 0.0) for r in results.values()]
    return {"files": len(results), **{k: outcomes.count(k) for k in sorted(set(outcomes))},
            "slowest_s": round(max(seconds), 3), "max_rss_mb": round(max(r.get("max_rss_mb", 0) for r in
                                                                         results.values()), 1)}


def check_corpus(corpus, mode, tmp_path, record: str | None = None) -> dict:
    paths = [path for path, _ in corpus]
    results = read_guarded(paths, mode, tmp_path / f"worker_{mode}.log")
    name_of = (lambda path: path.name) if mode == "app" else str
    bad = problems(results, corpus, name_of)
    counts = summary(results)
    if record:  # the slow tier keeps its counts for docs/results (PSFH_FUZZ_RECORD=folder)
        folder = os.environ.get("PSFH_FUZZ_RECORD")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            by_kind = {}
            for path, what in corpus:  # outcomes per mutation kind ("flip", "truncate", ...)
                kind = by_kind.setdefault(path.name.split("_")[0], {})
                kind[results[path]["outcome"]] = kind.get(results[path]["outcome"], 0) + 1
            (Path(folder) / f"fuzz_{record}_{mode}.json").write_text(json.dumps(
                {"seed": SEED, "seconds_per_file_limit": SECONDS_PER_FILE, "memory_mb_limit": MEMORY_MB,
                 "summary": counts, "by_kind": by_kind}, indent=1) + "\n")
    assert not bad, f"{len(bad)} of {len(paths)} files ({counts}):\n" + "\n".join(bad)
    return counts


@pytest.fixture(scope="module")
def dicom_corpus(tmp_path_factory):
    return make_dicom_corpus(tmp_path_factory.mktemp("fuzz_dicom"))


@pytest.fixture(scope="module")
def video_corpus(tmp_path_factory):
    return make_video_corpus(tmp_path_factory.mktemp("fuzz_video"))


# --- the corpora -----------------------------------------------------------------------------


def test_the_corpora_are_the_same_on_every_run(tmp_path, dicom_corpus, video_corpus):
    again = make_dicom_corpus(tmp_path / "dicom")
    assert [p.read_bytes() for p, _ in again] == [p.read_bytes() for p, _ in dicom_corpus]
    assert [w for _, w in again] == [w for _, w in dicom_corpus]
    kinds = {path.name.split("_")[0] for path, _ in dicom_corpus}
    assert kinds == set(DICOM_KINDS)
    # every file differs from its base: the mutations did something
    bases = {name: _bytes(ds) for name, ds in dicom_bases().items()}
    assert all(path.read_bytes() != bases[path.stem.split("_")[-1]] for path, _ in dicom_corpus)
    videos = make_video_corpus(tmp_path / "video")
    assert [p.read_bytes() for p, _ in videos] == [p.read_bytes() for p, _ in video_corpus]


@pytest.mark.parametrize("mode", ["cli", "app"])
def test_every_tenth_malformed_dicom_and_video_is_read_or_refused_naming_the_file(dicom_corpus, video_corpus,
                                                                                  tmp_path, mode):
    """The quick tier's share of the corpora (25 files, one worker per mode)."""
    counts = check_corpus(dicom_corpus[::10] + video_corpus[::10], mode, tmp_path)
    assert counts["files"] == 25


@pytest.mark.slow  # 250 files, each read twice by worker processes (about two minutes with the demo's imports)
@pytest.mark.parametrize("mode", ["cli", "app"])
def test_200_malformed_dicoms_are_read_or_refused_naming_the_file(dicom_corpus, tmp_path, mode):
    counts = check_corpus(dicom_corpus, mode, tmp_path, record="dicom")
    assert counts["files"] == DICOM_COUNT


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cli", "app"])
def test_50_malformed_videos_are_read_or_refused_naming_the_file(video_corpus, tmp_path, mode):
    counts = check_corpus(video_corpus, mode, tmp_path, record="video")
    assert counts["files"] == VIDEO_COUNT


def test_the_guard_sees_hangs_crashes_and_memory_blowups(tmp_path):
    """The worker's limits work: a read that sleeps, kills the worker or allocates past the memory
    limit is reported as such, and the files after it are still read by a new worker."""
    good = fx.write_single_frame(tmp_path / "good.dcm")
    faults = {"hang.dcm": "sleep", "crash.dcm": "exit", "memory.dcm": "allocate"}
    paths = [tmp_path / name for name in faults] + [good]
    for path in paths[:3]:
        path.write_bytes(good.read_bytes())
    results = read_guarded(paths, "cli", tmp_path / "log", timeout=2.0, memory_mb=512, faults=faults)
    assert [results[p]["outcome"] for p in paths] == ["hang", "crash", "memory", "ok"]


# --- refused before decoding -----------------------------------------------------------------


def test_a_declared_100000_frame_dicom_is_refused_before_decoding(tmp_path, monkeypatch):
    """Compressed (RLE) pixel data has no length to check against the header: the declared size
    alone refuses it, before any frame is decoded."""
    ds = dicom_bases()["rle"]
    ds.NumberOfFrames = 100000
    path = fx.save(ds, tmp_path / "long.dcm")
    monkeypatch.setattr(dicom_io, "_decode", lambda *a: pytest.fail("decoded a refused clip"))
    start = time.perf_counter()
    with pytest.raises(PSFHInputError, match=r"long\.dcm: 100000 frames of 256 x 256"):
        read_sequence(path)
    assert time.perf_counter() - start < 5.0
    monkeypatch.undo()
    assert len(read_sequence(path, max_frames=2).frames) == 2  # the first frames of it can be read


def test_a_declared_100000_frame_video_is_refused_before_decoding(tmp_path):
    """A video whose header declares 100000 frames (an AVI's frame counts patched; it holds 6)."""
    path = write_video(tmp_path / "long.avi", fx.cine_frames(6), "mjpeg", "yuvj420p")
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, data.find(b"avih") + 8 + 16, 100000)  # dwTotalFrames
    struct.pack_into("<I", data, data.find(b"strh") + 8 + 32, 100000)  # dwLength
    path.write_bytes(bytes(data))
    start = time.perf_counter()
    with pytest.raises(PSFHInputError, match=r"long\.avi: declares 100000 frames of 256 x 256"):
        read_sequence(path)
    assert time.perf_counter() - start < 5.0
    assert len(read_sequence(path, max_frames=3).frames) == 3


def _png(width: int, height: int, mode: int = 0, depth: int = 8) -> bytes:
    """A PNG of width x height whose pixel data is a few kB of zlib: a decompression bomb (its
    rows, all zero, inflate to the full declared size)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[mode]
    row = b"\x00" * (1 + width * channels * depth // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, mode, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_a_png_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(20000, 20000))  # 400 M pixels from a 400 kB file
    assert path.stat().st_size < 1_000_000
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a refused image"))
    with pytest.raises(PSFHInputError, match=r"bomb\.png: .*too large|bomb\.png: image is 20000 x 20000"):
        load_image(path)


def test_a_tiff_declaring_a_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    """A TIFF whose one strip (a few bytes) claims 30000 x 30000 pixels."""
    entries = [(256, 4, 1, 30000), (257, 4, 1, 30000), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, 30000), (279, 4, 1, 900_000_000)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, count)
        + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, count, value in entries) + struct.pack("<I", 0)
    path = tmp_path / "bomb.tif"
    path.write_bytes(b"II*\x00" + struct.pack("<I", 16) + b"\x00" * 8 + ifd)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a refused image"))
    with pytest.raises(PSFHInputError, match=r"bomb\.tif: .*(too large|30000 x 30000)"):
        load_image(path)


@pytest.mark.parametrize("header, message", [
    ("NDims = 2\nDimSize = 6000 6000\nElementType = MET_DOUBLE\nElementNumberOfChannels = 4\n",
     r"6000 x 6000 pixels of 4 x 8 bytes"),
    ("NDims = 2\nDimSize = 3000 3000\nElementType = MET_FLOAT\nElementNumberOfChannels = 1000\n",
     r"1000 components"),
    ("NDims = 3\nDimSize = 6000 6000 4\nElementType = MET_DOUBLE\n", r"6000 x 6000 pixels of 4 x 8 bytes"),
])
def test_an_mha_declaring_too_many_bytes_is_refused_from_its_header(tmp_path, header, message):
    """Within the pixel limit, but the pixels' bytes (channels x type size) are far beyond a frame."""
    path = tmp_path / "wide.mha"
    path.write_text("ObjectType = Image\n" + header + "CompressedData = True\nElementDataFile = LOCAL\n")
    with pytest.raises(PSFHInputError, match=r"wide\.mha: " + message):
        load_image(path)
