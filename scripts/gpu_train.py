"""The whole GPU training job in one call: every fold of every variant, side by side, within a time budget.

    scripts/gpu_train.sh --pack .gpu/psfhs-cv-webp85.zip --out "$OUT" --minutes 7.5   # on a lent GPU
    scripts/gpu_train.sh --pack small.zip --out runs/dry --device cpu --n-folds 2 --epochs 1   # CPU dry run

Variants (all the paper's recipe, `train.py --recipe paper`: MONAI augmentation on the pixels,
0.2 CE + 0.8 Dice, AdamW with warm-up; decoder LoRA rank 16 + output tokens):
    paper       encoder LoRA rank 4 on every attention qkv (Elbatel et al. 2023)
    last_stage  encoder LoRA on the last TinyViT stage only; the earlier stages (~85 % of the
                encoder's cost) stay frozen and shared by all folds and both TTA views
    paper_ps_moments  paper + the PS second-moment (orientation) loss at weight 0.5 (issue 25;
                psfh.training.loss.ps_moment_loss)

Options for a draw (issue 26): --init-adapters PACKAGE starts each fold of the variants that share
the package's adapter form (paper, paper_ps_moments) from that package's fold, not from scratch;
--augment-on device (the default) augments whole batches on the GPU in torch
(psfh.training.batch_augment), not per image with MONAI in the training process; --student
MINUTES, after the folds, distils the first variant's fold ensemble (folds x flip) into ONE
adapter trained on every frame (train.py --distil-from), starting from the new fold_0 (or from
scratch with --student-from-scratch), packed as student.tar.gz.

Each (variant, fold) is one `train.py --fold K` process. On a GPU they all run at once: a
small TinyViT run is expected to leave an H100/H200 mostly idle (small, launch-bound steps);
ten such processes kept an H200 at 100 % utilisation (docs/GPU.md). Each fold keeps its best epoch by
validation Dice (train.py). Results are packed into at most 8 files under --out (what a device
call brings back): VARIANT.tar.gz (psfh_config.json, folds.json, fold_*/ without the base
weights, which every package shares), logs.tar.gz and summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from psfh.model.package import ADAPTER_WEIGHTS, BASE_WEIGHTS, FOLDS_FILE, PackageConfig, fold_name

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "paper": ["--encoder-scope", "all", "--rank", "4"],
    "last_stage": ["--encoder-scope", "last_stage", "--rank", "8"],
    # The paper recipe plus the PS second-moment loss (issue 25: the AoP's error is the PS axis).
    "paper_ps_moments": ["--encoder-scope", "all", "--rank", "4", "--ps-moment-weight", "0.5"],
}


# Variants whose adapters have the shipped package's form: --init-adapters applies to them only.
WARM_STARTABLE = ("paper", "paper_ps_moments")
STUDENT_ARCHIVE = "student.tar.gz"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", type=Path, required=True, help="data pack (python -m psfh.data pack)")
    p.add_argument("--out", type=Path, required=True, help="folder for the packed results")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: OUT/../psfh-gpu-work)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--n-folds", type=int, default=5, help="cross-validation folds")
    p.add_argument("--minutes", type=float, default=7.5, help="training time per fold (all folds run at once)")
    p.add_argument("--epochs", type=int, default=400, help="at most this many epochs per fold")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--block-size", type=int, default=20)
    p.add_argument("--limit", type=int, default=None, help="only the first N images (dry runs)")
    p.add_argument("--init-adapters", type=Path, default=None, metavar="PACKAGE",
                   help=f"warm start the folds of {', '.join(WARM_STARTABLE)} from this package's folds "
                        "(e.g. models/psfh-lite-medsam); default: from scratch")
    p.add_argument("--augment-on", choices=("cpu", "device"), default="device",
                   help="device (default): batched torch augmentation on the GPU; cpu: MONAI per image")
    p.add_argument("--lr-scaling", choices=("none", "linear", "sqrt"), default="none",
                   help="scale --lr from batch 8 to --batch-size (sqrt: the rule for AdamW)")
    p.add_argument("--channels-last", action="store_true", help="channels-last input batches")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (untimed here)")
    p.add_argument("--student", type=float, default=None, metavar="MINUTES",
                   help="after the folds, distil the first variant's ensemble into one adapter in this many minutes")
    p.add_argument("--distil-weight", type=float, default=0.5, help="the student's weight of the soft labels")
    p.add_argument("--student-from-scratch", action="store_true",
                   help="start the student from zero, not from the teacher's fold_0 (the default: a short run "
                        "starts near a fold's quality)")
    p.add_argument("--device", choices=("auto", "cpu"), default="auto")
    p.add_argument("--parallel", type=int, default=None,
                   help="processes at once (default: all on a GPU, 1 on the CPU)")
    return p.parse_args(argv)


def train_command(args, variant: str, fold: int, run_dir: Path) -> list[str]:
    command = [sys.executable, str(ROOT / "train.py"), "--data", str(args.pack), "--out", str(run_dir),
               "--recipe", "paper", "--n-folds", str(args.n_folds), "--fold", str(fold),
               "--block-size", str(args.block_size), "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--time-budget", str(args.minutes),
               "--device", args.device, "--no-progress", *VARIANTS[variant], *common_options(args)]
    if args.init_adapters and variant in WARM_STARTABLE:
        command += ["--init-adapters", str(args.init_adapters)]
    return command


def common_options(args) -> list[str]:
    """train.py options every process of the job gets (folds and student)."""
    options = ["--augment-on", args.augment_on, "--lr-scaling", args.lr_scaling]
    if args.device != "cpu":
        options += ["--mixed-precision", "bf16"]
    if args.channels_last:
        options.append("--channels-last")
    if args.compile:
        options.append("--compile")
    if args.limit:
        options += ["--limit", str(args.limit)]
    return options


def student_command(args, teacher: Path, run_dir: Path) -> list[str]:
    """One train.py process: the student of ``teacher`` on every frame, in ``args.student`` minutes."""
    return [sys.executable, str(ROOT / "train.py"), "--data", str(args.pack), "--out", str(run_dir),
            "--recipe", "paper", "--block-size", str(args.block_size), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size),
            "--lr", str(args.lr), "--time-budget", str(args.student), "--device", args.device, "--no-progress",
            "--distil-from", str(teacher), "--distil-weight", str(args.distil_weight),
            *VARIANTS[args.student_variant], *common_options(args),
            *([] if args.student_from_scratch else ["--init-adapters", str(teacher), "--init-from", "fold_0"])]


def teacher_package(package: Path, destination: Path, base_package: Path = ROOT / "models" / "psfh-lite-medsam") -> Path:
    """A loadable copy of a merged variant package (which travels without the base): the base
    weights of ``base_package`` added."""
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(package, destination)
    (destination / BASE_WEIGHTS).parent.mkdir(exist_ok=True)
    shutil.copy2(base_package / BASE_WEIGHTS, destination / BASE_WEIGHTS)
    return destination


def pack_folder(folder: Path, archive: Path, leave_out: tuple[str, ...] = ()) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(folder.iterdir()):
            if item.name not in leave_out:
                tar.add(item, arcname=item.name)
    return archive


def run_all(jobs: list[tuple[str, int, list[str]]], logs: Path, parallel: int) -> dict[tuple[str, int], int]:
    """Run the commands, at most ``parallel`` at once; each writes its own log. -> exit codes."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    pending, running, codes = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            variant, fold, command = pending.pop(0)
            log = open(logs / f"{variant}-{fold_name(fold)}.log", "w")
            running[(variant, fold)] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                         cwd=ROOT), log)
        time.sleep(0.5)
        for key, (process, log) in list(running.items()):
            if process.poll() is not None:
                log.close()
                codes[key] = process.returncode
                del running[key]
                print(f"{key[0]} {fold_name(key[1])}: exit {process.returncode}", flush=True)
    return codes


def merge_variant(work: Path, variant: str, n_folds: int) -> Path | None:
    """One package folder (no base weights) from the per-fold runs of a variant."""
    package = work / variant / "package"
    shutil.rmtree(package, ignore_errors=True)
    package.mkdir(parents=True)
    done = []
    per_fold = {"seconds_per_fold": {}, "warm_start": {}}  # each run's config records its own fold only
    for k in range(n_folds):
        run = work / variant / f"run_{k}"
        fold = fold_name(k)
        if not (run / fold / ADAPTER_WEIGHTS).is_file():
            continue
        shutil.copytree(run / fold, package / fold)
        done.append(fold)
        training = json.loads((run / PackageConfig.FILENAME).read_text())["training"]
        for key, merged in per_fold.items():
            merged.update(training.get(key, {}))
        for name in (PackageConfig.FILENAME, FOLDS_FILE):
            if not (package / name).exists():
                shutil.copy2(run / name, package / name)
    if not done:
        return None
    config = json.loads((package / PackageConfig.FILENAME).read_text())
    config["folds"] = done
    config["training"].update({key: merged for key, merged in per_fold.items() if merged})
    (package / PackageConfig.FILENAME).write_text(json.dumps(config, indent=2) + "\n")
    return package


def fold_summary(package: Path) -> dict:
    rows = {}
    for fold_dir in sorted(package.glob("fold_*")):
        metrics = json.loads((fold_dir / "metrics.json").read_text())
        history = metrics["history"]
        best = history[metrics["best_epoch"] - 1] if metrics["best_epoch"] > 0 else metrics["start"]  # 0: the warm start kept
        rows[fold_dir.name] = {"epochs": len(history), "best_epoch": metrics["best_epoch"],
                               **({"start_val_score": round(metrics["start"]["val_score"], 4)} if "start" in metrics else {}),
                               "val_dice_ps": round(best["val_dice_ps"], 4), "val_dice_fh": round(best["val_dice_fh"], 4),
                               "seconds_per_epoch": round(sum(h["seconds"] for h in history) / len(history), 2),
                               "seconds": round(metrics["seconds"], 1)}
    return rows


def run_student(args, work: Path, codes: dict) -> dict:
    """Distil the first variant's merged folds into one student adapter (one train.py process)."""
    variant = args.student_variant
    package = work / variant / "package"
    if not (package / PackageConfig.FILENAME).is_file():
        return {"variant": variant, "skipped": "no fold of the variant finished"}
    teacher = teacher_package(package, work / "student" / "teacher")
    started = time.time()
    command = student_command(args, teacher, work / "student" / "run")
    code = run_all([("student", 0, command)], work / "logs", 1)[("student", 0)]
    codes[("student", 0)] = code
    run = work / "student" / "run"
    result = {"variant": variant, "teacher_folds": json.loads((package / PackageConfig.FILENAME).read_text())["folds"],
              "exit_code": code, "wall_seconds": round(time.time() - started, 1)}
    metrics_path = run / "student" / "metrics.json"
    if code == 0 and metrics_path.is_file():
        history = json.loads(metrics_path.read_text())["history"]
        result.update(packed=True, epochs=len(history), train_dice_ps=round(history[-1]["val_dice_ps"], 4),
                      train_dice_fh=round(history[-1]["val_dice_fh"], 4),
                      seconds_per_epoch=round(sum(h["seconds"] for h in history) / len(history), 2))
    return result


def install_package(archive: Path, destination: Path, base_package: Path) -> Path:
    """Unpack a VARIANT.tar.gz into a loadable package, with the base weights of ``base_package``."""
    destination.mkdir(parents=True, exist_ok=False)
    with tarfile.open(archive) as tar:
        tar.extractall(destination, filter="data")
    (destination / BASE_WEIGHTS).parent.mkdir()
    shutil.copy2(base_package / BASE_WEIGHTS, destination / BASE_WEIGHTS)
    return destination


def main(argv=None) -> int:
    args = parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"error: unknown variants {unknown}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if not args.pack.is_file():
        print(f"error: {args.pack}: pack file not found", file=sys.stderr)
        return 2
    if args.init_adapters is not None and not (args.init_adapters / PackageConfig.FILENAME).is_file():
        print(f"error: --init-adapters {args.init_adapters}: not a psfh model package folder", file=sys.stderr)
        return 2
    if args.student is not None and (args.student <= 0 or not 0 <= args.distil_weight <= 1):
        print("error: --student takes a positive number of minutes, --distil-weight a weight in [0, 1]", file=sys.stderr)
        return 2
    args.student_variant = variants[0]
    if args.init_adapters is not None:
        args.init_adapters = args.init_adapters.resolve()
    args.pack = args.pack.resolve()
    out = args.out.resolve()
    work = (args.work or out.parent / "psfh-gpu-work").resolve()
    out.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    parallel = args.parallel or (1 if args.device == "cpu" else len(variants) * args.n_folds)

    started = time.time()
    jobs = [(v, k, train_command(args, v, k, work / v / f"run_{k}")) for v in variants for k in range(args.n_folds)]
    codes = run_all(jobs, work / "logs", parallel)
    summary = {"minutes_budget_per_fold": args.minutes,
               "warm_start": str(args.init_adapters) if args.init_adapters else None,
               "augment_on": args.augment_on, "wall_seconds": round(time.time() - started, 1),
               "parallel": parallel, "batch_size": args.batch_size, "lr": args.lr,
               "exit_codes": {f"{v}/{fold_name(k)}": c for (v, k), c in codes.items()}, "variants": {}}
    for variant in variants:
        package = merge_variant(work, variant, args.n_folds)
        if package is None:
            continue
        summary["variants"][variant] = fold_summary(package)
        pack_folder(package, out / f"{variant}.tar.gz")
    if args.student is not None:
        summary["student"] = run_student(args, work, codes)
        if summary["student"].get("packed"):
            pack_folder(work / "student" / "run", out / STUDENT_ARCHIVE, leave_out=("base", "checkpoints"))
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(work / "logs", arcname="logs")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0 if codes and all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
