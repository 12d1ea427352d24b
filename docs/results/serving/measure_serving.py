"""Single-frame latency through the demo's API, idle and while two 100-frame clips run (issue 31.2).

    flock /tmp/psfh-heavy.lock python docs/results/serving/measure_serving.py
    # -> docs/results/serving/serving.json (and the table on stdout)
    flock /tmp/psfh-heavy.lock python docs/results/serving/measure_serving.py --plain-lock \
        --out docs/results/serving/serving_plain_lock.json      # the comparison in docs/SPACE.md

The app as served (app.build_demo with its defaults: 2 single frames and 2 clips at a time, the
model shared through psfh.serve's FairModelLock) around the embedded package, on localhost, called
with gradio_client like any API user. Two kinds of single-frame request, each ``--repeats``
times: the page's defaults ("default": the fold soup, flip TTA, stability check) and the full
ensemble ("ensemble": 5 folds, flip TTA, stability check). First idle (after one warm-up
request), then while two clips of ``--frames`` frames run in the fast mode; the clips are cines
of the repository's example frames (tests/dicom_fixtures.py, as examples/dicom/cine_10f.dcm). The
clips are not run to the end: the script stops once the single frames under load are measured,
and reports how far each clip got and its pace. ``--plain-lock`` puts a plain threading.Lock back
in the model (own queues, no priority) for comparison.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

import app  # noqa: E402
from psfh.model.psfh_model import PSFHModel  # noqa: E402

OUT = Path(__file__).resolve().parent / "serving.json"
IMAGE = ROOT / "examples" / "image_mha" / "04161.mha"  # the README's frame
REQUESTS = {
    "default": {"tta": True, "n_folds": 5, "stability_check": True, "mode": "soup"},  # the page's defaults
    "ensemble": {"tta": True, "n_folds": 5, "stability_check": True, "mode": "ensemble"},
}


def load_fixtures():
    """tests/dicom_fixtures.py as a module (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("dicom_fixtures", ROOT / "tests" / "dicom_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module



def single_frame(client: Client, kind: str) -> float:
    start = time.perf_counter()
    *_, report = client.predict(image=handle_file(IMAGE), **REQUESTS[kind], api_name="/segment")
    seconds = time.perf_counter() - start
    assert report["name"], report
    return seconds


def frames_done(job) -> int:
    """Frames a running /clip job has reported (its progress bar), 0 before the first."""
    units = job.status().progress_data or []
    return max((int(unit.index or 0) for unit in units if unit.unit == "frames"), default=0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100, help="frames per clip (default 100)")
    parser.add_argument("--repeats", type=int, default=2, help="requests of each kind, idle and under load")
    parser.add_argument("--plain-lock", action="store_true", help="no priority for single frames (comparison)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    fixtures = load_fixtures()
    model = PSFHModel.from_pretrained(device="cpu")
    demo = app.build_demo(model)
    if args.plain_lock:
        model.use_model_lock(threading.Lock())
    client = Client(app.launch_locally(demo), verbose=False)
    clip = fixtures.write_cine(Path(tempfile.mkdtemp()) / f"cine_{args.frames}f.dcm", count=args.frames)
    load_before = os.getloadavg()

    single_frame(client, "default")  # warm-up: the first request pays for lazy set-up
    idle = {kind: [single_frame(client, kind) for _ in range(args.repeats)] for kind in REQUESTS}
    print("idle:", {kind: [round(s, 1) for s in times] for kind, times in idle.items()}, flush=True)

    clips = [client.submit(clip=handle_file(clip), fast=True, api_name="/clip") for _ in range(2)]
    start = time.perf_counter()
    while min(frames_done(job) for job in clips) < 2:  # both running, past their first frames
        if any(job.done() for job in clips):
            raise SystemExit(f"a clip ended early: {[job.status() for job in clips]}")
        if time.perf_counter() - start > 300:
            raise SystemExit("the clips did not start within 5 minutes")
        time.sleep(0.5)
    pace_start, pace_frames = time.perf_counter(), [frames_done(job) for job in clips]
    time.sleep(20)  # the clips alone: their pace
    pace = [(frames_done(job) - done) / (time.perf_counter() - pace_start) for job, done in zip(clips, pace_frames)]
    print(f"two clips alone: {[round(p, 2) for p in pace]} frames/s each", flush=True)

    loaded, during = {kind: [] for kind in REQUESTS}, []
    for kind in REQUESTS:
        for _ in range(args.repeats):
            before = [frames_done(job) for job in clips]
            loaded[kind].append(single_frame(client, kind))
            after = [frames_done(job) for job in clips]
            if any(job.done() for job in clips):
                raise SystemExit("a clip ended before the measurement did: use more --frames")
            during.append({"kind": kind, "seconds": loaded[kind][-1], "clip_frames_before": before,
                           "clip_frames_after": after})
            print(during[-1], flush=True)
    lock = model.model_lock
    summary = {
        kind: {"idle_s": [round(s, 2) for s in idle[kind]], "under_two_clips_s": [round(s, 2) for s in loaded[kind]],
               "idle_median_s": round(statistics.median(idle[kind]), 2),
               "under_two_clips_median_s": round(statistics.median(loaded[kind]), 2),
               "ratio_median": round(statistics.median(loaded[kind]) / statistics.median(idle[kind]), 2),
               "ratio_worst": round(max(loaded[kind]) / statistics.median(idle[kind]), 2)}
        for kind in REQUESTS}
    result = {
        "command": "python docs/results/serving/measure_serving.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
        "lock": "plain threading.Lock" if args.plain_lock else "psfh.serve.FairModelLock",
        "clip_frames": args.frames, "repeats": args.repeats, "image": IMAGE.name, "requests": REQUESTS,
        "single_frame": summary,
        "during": during,
        "two_clips_alone_frames_per_s": [round(p, 3) for p in pace],
        "clip_frames_done_at_end": [frames_done(job) for job in clips],
        "fair_lock": ({"clip_calls_that_waited": lock.waits, "clip_calls_overdue": lock.overdue}
                      if not args.plain_lock else None),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "wall_s": round(time.perf_counter() - began, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["single_frame"], indent=1))
    print(f"wrote {args.out} in {result['wall_s']} s", flush=True)
    return result


if __name__ == "__main__":
    status = 1
    try:
        main()
        status = 0
    except BaseException:  # noqa: BLE001 - said, then the process ends below
        traceback.print_exc()
    finally:  # the clips' worker threads are still running: stop them with the process
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
