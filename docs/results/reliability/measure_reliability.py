"""The reliability table (issue 31.5): odd and broken inputs through the demo's API, and the
fuzzed DICOMs and videos through its upload readers. Writes docs/RELIABILITY.md from the results.

    flock /tmp/psfh-heavy.lock python docs/results/reliability/measure_reliability.py
    # -> docs/results/reliability/reliability.json and docs/RELIABILITY.md
    python docs/results/reliability/measure_reliability.py --render docs/results/reliability/reliability.json
    # -> docs/RELIABILITY.md again from the committed results (after editing its wording)

1. Inputs through the API. Each input is made here, from the example frames (fixed seed), and
   sent to the app's "/segment" with the page's defaults (the embedded package's fold soup, flip
   TTA, the stability check), with gradio_client, like any API user. Outcomes: *refused* (the
   app's message, which must name the file), *flagged* (an AoP measured but withheld by the
   quality check), *no AoP* (none measured; the report says why), *measured* (an AoP given) or
   *crashed* (anything else: an error that is not the app's message, a hang).
2. The fuzz corpora of tests/test_fuzz.py (200 malformed DICOMs, 50 videos; seed 31), each read
   by a guarded worker process as the demo's upload and Run buttons read it: *read* or *refused*
   naming the file; a hang, a crash, a memory blow-up or another exception is *crashed*.

``--reduced`` (the test suite, tests/test_reliability.py): a tiny-random package without the
stability check, every bad file but one odd image and one real frame, and every tenth fuzz file
(or none, ``--fuzz-every 0``), written where told.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import struct
import zlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

import app  # noqa: E402
from psfh.io.images import as_uint8, load_image  # noqa: E402

OUT_JSON = Path(__file__).resolve().parent / "reliability.json"
DOC = ROOT / "docs" / "RELIABILITY.md"
EXAMPLES = sorted((ROOT / "examples" / "image_mha").glob("*.mha"))
LABELS = ROOT / "examples" / "label_mha"
SEED = 31
OUTCOMES = ("refused", "flagged", "no AoP", "measured", "crashed")
# The page's defaults; "n_folds" (the slider's default: every fold) and "mode" (the soup when the
# package has one, else the ensemble) are the package's.
REQUEST = {"tta": True, "stability_check": True}
# gradio_client's message for an exception that is not a gr.Error (hidden from the user): a crash.
HIDDEN_ERROR = "has not enabled verbose error reporting"


class Input(NamedTuple):
    """One input: its file, its group in the table and what it is, in words."""

    path: Path
    group: str
    what: str


def _png(folder: Path, name: str, pixels: np.ndarray) -> Path:
    path = folder / name
    Image.fromarray(pixels).save(path)
    return path


def _mha(folder: Path, name: str, array: np.ndarray) -> Path:
    path = folder / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height 8-bit grey pixels and that holds none."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def make_inputs(folder: Path, reduced: bool = False) -> list[Input]:
    """Every input of the table, written into ``folder`` (the same bytes on every run)."""
    import dicom_fixtures as fx

    rng = np.random.default_rng(SEED)
    frame = as_uint8(load_image(EXAMPLES[0]))  # 256 x 256
    h, w = frame.shape
    real_png = _png(folder, "frame.png", frame)
    bad = [
        (_png(folder, "constant.png", np.full((256, 256), 128, np.uint8)), "one grey level"),
        (_png(folder, "black.png", np.zeros((256, 256), np.uint8)), "all black"),
        (_png(folder, "tiny_3x3.png", frame[:3, :3].copy()), "3 x 3 pixels"),
        (folder / "unreadable.png", "random bytes named .png"),
        (folder / "truncated.png", "a PNG cut in half"),
        (folder / "empty.png", "an empty file"),
        (_mha(folder, "nan.mha", np.where(rng.random((h, w)) < 0.1, np.nan, frame).astype(np.float32)),
         "float pixels with NaN"),
        (_mha(folder, "volume_3d.mha", np.stack([frame] * 16)), "a 3-D volume, 16 slices"),
        (_mha(folder, "volume_4_slices.mha", np.stack([np.roll(frame, 8 * k, axis=0) for k in range(4)])),
         "a 3-D volume, 4 differing slices"),
        (folder / "animation.gif", "a GIF (not a supported type)"),
        (folder / "program.exe", "a Windows program"),
        (folder / "bomb.png", "a PNG header claiming 100000 x 100000 pixels"),
    ]
    (folder / "unreadable.png").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (folder / "truncated.png").write_bytes(real_png.read_bytes()[: real_png.stat().st_size // 2])
    (folder / "empty.png").write_bytes(b"")
    Image.fromarray(frame).save(folder / "animation.gif")
    (folder / "program.exe").write_bytes(b"MZ\x90\x00" + bytes(508))
    header_only_png(folder / "bomb.png", 100_000, 100_000)

    label = load_image(LABELS / EXAMPLES[0].name).pixels.astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    odd = [
        (_png(folder, "noise.png", rng.integers(0, 256, (h, w), dtype=np.uint8)), "uniform noise"),
        (_png(folder, "label_map.png", (label * 120).astype(np.uint8)), "a label map, not an image"),
        (_png(folder, "checkerboard.png", (((yy // 16 + xx // 16) % 2) * 255).astype(np.uint8)), "a checkerboard"),
        (_png(folder, "gradient.png", (xx * 255 // (w - 1)).astype(np.uint8)), "a grey ramp"),
        (_png(folder, "rotated.png", np.rot90(frame).copy()), "the frame turned 90 degrees"),
        (_png(folder, "upside_down.png", frame[::-1].copy()), "the frame upside down"),
        (_png(folder, "inverted.png", 255 - frame), "the frame's greys inverted"),
        (_png(folder, "cropped.png", frame[64:192, 64:192].copy()), "the frame's centre, 128 x 128"),
        (_png(folder, "tiled.png", np.tile(frame, (2, 2))), "the frame tiled 2 x 2"),
        (_png(folder, "too_dark.png", (frame * 0.08).astype(np.uint8)), "the frame at 8 % brightness"),
        (_png(folder, "saturated.png", np.clip(frame.astype(int) * 4, 0, 255).astype(np.uint8)),
         "the frame 4 x brighter, clipped"),
        (_png(folder, "stretched.png", np.asarray(Image.fromarray(frame).resize((2 * w, h)))),
         "the frame stretched 2 x sideways"),
    ]
    rgba = np.dstack([frame] * 3 + [np.full_like(frame, 200)])
    real = [(path, "a PSFHS test frame (MHA)") for path in EXAMPLES]
    real += [
        (_png(folder, "frame_16bit.png", frame.astype(np.uint16) * 257), "the frame as 16-bit PNG"),
        (_png(folder, "frame_rgba.png", rgba), "the frame as RGBA PNG"),
        (folder / "frame.jpg", "the frame as JPEG (quality 90)"),
        (fx.write_single_frame(folder / "frame.dcm"), "the frame as a single-frame ultrasound DICOM"),
    ]
    Image.fromarray(frame).save(folder / "frame.jpg", quality=90)
    groups = [("bad files", bad), ("odd images", odd), ("real frames", real)]
    if reduced:  # every bad file (no model runs for most), an odd image and a real frame
        groups = [("bad files", bad), ("odd images", odd[:1]), ("real frames", real[-1:])]
    return [Input(path, group, what) for group, items in groups for path, what in items]


def outcome_of(result) -> tuple[str, str]:
    """An API result (label PNG, label MHA, AoP, report) -> (outcome, detail)."""
    report = result[3]
    aop = report["aop"]
    if report["aop_deg"] is not None:
        return "measured", f"AoP {report['aop_deg']:.1f} deg"
    if aop.get("angle_deg") is not None:
        reasons = (report.get("quality") or {}).get("reasons") or []
        return "flagged", "; ".join(reasons)
    return "no AoP", aop.get("reason") or "not measured"


def page_request(model, reduced: bool = False) -> dict:
    """The page's default request for ``model`` (``reduced``: without the stability check)."""
    return {**REQUEST, "n_folds": len(model.folds), "mode": "soup" if model.soup else "ensemble",
            **({"stability_check": False} if reduced else {})}


def try_inputs(client: Client, inputs: list[Input], request: dict, timeout_s: float) -> list[dict]:
    """Each input through "/segment" -> a row: name, group, what, outcome, detail, seconds."""
    rows = []
    for item in inputs:
        start = time.perf_counter()
        job = client.submit(image=handle_file(item.path), **request, api_name="/segment")
        try:
            outcome, detail = outcome_of(job.result(timeout=timeout_s))
        except AppError as error:  # the app's message (a gr.Error), or a hidden exception: a crash
            message = str(error)
            outcome = "crashed" if HIDDEN_ERROR in message else "refused"
            named = item.path.name in message or message.startswith(item.path.name.split(".")[0])
            detail = message if named or outcome == "crashed" else f"(Gradio's upload check, no file named) {message}"
        except TimeoutError:
            outcome, detail = "crashed", f"no answer in {timeout_s:g} s"
        except Exception as error:  # noqa: BLE001 - any other failure is what the table counts
            outcome, detail = "crashed", f"{type(error).__name__}: {error}"
        rows.append({"name": item.path.name, "group": item.group, "what": item.what, "outcome": outcome,
                     "detail": " ".join(detail.split())[:300], "seconds": round(time.perf_counter() - start, 2)})
        print(f"{item.path.name:22s} {outcome:9s} {rows[-1]['seconds']:7.2f} s  {rows[-1]['detail'][:90]}", flush=True)
    return rows


def load_test_fuzz():
    """tests/test_fuzz.py as a module: its corpora and its guarded reader (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("test_fuzz", ROOT / "tests" / "test_fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fuzz_rows(folder: Path, every: int) -> list[dict]:
    """Every ``every``-th file of test_fuzz's DICOM and video corpora, read as the demo reads an
    upload -> one row per corpus: files, read, refused (naming the file), crashed, seconds."""
    fuzz = load_test_fuzz()
    rows = []
    for name, make in (("fuzzed DICOMs", fuzz.make_dicom_corpus), ("fuzzed videos", fuzz.make_video_corpus)):
        corpus = make(folder / name.replace(" ", "_"))[::every]
        start = time.perf_counter()
        results = fuzz.read_guarded([path for path, _ in corpus], "app", folder / f"{name.replace(' ', '_')}.log")
        bad = fuzz.problems(results, corpus, lambda path: path.name)
        outcomes = [result["outcome"] for result in results.values()]
        rows.append({"group": name, "files": len(corpus), "read": outcomes.count("ok"),
                     "refused": outcomes.count("refused") - sum("refused without naming" in line for line in bad),
                     "crashed": len(bad), "problems": bad,
                     "slowest_s": round(max(result.get("seconds", 0.0) for result in results.values()), 3),
                     "seconds": round(time.perf_counter() - start, 1)})
        print({key: value for key, value in rows[-1].items() if key != "problems"}, flush=True)
    return rows


def tiny_model():
    """A tiny-random package with three folds (the suite's stand-in: fast, garbage outlines)."""
    import torch

    from psfh.model.lora import make_lora_config
    from psfh.model.psfh_model import PSFHModel

    torch.manual_seed(0)
    return PSFHModel.from_base("tiny-random", ["fold_0", "fold_1", "fold_2"],
                               make_lora_config(encoder_rank=4, decoder_rank=4), device="cpu")


# ------------------------------------------------------------------------------- the document


def group_table(rows: list[dict], fuzz: list[dict]) -> str:
    """The summary table: per group, inputs tried and each outcome, and the time they took."""
    lines = ["| inputs | tried | refused | flagged | no AoP | measured | read | crashed | time (s): total, slowest |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for group in dict.fromkeys(row["group"] for row in rows):
        mine = [row for row in rows if row["group"] == group]
        counts = {outcome: sum(row["outcome"] == outcome for row in mine) for outcome in OUTCOMES}
        seconds = [row["seconds"] for row in mine]
        lines.append(f"| {group} (API) | {len(mine)} | {counts['refused']} | {counts['flagged']} | "
                     f"{counts['no AoP']} | {counts['measured']} | - | {counts['crashed']} | "
                     f"{sum(seconds):.1f}, {max(seconds):.1f} |")
    for row in fuzz:
        lines.append(f"| {row['group']} (upload) | {row['files']} | {row['refused']} | - | - | - | {row['read']} | "
                     f"{row['crashed']} | {row['seconds']:.1f}, {row['slowest_s']:.1f} |")
    return "\n".join(lines)


def input_table(rows: list[dict]) -> str:
    lines = ["| input | what it is | outcome | time (s) | the app's words |", "| --- | --- | --- | ---: | --- |"]
    for row in rows:
        detail = row["detail"].replace("|", "/")
        lines.append(f"| `{row['name']}` | {row['what']} | {row['outcome']} | {row['seconds']:.2f} | {detail} |")
    return "\n".join(lines)


def names(rows: list[dict]) -> str:
    return ", ".join(f"`{row['name']}`" for row in rows) or "none"


def notes(rows: list[dict]) -> str:
    """What stands out, worked out from the rows (nothing typed by hand): bad files that were not
    refused, refusals that do not name the file, odd images given an AoP, real frames flagged,
    and whether the real frame's copies in other formats got the same outcome as the frame."""
    def group(name: str) -> list[dict]:
        return [row for row in rows if row["group"] == name]

    bad, odd, real = group("bad files"), group("odd images"), group("real frames")
    lines = []
    kept = [row for row in bad if row["outcome"] != "refused"]
    lines.append(f"- Bad files not refused: {len(kept)} of {len(bad)}"
                 + "".join(f"; `{row['name']}` ({row['what']}) was {row['outcome']}: {row['detail']}" for row in kept)
                 + ".")
    unnamed = [row for row in bad if row["detail"].startswith("(Gradio's upload check")]
    lines.append(f"- Refused by Gradio's own file-type check, whose message does not name the file: {names(unnamed)}.")
    caught_not = [row for row in odd if row["outcome"] == "measured"]
    lines.append(f"- Odd images given an AoP (not caught): {len(caught_not)} of {len(odd)}: {names(caught_not)}.")
    flagged = [row for row in real if row["outcome"] == "flagged"]
    lines.append(f"- Real frames flagged: {len(flagged)} of {len(real)}: {names(flagged)}.")
    copies = [row for row in real if row["what"].startswith("the frame as")]
    if real and copies:  # make_inputs writes the copies from the first real frame
        source = real[0]
        same = [row for row in copies if row["outcome"] == source["outcome"]]
        lines.append(f"- The copies of `{source['name']}` in other formats ({names(copies)}): {len(same)} of "
                     f"{len(copies)} got its outcome ({source['outcome']}).")
    return "\n".join(lines)


def render(result: dict) -> str:
    """docs/RELIABILITY.md from a result of :func:`main` (the committed reliability.json)."""
    fuzz_every = result["fuzz_every"]
    fuzz_words = ("every file" if fuzz_every == 1 else f"every {fuzz_every}th file") if fuzz_every else "none"
    return f"""# Reliability: what odd and broken inputs do

[README](../README.md) · [Usage](USAGE.md) · [Trust and limits](TRUST.md) ·
[Hugging Face Space](SPACE.md) · **Reliability**

Generated by `docs/results/reliability/measure_reliability.py` from its run
(`{result['command']}`, {result['date']}, {result['machine']}); the numbers are in
`docs/results/reliability/reliability.json`. Do not edit this file by hand: run the script again
(`--render docs/results/reliability/reliability.json` writes it from those numbers without a run).
The test suite runs the same script in a reduced form (a tiny-random package, fewer inputs;
`tests/test_reliability.py`) and checks that this file is the rendering of that JSON.

Each input is sent to the demo's API (`/segment`, the page's defaults: {result['model']}) like
any API user's. **refused**: a message for the user (the app's, naming the file, or Gradio's
upload check's); **flagged**: an AoP was measured but withheld by the quality check
([TRUST.md](TRUST.md)); **no AoP**: none measured, the report says why; **measured**: an AoP
given; **crashed**: anything else (an error that is not the app's message, a hang). The fuzzed
files (tests/test_fuzz.py's corpora, seed 31; {fuzz_words}) are read in guarded worker processes
as the demo's upload and Run buttons read them: **read** or **refused** naming the file; a hang,
a crash, a memory blow-up or another exception counts as **crashed**.

{group_table(result['inputs'], result['fuzz'])}

A "measured" odd image is not a success: it is an AoP the check did not catch (look at the
outline; [TRUST.md](TRUST.md), "What a flag means").

{notes(result['inputs'])}

## Each input

{input_table(result['inputs'])}
"""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true", help="tiny-random package, fewer inputs (the suite)")
    parser.add_argument("--fuzz-every", type=int, default=None,
                        help="read every Nth fuzz file; 0: none (default 1, reduced 10)")
    parser.add_argument("--out", type=Path, default=OUT_JSON, help="the results JSON")
    parser.add_argument("--doc", type=Path, default=DOC, help="the document written from them")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds an input may take")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="only write --doc again from this results JSON (no run)")
    args = parser.parse_args(argv)
    if args.render is not None:
        result = json.loads(args.render.read_text())
        args.doc.write_text(render(result))
        print(f"wrote {args.doc} from {args.render}")
        return result
    every = args.fuzz_every if args.fuzz_every is not None else (10 if args.reduced else 1)
    began = time.perf_counter()
    if args.reduced:
        model, model_words = tiny_model(), "a tiny-random package"
    else:
        from psfh.model.psfh_model import PSFHModel

        model = PSFHModel.from_pretrained(device="cpu")
        model_words = "the embedded package's fold soup, flip TTA, the stability check"
    demo = app.build_demo(model)
    url = app.launch_locally(demo)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            client = Client(url, verbose=False)
            inputs = make_inputs(Path(tmp), reduced=args.reduced)
            rows = try_inputs(client, inputs, page_request(model, args.reduced), args.timeout)
            fuzz = fuzz_rows(Path(tmp), every) if every else []
    finally:
        demo.close()
    given, kept = list(argv if argv is not None else sys.argv[1:]), []
    while given:  # the command, without where it wrote
        arg = given.pop(0)
        if arg in ("--out", "--doc"):
            given = given[1:]
        elif not arg.startswith(("--out=", "--doc=")):
            kept.append(arg)
    command = " ".join(["python docs/results/reliability/measure_reliability.py", *kept])
    result = {"command": command, "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "machine": f"{os.cpu_count()} CPU cores", "model": model_words,
              "request": page_request(model, args.reduced),
              "fuzz_every": every, "inputs": rows, "fuzz": fuzz, "wall_s": round(time.perf_counter() - began, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.doc.write_text(render(result))
    print(group_table(rows, fuzz))
    print(f"wrote {args.out} and {args.doc} in {result['wall_s']} s", flush=True)
    return result


if __name__ == "__main__":
    main()
