"""The Ray engine: ``psfh-predict`` and ``psfh-cine`` over an archive, on this machine or a cluster.

    python -m psfh.predict scans/ --out results/ --engine ray                  # a local Ray on this machine
    python -m psfh.predict --manifest archive.csv --out results/ --engine ray --address auto --workers 32
    python -m psfh.cine clips/ --out results/ --engine ray --fast --resume

Ray Data streams the items (images; clips for ``psfh-cine``) through a fixed pool of actors
(``map_batches`` with an ``ActorPoolStrategy``, one item per batch). Each actor loads the model
package once and runs the single-process engine's own per-item step on each item it gets
(:func:`psfh.batch.predict.predict_item`; :func:`psfh.batch.clips.analyse_and_write`), which writes
the label maps (the clip's folder) under --out. This process, the driver, appends each row to
OUT/aop.csv as it arrives and puts the table in the inputs' order at the end, so the outputs are
those of the single-process command line.

Faults. An actor that dies with an item (killed, out of memory, its node lost) is restarted by Ray
and the item is tried again, up to ``retries`` more times; an item still without a result gets a
row that says so (clips: an ``error:`` line), so no item goes missing. A bad file fails alone, in
its row, as in the single-process engine. ``resume`` skips what an earlier run into the same --out
finished.

Where it runs. No address: a local Ray on this machine (or the cluster RAY_ADDRESS names, as for
every Ray program); ``address``: join that cluster ("auto": the one ``ray start`` made here). A Ray
already connected in this process is used as it is. Every node needs psfh installed (the same
version, with the ray extra) and must see the inputs, the model and --out at the same paths (a
shared file system); relative paths are taken from this process's working folder. Ray is imported
only here, and only when this engine runs: ``pip install 'psfh[ray]'``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from psfh.batch.clips import ClipJob, analyse_and_write, clip_error, clip_line, plan_clips, read_clip
from psfh.batch.predict import (
    Item,
    ResultTable,
    failed_row,
    plan_run,
    predict_item,
    report_error,
)
from psfh.core.errors import PSFHInputError
from psfh.core.files import format_cell
from psfh.core.options import check_precision
from psfh.measure.hsd import check_spacing

RAY_EXTRA = "pip install 'psfh[ray]'"
# Ray Data makes its blocks up front, one ray.put each: one item per block (a task per item, each
# row as soon as it is done, a dead worker costs one item) up to this many items; beyond, several
# items share a block and its task (measured on 2 busy cores: 48 s to make 20,000 blocks, then
# about 20 ms of Ray overhead per task; docs/SCALE.md).
MAX_BLOCKS = 10_000
# Torch threads per worker when neither --workers nor --threads is given: one thread per worker,
# one worker per CPU (measured on 2 cores: docs/SCALE.md).
DEFAULT_THREADS = 1


@dataclass(frozen=True)
class RayOptions:
    """How the Ray engine runs.

    Attributes:
        address: the Ray cluster to join (None: start a local Ray on this machine).
        workers: actors in the pool, each holding one model (default: the cluster's CPUs / threads,
            or its GPUs / gpus).
        threads: torch threads (and CPUs reserved) per worker (default: the CPUs / workers when
            workers is given, else DEFAULT_THREADS).
        gpus: GPUs per worker (0: CPU workers; 0.5 puts two workers on a GPU).
        retries: how many more times an item is tried after its worker died with it.
    """

    address: str | None = None
    workers: int | None = None
    threads: int | None = None
    gpus: float = 0.0
    retries: int = 2

    def check(self) -> RayOptions:
        for name in ("workers", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PSFHInputError(f"--{name} must be at least 1, not {value}")
        if self.gpus < 0:
            raise PSFHInputError(f"--gpus-per-worker must be 0 or more, not {self.gpus}")
        if self.retries < 0:
            raise PSFHInputError(f"--retries must be 0 or more, not {self.retries}")
        return self


@dataclass(frozen=True)
class ModelSource:
    """What each worker loads: ``PSFHModel.from_pretrained(model, device=device, backend=backend)``."""

    model: str | None = None
    device: str | None = None
    backend: str = "torch"

    def load(self):
        from psfh.model.psfh_model import PSFHModel

        return PSFHModel.from_pretrained(self.model, device=self.device, backend=self.backend)


def import_ray():
    """The ray module (with Ray Data), or PSFHInputError saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - the engine needs Ray Data, the ray[data] extra
    except ImportError as error:
        raise PSFHInputError(f"--engine ray needs Ray with Ray Data, which is not installed ({error}); "
                             f"install it with: {RAY_EXTRA}") from error
    return ray


# --- the cluster ---------------------------------------------------------------------------------


@contextlib.contextmanager
def connected(options: RayOptions) -> Iterator[tuple[int, int]]:
    """Connect to Ray (start a local one, join ``options.address``, or use the one this process
    has) and yield the pool's (workers, threads). A Ray started here is shut down on exit."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        _check_reachable(options.address)
        try:
            ray.init(address=options.address, include_dashboard=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = f"the Ray cluster at {options.address}" if options.address else "a local Ray"
            raise PSFHInputError(f"cannot start or join {where}: {error}") from error
        started = True
    try:
        yield pool_size(ray, options)
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str | None, seconds: float = 10.0) -> None:
    """Refuse a HOST:PORT nobody answers on at once: Ray itself would wait minutes for it."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except (OSError, ValueError) as error:
        raise PSFHInputError(f"--address {address}: no Ray cluster answers there ({error}); start one with "
                             "`ray start --head` or give its head's HOST:PORT") from error


def pool_size(ray, options: RayOptions) -> tuple[int, int]:
    """(workers, threads per worker) for the cluster Ray sees, checked against its CPUs and GPUs."""
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    node_cpus = max((int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")), default=cpus)
    if options.threads:
        threads = options.threads
    elif options.workers:
        threads = max(1, min(node_cpus, cpus // options.workers))
    else:
        threads = DEFAULT_THREADS
    if options.workers:
        workers = options.workers
    elif options.gpus:
        workers = max(1, int(gpus // options.gpus))
    else:
        workers = max(1, cpus // threads)
    if threads > node_cpus:
        raise PSFHInputError(f"--threads {threads}: no Ray node has that many CPUs (the largest has {node_cpus})")
    if workers * threads > cpus:
        raise PSFHInputError(f"{workers} workers x {threads} threads need {workers * threads} CPUs; the Ray cluster "
                             f"has {cpus}: give fewer --workers or --threads")
    if options.gpus and workers * options.gpus > gpus:
        raise PSFHInputError(f"{workers} workers x {options.gpus:g} GPUs need {workers * options.gpus:g} GPUs; the "
                             f"Ray cluster has {gpus:g}")
    return workers, threads


def _start_worker(cwd: str, threads: int) -> None:
    """A worker process: the driver's working folder (relative paths mean the same), and its threads."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
        torch.set_num_interop_threads(1)


def stream(records: list[dict], worker: type, constructor: dict, options: RayOptions, workers: int,
           threads: int) -> Iterator[tuple[int, str]]:
    """Run ``worker`` over ``records`` (dicts with an ``index``) on a pool of ``workers`` actors and
    yield (index, result) as results arrive, each index once. Items whose worker died on every
    try are dropped here (the caller records them); an error that stops the whole run is raised."""
    ray = import_ray()
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    saved = context.enable_progress_bars, context.max_errored_blocks
    context.enable_progress_bars = False  # the driver's own bar counts items
    context.max_errored_blocks = -1  # an item out of tries is dropped and recorded, not the end of the run
    data_logger = logging.getLogger("ray.data")
    saved_level = data_logger.level
    data_logger.setLevel(logging.ERROR)  # its notes (execution plans, disabled bars) would bury psfh's lines
    try:
        dataset = ray.data.from_items(records, override_num_blocks=min(len(records), MAX_BLOCKS))
        with warnings.catch_warnings():
            # Ray 2.60 takes max_task_retries only among the remote arguments it deprecates for 2.64
            # (the pin in pyproject's ray extra); its default, -1, would retry an item that kills its
            # worker for ever.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            dataset = dataset.map_batches(
                worker, batch_size=1, fn_constructor_kwargs={**constructor, "threads": threads},
                compute=ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
                num_cpus=threads, num_gpus=options.gpus or None, max_task_retries=options.retries)
        seen = set()
        for row in dataset.iter_rows():
            index = int(row["index"])
            if index not in seen:  # a retried task may report again
                seen.add(index)
                yield index, row["result"]
    finally:
        context.enable_progress_bars, context.max_errored_blocks = saved
        data_logger.setLevel(saved_level)


def _lost_reason(error: Exception | None, retries: int) -> str:
    if error is None:
        return (f"no result: the worker process running it died on each of its {retries + 1} tries "
                "(killed, out of memory or crashed; the Ray logs say which)")
    # Ray's message ends with the root cause (a worker's traceback, e.g. the model it could not load).
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    return f"no result: the Ray run stopped before it was done ({type(error).__name__}: {lines[-1] if lines else ''})"


# --- psfh-predict ----------------------------------------------------------------------------------


class PredictWorker:
    """A Ray Data actor: the model loaded once, then :func:`predict_item` on each image it gets."""

    def __init__(self, source: dict, settings: dict, cwd: str, threads: int):
        _start_worker(cwd, threads)
        self.model = ModelSource(**source).load()
        self.settings = settings

    def __call__(self, batch: dict) -> dict:
        results = []
        for path, output in zip(batch["path"], batch["output"]):
            row = predict_item(self.model, Item(Path(str(path)), Path(str(output))), **self.settings)
            results.append(json.dumps({key: format_cell(value) for key, value in row.items()}))
        return {"index": list(batch["index"]), "result": results}


def predict_paths_on_ray(source: ModelSource, inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                         folds: Sequence[str] | None = None, tta: bool | None = None, precision: str = "fp32",
                         progress: bool = True, spacing_mm: tuple[float, float] | None = None,
                         stability_check: bool = False, resume: bool = False,
                         options: RayOptions = RayOptions()) -> list[dict]:
    """:func:`psfh.batch.predict.predict_paths` on a pool of Ray workers: the same label maps and
    OUT/aop.csv.

    Args:
        source: the model each worker loads. folds: the adapters, resolved by the caller (every
            worker must use the same ones). The rest: as in ``predict_paths``; options: the pool.
    Returns:
        One dict per input, in the inputs' order, keyed by CSV_COLUMNS; cells are the table's text
        (None when empty). ``error`` is None for the inputs that gave a label map.
    Raises:
        PSFHInputError: bad options, no Ray installed, no inputs, an unusable out_dir, no cluster.
    """
    check_precision(precision)
    check_spacing(spacing_mm)
    options.check()
    import_ray()  # before anything is written
    settings = {"folds": list(folds) if folds is not None else None, "tta": tta, "precision": precision,
                "spacing_mm": spacing_mm, "stability_check": stability_check}
    plan = plan_run(inputs, out_dir, resume)
    records = [{"index": index, "path": str(item.path), "output": str(item.output)}
               for index, item in plan.todo if not item.refused]
    # Connected before the table is touched: a cluster that cannot be reached leaves an earlier run's table as it was.
    pool = connected(options) if records else contextlib.nullcontext((0, 0))
    with pool as (workers, threads), ResultTable(plan) as table:
        for index, item in plan.todo:
            if item.refused:  # refused before any model: no worker needed
                row = predict_item(None, item, **settings)
                report_error(item, row)
                table.add(index, row)
        if records:
            constructor = {"source": asdict(source), "settings": settings, "cwd": os.getcwd()}
            error = None
            bar = tqdm(total=len(records), desc=f"predicting ({workers} Ray workers)", unit="image",
                       disable=not progress)
            try:
                for index, text in stream(records, PredictWorker, constructor, options, workers, threads):
                    row = {key: value or None for key, value in json.loads(text).items()}
                    report_error(plan.items[index], row)
                    table.add(index, row)
                    bar.update(1)
            except Exception as stopped:  # noqa: BLE001 - the run stopped: the rows not done say why
                error = stopped
            bar.close()
            for record in records:
                if record["index"] not in table.rows:
                    item = plan.items[record["index"]]
                    row = failed_row(item, _lost_reason(error, options.retries))
                    report_error(item, row)
                    table.add(record["index"], row)
        return table.finish()


# --- psfh-cine -----------------------------------------------------------------------------------


class ClipWorker:
    """A Ray Data actor: the model loaded once, then one clip's analysis at a time."""

    def __init__(self, source: dict, settings: dict, max_frames: int | None, cwd: str, threads: int):
        _start_worker(cwd, threads)
        self.model = ModelSource(**source).load()
        self.settings = settings
        self.max_frames = max_frames

    def __call__(self, batch: dict) -> dict:
        results = []
        for clip, folder in zip(batch["clip"], batch["folder"]):
            job = ClipJob(Path(str(clip)), Path(str(folder)))
            try:
                summary = analyse_and_write(self.model, job, read_clip(job, self.max_frames), **self.settings)
                results.append(json.dumps({"summary": summary}))
            except Exception as error:  # noqa: BLE001 - one bad clip must not end a run of thousands
                results.append(json.dumps({"error": clip_error(job, error)}))
        return {"index": list(batch["index"]), "result": results}


def analyse_clips_on_ray(source: ModelSource, clips: Sequence[Path], out_dir: Path, folds: list[str] | None = None,
                         tta: bool | None = None, precision: str = "fp32",
                         spacing_mm: tuple[float, float] | None = None, max_frames: int | None = None,
                         resume: bool = False, options: RayOptions = RayOptions()) -> int:
    """``psfh-cine`` on a pool of Ray workers, one clip per task: each clip's folder as the
    single-process command line writes it; a line per clip on stdout (errors on stderr).

    Returns the number of clips that failed.
    """
    check_precision(precision)
    check_spacing(spacing_mm)
    options.check()
    import_ray()
    jobs = plan_clips(clips, Path(out_dir))
    failed, records = 0, []
    for index, job in enumerate(jobs):
        if job.refused:
            print(f"error: {job.refused}", file=sys.stderr)
            failed += 1
        elif resume and job.done:
            print(f"{job.clip}: done by an earlier run; skipped (results in {job.folder})")
        else:
            records.append({"index": index, "clip": str(job.clip), "folder": str(job.folder)})
    if not records:
        return failed
    settings = {"folds": folds, "tta": tta, "precision": precision, "spacing_mm": spacing_mm}
    constructor = {"source": asdict(source), "settings": settings, "max_frames": max_frames, "cwd": os.getcwd()}
    done, error = set(), None
    with connected(options) as (workers, threads):
        print(f"{len(records)} clips on {workers} Ray workers ({threads} threads each)", file=sys.stderr)
        try:
            for index, text in stream(records, ClipWorker, constructor, options, workers, threads):
                done.add(index)
                result = json.loads(text)
                if "error" in result:
                    failed += 1
                    print(f"error: {result['error']}", file=sys.stderr)
                else:
                    print(clip_line(jobs[index], result["summary"]), flush=True)
        except Exception as stopped:  # noqa: BLE001 - the run stopped: the clips not done say why
            error = stopped
    for record in records:
        if record["index"] not in done:
            failed += 1
            print(f"error: {record['clip']}: {_lost_reason(error, options.retries)}", file=sys.stderr)
    return failed
