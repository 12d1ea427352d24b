"""The Ray engine against the single-process command line on the same frames (docs/SCALE.md).

    python docs/results/scale/measure_scale.py --data ../shared/data/psfhs --frames 40 --work runs/scale \
        > docs/results/scale/measure_40.txt

Runs one after the other, each as a user would (a fresh process; the embedded package's default,
the fold soup x flip): ``psfh.predict`` (one process, torch's default threads: 2 on 2 cores), then
``--engine ray --workers 1`` (2 threads) and ``--engine ray --workers 2`` (1 thread each), so that
no run asks for more threads than the machine has cores. For each: the wall time, the time to the
first label map, and the steady rate (label maps finished after the first ``workers`` ones, over the
time between: the pool at work, without Ray's and the workers' start). The load average is
printed before and after each run (other work on the machine slows every run). Then it checks
that every run wrote byte-identical label maps and the same aop.csv but for the seconds column.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUNS = {  # name: (extra arguments, workers)
    "single": ([], 1),
    "ray-1x2": (["--engine", "ray", "--workers", "1", "--threads", "2"], 1),
    "ray-2x1": (["--engine", "ray", "--workers", "2", "--threads", "1"], 2),
}


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/psfhs"))
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--work", type=Path, default=Path("runs/scale"))
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()

    frames = args.work / f"frames{args.frames}"
    shutil.rmtree(args.work, ignore_errors=True)
    frames.mkdir(parents=True)
    for path in sorted((args.data / "image_mha").glob("*.mha"))[: args.frames]:
        os.symlink(path.resolve(), frames / path.name)
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "RAY_ADDRESS")}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python {sys.version.split()[0]}")
    print(f"frames: the first {args.frames} of {args.data / 'image_mha'} (sorted); model: the embedded package's default")
    print()
    print("| run | workers x threads | wall s | first label map s | steady images/s | images/s overall | load before | load after |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.runs:
        extra, workers = RUNS[name]
        out = args.work / name
        command = [sys.executable, "-m", "psfh.predict", str(frames), "--out", str(out), *extra]
        before = load()
        start = time.time()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.time() - start
        after = load()
        if done.returncode != 0:
            print(f"{name} failed ({done.returncode}): {done.stderr[-2000:]}", file=sys.stderr)
            return 1
        finished = sorted(path.stat().st_mtime - start for path in out.glob("*.mha"))
        steady = (len(finished) - workers) / (finished[-1] - finished[workers - 1])
        threads = f"{extra[3]} x {extra[5]}" if extra else "1 x 2 (torch default)"
        print(f"| {name} | {threads} | {wall:.1f} | {finished[0]:.1f} | {steady:.3f} | {len(finished) / wall:.3f} "
              f"| {before} | {after} |")
        print(f"  command: {' '.join(command[1:])}", file=sys.stderr)
    reference = args.work / args.runs[0]
    print()
    for name in args.runs[1:]:
        out = args.work / name
        maps = sorted(path.name for path in reference.glob("*.mha"))
        same = [name_ for name_ in maps if (reference / name_).read_bytes() == (out / name_).read_bytes()]
        table = rows(reference / "aop.csv") == [
            {**row, "label_map": row["label_map"].replace(str(out), str(reference))} for row in rows(out / "aop.csv")]
        print(f"{name} vs {reference.name}: {len(same)} of {len(maps)} label maps byte-identical; "
              f"aop.csv {'equal' if table else 'DIFFERENT'} but for the seconds column")
    return 0


if __name__ == "__main__":
    sys.exit(main())
