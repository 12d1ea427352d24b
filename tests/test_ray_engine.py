"""psfh.batch.ray_engine: psfh-predict and psfh-cine on a local Ray, with the tiny-random package.

The same label maps and tables as the single-process engine; a worker killed mid-run loses no
image; an image whose worker dies on every try fails alone with the reason; a rerun resumes; no
address starts (and stops) a local Ray. The tests that start Ray are slow (a Ray and its actors
take 20-40 s to start on 2 cores); the option checks are quick. CI installs ray
(requirements-test.txt), so ``import ray`` here fails rather than skips without it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from conftest import EXAMPLES, ROOT
from dicom_fixtures import write_cine
from PIL import Image

import psfh.batch.ray_engine as ray_engine
from psfh.batch.predict import CSV_COLUMNS
from psfh.batch.ray_engine import ModelSource, PredictWorker, RayOptions, pool_size, predict_paths_on_ray
from psfh.cli.cine import main as cine_main
from psfh.cli.predict import main as predict_main
from psfh.core.errors import PSFHInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


def without(rows: list[dict], *columns: str) -> list[dict]:
    return [{key: value for key, value in row.items() if key not in columns} for row in rows]


def relabelled(rows: list[dict], out: Path, common: str) -> list[dict]:
    """The rows with OUT's path in the label_map column replaced, so two runs' tables compare."""
    return [{**row, "label_map": row["label_map"].replace(str(out), common)} for row in rows]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (2 CPUs, no dashboard, a short temp folder: Ray's socket paths
    must fit in 107 bytes); the engine uses a Ray this process already has."""
    temp = tempfile.mkdtemp(prefix="psfhray", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, logging_level="ERROR")
    yield temp
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def inputs(tmp_path) -> Path:
    """Two examples, a PNG, a broken PNG and a note (skipped), as test_predict_cli has them."""
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted((EXAMPLES / "image_mha").glob("*.mha"))[:2]:
        shutil.copy(path, folder / path.name)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80), dtype=np.uint8)).save(folder / "scan.png")
    (folder / "broken.png").write_text("this is not a PNG")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def twelve_frames(tmp_path) -> Path:
    """The 8 examples and 4 renamed copies: enough work to kill a worker in the middle of it."""
    folder = tmp_path / "frames"
    folder.mkdir()
    examples = sorted((EXAMPLES / "image_mha").glob("*.mha"))
    for path in examples:
        shutil.copy(path, folder / path.name)
    for number, path in enumerate(examples[:4]):
        shutil.copy(path, folder / f"copy{number}.mha")
    return folder


# --- quick: options, the pool's size, a missing Ray ---------------------------------------------------


class FakeRay:
    """What pool_size asks of ray: the cluster's resources and nodes."""

    def __init__(self, *node_cpus: int, gpus: float = 0):
        self.node_cpus, self.gpus = node_cpus, gpus

    def cluster_resources(self):
        return {"CPU": float(sum(self.node_cpus)), "GPU": self.gpus}

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": float(cpus)}} for cpus in self.node_cpus]


def test_the_pool_fills_the_cpus_without_oversubscribing_them():
    assert pool_size(FakeRay(2), RayOptions()) == (2, 1)  # one single-threaded worker per CPU
    assert pool_size(FakeRay(2), RayOptions(workers=1)) == (1, 2)  # one worker takes both CPUs
    assert pool_size(FakeRay(16, 16), RayOptions(threads=4)) == (8, 4)
    assert pool_size(FakeRay(8, 8), RayOptions(workers=1)) == (1, 8)  # never more threads than a node has
    assert pool_size(FakeRay(8, gpus=2), RayOptions(gpus=0.5)) == (4, 1)
    with pytest.raises(PSFHInputError, match="need 6 CPUs; the Ray cluster has 2"):
        pool_size(FakeRay(2), RayOptions(workers=3, threads=2))
    with pytest.raises(PSFHInputError, match="no Ray node has that many CPUs"):
        pool_size(FakeRay(4, 4), RayOptions(threads=6))
    with pytest.raises(PSFHInputError, match="GPUs"):
        pool_size(FakeRay(8, gpus=1), RayOptions(workers=2, gpus=1))


def test_bad_ray_options_are_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr("psfh.cli.predict.load_model", no_model)
    out = tmp_path / "out"
    assert predict_main([str(EXAMPLES / "image_mha"), "--out", str(out), "--workers", "2"]) == 2
    assert predict_main([str(EXAMPLES / "image_mha"), "--out", str(out), "--engine", "ray", "--workers", "0"]) == 2
    assert cine_main([str(tmp_path / "clip.dcm"), "--out", str(out), "--address", "auto"]) == 2
    err = capsys.readouterr().err
    assert "--workers is an option of the Ray engine: add --engine ray" in err
    assert "--workers must be at least 1" in err
    assert "--address is an option of the Ray engine" in err
    assert not out.exists()


def test_without_ray_installed_the_message_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    monkeypatch.setattr("psfh.cli.predict.load_model", lambda *args, **kwargs: pytest.fail("the model loaded"))
    assert predict_main([str(EXAMPLES / "image_mha"), "--out", str(tmp_path / "out"), "--engine", "ray"]) == 2
    assert "--engine ray needs Ray" in (err := capsys.readouterr().err) and "pip install 'psfh[ray]'" in err


def test_an_address_nobody_answers_on_is_refused_at_once(tiny_package, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process, whatever ran before
    out = tmp_path / "out"
    started = time.perf_counter()
    assert predict_main([str(EXAMPLES / "image_mha"), "--out", str(out), "--model", str(tiny_package), "--device",
                         "cpu", "--engine", "ray", "--address", "127.0.0.1:1"]) == 2
    assert time.perf_counter() - started < 60  # Ray alone would wait minutes
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in capsys.readouterr().err
    assert not (out / "aop.csv").exists()


# --- slow: a local Ray ---------------------------------------------------------------------------------


@pytest.mark.slow  # starts Ray and its actors
def test_ray_gives_the_single_process_engines_label_maps_and_table(tiny_package, local_ray, inputs, tmp_path,
                                                                     capsys):
    model = ["--model", str(tiny_package), "--device", "cpu"]
    single, on_ray = tmp_path / "single", tmp_path / "ray"
    assert predict_main([str(inputs), "--out", str(single), *model]) == 1  # broken.png fails alone
    capsys.readouterr()
    assert predict_main([str(inputs), "--out", str(on_ray), *model, "--engine", "ray", "--workers", "2"]) == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "notes.txt" in captured.err
    assert "3 of 4 images predicted" in captured.out

    names = sorted(path.name for path in single.iterdir())
    assert names == sorted(path.name for path in on_ray.iterdir())
    for name in names:
        if name != "aop.csv":
            assert (single / name).read_bytes() == (on_ray / name).read_bytes(), name  # byte-identical
    expected = relabelled(read_rows(single / "aop.csv"), single, "OUT")
    got = relabelled(read_rows(on_ray / "aop.csv"), on_ray, "OUT")
    assert without(got, "seconds") == without(expected, "seconds")  # same rows, same order
    assert got[[row["name"] for row in got].index("broken")]["error"].startswith("cannot read the image file")


def _map_workers(ray_temp: str) -> list[int]:
    """The pids of the Ray Data actors of the Ray whose temp folder is ``ray_temp``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
            parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            raylet = Path(f"/proc/{parent}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if command.startswith("ray::MapWorker") and ray_temp in raylet:
            pids.append(int(entry.name))
    return pids


def _processes_naming(text: str) -> list[int]:
    """The pids of the processes whose command line holds ``text`` (a Ray's raylet and GCS name its temp folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow  # starts Ray actors (two runs)
def test_a_killed_worker_loses_no_image_and_a_rerun_resumes(tiny_package, local_ray, twelve_frames, tmp_path):
    out = tmp_path / "out"
    source = ModelSource(str(tiny_package), "cpu")
    killed = {}

    def kill_a_worker_mid_run():
        deadline = time.time() + 300
        while time.time() < deadline:
            done = len(read_rows(out / "aop.csv")) if (out / "aop.csv").is_file() else 0
            workers = _map_workers(local_ray)
            if done >= 2 and workers:
                killed.update(pid=workers[0], rows_before=done)
                os.kill(workers[0], signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_mid_run)
    killer.start()
    rows = predict_paths_on_ray(source, [twelve_frames], out, progress=False, options=RayOptions(workers=2))
    killer.join()
    assert killed and killed["rows_before"] < 12, f"the run ended before a worker could be killed: {killed}"
    assert [row["name"] for row in rows] == sorted(path.stem for path in twelve_frames.iterdir())
    assert all(row["error"] is None for row in rows), [row["error"] for row in rows]  # retried, none lost
    assert all(Path(row["label_map"]).is_file() for row in rows)
    assert [row["name"] for row in read_rows(out / "aop.csv")] == [row["name"] for row in rows]

    # A rerun with --resume predicts only what is missing: here one label map removed.
    first = {row["name"]: row for row in read_rows(out / "aop.csv")}
    (out / "04150.mha").unlink()
    again = predict_paths_on_ray(source, [twelve_frames], out, progress=False, resume=True,
                                 options=RayOptions(workers=1))
    second = {row["name"]: row for row in read_rows(out / "aop.csv")}
    assert list(second) == list(first) and all(row["error"] is None for row in again)
    assert (out / "04150.mha").is_file()
    redone = [name for name in first if second[name]["seconds"] != first[name]["seconds"]]
    assert redone == ["04150"]  # the others kept their rows as they were


@pytest.mark.slow  # starts Ray actors
def test_an_image_whose_worker_dies_on_every_try_fails_alone_with_the_reason(tiny_package, local_ray, inputs,
                                                                              tmp_path, monkeypatch):
    class DiesOnPoison(PredictWorker):  # a local class: Ray ships it to the workers by value
        def __call__(self, batch):
            if any("poison" in str(path) for path in batch["path"]):
                os._exit(1)  # what a crash or the out-of-memory killer does to a worker
            return super().__call__(batch)

    shutil.copy(inputs / "scan.png", inputs / "poison.png")
    monkeypatch.setattr(ray_engine, "PredictWorker", DiesOnPoison)
    rows = {row["name"]: row for row in predict_paths_on_ray(
        ModelSource(str(tiny_package), "cpu"), [inputs], tmp_path / "out", progress=False,
        options=RayOptions(workers=2, retries=1))}
    assert sorted(rows) == ["03811", "03970", "broken", "poison", "scan"]
    assert rows["poison"]["error"].startswith("no result: the worker process running it died on each of its 2 tries")
    assert rows["broken"]["error"].startswith("cannot read the image file")
    assert all(rows[name]["error"] is None for name in ("03811", "03970", "scan"))
    assert read_rows(tmp_path / "out" / "aop.csv")[3]["error"].startswith("no result")  # in the table, in order


@pytest.mark.slow  # starts Ray actors
def test_workers_that_cannot_load_the_model_leave_every_row_with_the_reason(local_ray, inputs, tmp_path):
    rows = predict_paths_on_ray(ModelSource(str(tmp_path / "not-here"), "cpu"), [inputs], tmp_path / "out",
                                progress=False, options=RayOptions(workers=1))
    assert [row["name"] for row in rows] == ["03811", "03970", "broken", "scan"]
    for row in rows:
        assert row["error"].startswith("no result: the Ray run stopped before it was done"), row["error"]
        assert f"{tmp_path / 'not-here'}: no such folder" in row["error"]  # the workers' own reason


@pytest.mark.slow  # starts Ray actors
def test_cine_on_ray_writes_what_the_single_process_engine_writes(tiny_package, local_ray, tmp_path, capsys):
    clips = [write_cine(tmp_path / "labour.dcm", count=3), write_cine(tmp_path / "second.dcm", count=2)]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    manifest = tmp_path / "clips.csv"
    manifest.write_text("path\nlabour.dcm\nbroken.mp4\nsecond.dcm\n")  # relative to the manifest's folder
    model = ["--model", str(tiny_package), "--device", "cpu", "--folds", "fold_0", "--no-tta"]
    single, on_ray = tmp_path / "single", tmp_path / "ray"
    assert cine_main(["--manifest", str(manifest), "--out", str(single), *model]) == 1
    capsys.readouterr()
    assert cine_main(["--manifest", str(manifest), "--out", str(on_ray), *model, "--engine", "ray"]) == 1
    captured = capsys.readouterr()
    assert "broken.mp4" in captured.err and captured.out.count("results in") == 2
    for clip in clips:
        ours, theirs = single / clip.stem, on_ray / clip.stem
        maps = sorted(path.name for path in (ours / "label_maps").iterdir())
        assert maps == sorted(path.name for path in (theirs / "label_maps").iterdir())
        for name in maps:
            assert (ours / "label_maps" / name).read_bytes() == (theirs / "label_maps" / name).read_bytes()
        assert without(read_frames(theirs), "seconds") == without(read_frames(ours), "seconds")
        summaries = [json.loads((folder / "summary.json").read_text()) for folder in (ours, theirs)]
        assert [{k: v for k, v in s.items() if k != "seconds_per_frame"} for s in summaries][0] == \
            {k: v for k, v in summaries[1].items() if k != "seconds_per_frame"}
        assert (ours / "aop_curve.svg").read_text() == (theirs / "aop_curve.svg").read_text()

    # --resume skips the finished clips and tries the broken one again.
    assert cine_main(["--manifest", str(manifest), "--out", str(on_ray), *model, "--engine", "ray", "--resume"]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("done by an earlier run; skipped") == 2 and "broken.mp4" in captured.err


def read_frames(folder: Path) -> list[dict]:
    with open(folder / "frames.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # starts its own Ray
def test_without_an_address_the_command_starts_and_stops_a_local_ray(tiny_package, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(EXAMPLES / "image_mha" / "03811.mha", folder)
    temp = tempfile.mkdtemp(prefix="psfhray", dir="/tmp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_TMPDIR": temp}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run([sys.executable, "-m", "psfh.predict", str(folder), "--out", str(tmp_path / "out"),
                               "--model", str(tiny_package), "--device", "cpu", "--engine", "ray", "--workers", "1"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "1 of 1 images predicted" in done.stdout
        assert [row["name"] for row in read_rows(tmp_path / "out" / "aop.csv")] == ["03811"]
        assert list(Path(temp).glob("ray/session_*")), "the local Ray ran in RAY_TMPDIR"
        assert not _processes_naming(temp), "the local Ray was shut down with the command"
    finally:
        shutil.rmtree(temp, ignore_errors=True)
