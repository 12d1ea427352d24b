"""k-fold LoRA training of a psfh model package (the paper's recipe, or the CPU recipe).

    python train.py --data ../shared/data/psfhs --base lite-medsam --n-folds 5 --out models/my-package
    python train.py --data ../shared/data/psfhs --recipe cpu --out models/my-package     # 2 CPU cores
    accelerate launch --multi_gpu --num_processes 4 train.py --data psfhs.pack --out runs/paper  # 4 GPUs (DDP)
    accelerate launch --multi_gpu --num_processes 2 train.py --data psfhs.pack --device cpu ...  # 2 CPU processes (gloo)
    python train.py --data psfhs.pack --out runs/warm --init-adapters models/psfh-lite-medsam --augment-on device
    python train.py --data psfhs.pack --out runs/student --distil-from runs/warm --augment-on device  # one adapter

Reads top to bottom: config, data, folds, model, (embedding cache), one training loop per fold,
then the package (base + fold adapters + folds.json + metrics) that PSFHModel.from_pretrained loads.
``--init-adapters`` starts each fold from a trained package's fold (psfh.training.warm_start);
``--distil-from`` trains one student adapter on every frame from a package's ensemble (psfh.training.student).
Under ``accelerate launch`` with several processes each fold trains data-parallel (DDP: each process
a share of every epoch, gradients averaged); the main process writes the package (docs/SCALE.md).
Bad input (data, options) ends with ``error: ...`` and exit status 2, as in every psfh command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from psfh.cli.common import run_cli
from psfh.core.errors import PSFHInputError
from psfh.core.files import write_csv_atomic, write_text_atomic
from psfh.io.dataset import (
    find_duplicate_images,
    find_samples,
    load_arrays,
    load_pack,
    make_folds,
    read_ids_file,
    resize_label,
    select_samples,
    validate_samples,
)
from psfh.model.bases import get_base
from psfh.model.lora import DECODER_CHOICES, make_lora_config
from psfh.model.package import ADAPTER_WEIGHTS, fold_name, resolve_package, write_fold_assignment
from psfh.model.psfh_model import PSFHModel
from psfh.training.loop import train_fold
from psfh.training.recipe import AUGMENT_PLACES, LR_SCALINGS, PRESETS, preset, scaled_learning_rate
from psfh.training.student import (STUDENT, check_student_options, describe_student, load_teacher,
                                   teacher_probabilities)
from psfh.training.warm_start import check_same_form, start_fold


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="labelled folder (image_mha/+label_mha/ or images/+masks/) or a pack file")
    p.add_argument("--out", type=Path, required=True, help="package folder to write")
    p.add_argument("--recipe", choices=sorted(PRESETS), default="paper", help="paper (GPU default) or cpu (cached embeddings)")
    p.add_argument("--base", default=None, help="base name: lite-medsam, facebook/sam-vit-{base,large,huge}, tiny-random")
    p.add_argument("--base-package", default=None, help="package folder or hub id holding the base weights (default: the embedded package)")
    p.add_argument("--n-folds", type=int, default=None, help="number of cross-validation folds (5)")
    p.add_argument("--fold", type=int, default=None, help="train only this fold (0-based)")
    p.add_argument("--block-size", type=int, default=None, help="consecutive ids per fold block (20)")
    p.add_argument("--holdout", type=float, default=None, help="fraction of id blocks kept out of all folds as a test set")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", dest="learning_rate", type=float, default=None)
    p.add_argument("--rank", dest="encoder_rank", type=int, default=None, help="LoRA rank on the encoder qkv (0: frozen)")
    p.add_argument("--encoder-scope", choices=("all", "last_stage"), default=None,
                   help="encoder LoRA on every qkv (all, the paper) or on the last stage only (its earlier "
                        "stages stay shared by all folds)")
    p.add_argument("--decoder", choices=DECODER_CHOICES, default=None,
                   help="train the mask decoder as LoRA (paper default) or whole, every weight (cpu default; "
                        "about 16 MB per fold)")
    p.add_argument("--decoder-rank", type=int, default=None,
                   help="LoRA rank on the mask decoder (0: frozen; with --decoder lora)")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    p.add_argument("--ps-moment-weight", type=float, default=None,
                   help="weight of the PS second-moment (orientation) loss beside Dice + CE (0: off, the paper)")
    p.add_argument("--augment-on", choices=AUGMENT_PLACES, default=None,
                   help="paper recipe: augment each image with MONAI in the data step (cpu, the default) or "
                        "whole batches in torch on the training device (device: same kinds and ranges, no MONAI)")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None)
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="feed the encoder channels-last batches (its weights are channels-last already)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the training forward (off by default; first steps slower)")
    p.add_argument("--lr-scaling", choices=LR_SCALINGS, default=None,
                   help="scale --lr from --lr-reference-batch to --batch-size: none (default), linear, or sqrt "
                        "(the rule for Adam-type optimisers)")
    p.add_argument("--lr-reference-batch", type=int, default=None,
                   help="the batch size --lr was chosen for (8, the paper GPU runs)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--time-budget", dest="time_budget_minutes", type=float, default=None,
                   help="minutes per fold: the epochs that fit are set after the first one (at most --epochs)")
    p.add_argument("--device", choices=("auto", "cpu"), default="auto", help="cpu: never use a GPU")
    p.add_argument("--cache-dir", default=None,
                   help="cpu recipe: embedding cache folder (default: $PSFH_CACHE or ~/.cache/psfh)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images (smoke runs)")
    p.add_argument("--ids-file", type=Path, default=None, help="train only on these ids (one per line), e.g. to keep a test set out")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoints")
    p.add_argument("--init-adapters", default=None, metavar="PACKAGE",
                   help="warm start: begin each fold from this package's adapter of the same name (folder or hub "
                        "id; the same LoRA form), not from scratch (psfh.training.warm_start)")
    p.add_argument("--init-from", default=None, metavar="ADAPTER",
                   help="with --init-adapters: start from this adapter of the package (e.g. fold_0 for a student) "
                        "instead of the one named like the adapter trained")
    p.add_argument("--distil-from", default=None, metavar="PACKAGE",
                   help="train ONE adapter, 'student', on every frame from the expert labels and this package's "
                        "fold ensemble (folds x flip, its soft labels): knowledge distillation (psfh.training.student)")
    p.add_argument("--distil-weight", type=float, default=None,
                   help="with --distil-from: weight of the ensemble's soft labels against the expert's (0.5)")
    p.add_argument("--soup", choices=("default", "kept", "none"), default="default",
                   help="after the folds, add their soup (one adapter, the mean of the folds' weight changes: "
                        "psfh.model.soup) and make it what predictions use (default), add it beside the "
                        "ensemble (kept), or not (none)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    args = parse_args(argv)
    # ---- config -------------------------------------------------------------------------
    config = preset(args.recipe, base=args.base, base_package=args.base_package, n_folds=args.n_folds,
                    block_size=args.block_size, holdout=args.holdout, epochs=args.epochs, batch_size=args.batch_size,
                    learning_rate=args.learning_rate, encoder_rank=args.encoder_rank, encoder_scope=args.encoder_scope,
                    time_budget_minutes=args.time_budget_minutes,
                    decoder_rank=args.decoder_rank, decoder=args.decoder, augment=args.augment,
                    mixed_precision=args.mixed_precision, ps_moment_weight=args.ps_moment_weight,
                    seed=args.seed, cache_dir=args.cache_dir, augment_on=args.augment_on,
                    channels_last=args.channels_last, compile=args.compile, lr_scaling=args.lr_scaling,
                    lr_reference_batch=args.lr_reference_batch,
                    distil_weight=(args.distil_weight if args.distil_weight is not None else 0.5) if args.distil_from
                    else None)
    if args.init_from and not args.init_adapters:
        raise PSFHInputError("--init-from names an adapter of the --init-adapters package: give that too")
    if args.distil_from:
        check_student_options(config, args)
    elif args.distil_weight is not None:
        raise PSFHInputError("--distil-weight needs --distil-from (the teacher package)")
    if config.lr_reference_batch < 1 or config.batch_size < 1:
        raise PSFHInputError("--batch-size and --lr-reference-batch must be at least 1")
    if config.lr_scaling != "none":  # the rate used, recorded beside the rule and the rate it came from
        config = replace(config, learning_rate=scaled_learning_rate(config.learning_rate, config.batch_size,
                                                                    config.lr_reference_batch, config.lr_scaling),
                         base_learning_rate=config.learning_rate)
    if config.recipe == "cpu" and config.augment_on != "cpu":
        raise PSFHInputError("--augment-on device is for the paper recipe (images); the cpu recipe augments "
                             "cached embeddings")
    if config.ps_moment_weight < 0:
        raise PSFHInputError(f"--ps-moment-weight must be 0 or more, not {config.ps_moment_weight}")
    if config.time_budget_minutes is not None and config.time_budget_minutes <= 0:
        raise PSFHInputError(f"--time-budget must be a positive number of minutes, not {config.time_budget_minutes}")
    if config.decoder == "whole" and args.decoder_rank is not None:
        raise PSFHInputError(f"--decoder-rank {args.decoder_rank}: the whole decoder trains every weight, no LoRA "
                             "rank to set (add --decoder lora for decoder LoRA)")
    if config.recipe == "cpu" and config.encoder_rank:
        raise PSFHInputError("the cpu recipe trains on cached embeddings: the encoder must stay frozen (--rank 0)")
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=args.device == "cpu")
    torch.manual_seed(config.seed)
    if accelerator.num_processes > 1 and accelerator.is_main_process:
        print(f"data-parallel training on {accelerator.num_processes} processes ({accelerator.distributed_type.value}, "
              f"{accelerator.device.type})")
    out = args.out

    # ---- data ---------------------------------------------------------------------------
    wanted = read_ids_file(args.ids_file) if args.ids_file else None
    if args.data.is_file():
        ids, images, labels = load_pack(args.data)
        keep = [n for n, i in enumerate(ids) if wanted is None or i in set(wanted)][: args.limit]
        ids, images, labels = [ids[n] for n in keep], images[keep], labels[keep]
    else:
        samples = select_samples(find_samples(args.data), wanted, args.limit)
        validate_samples(samples, progress=args.progress)
        ids, images, labels = load_arrays(samples, progress=args.progress)

    # ---- folds --------------------------------------------------------------------------
    linked = find_duplicate_images(ids, images)  # identical frames stay on one side of a split
    test_ids: list[str] = []
    if config.holdout > 0:
        outer = make_folds(ids, n_folds=round(1 / config.holdout), block_size=config.block_size,
                           seed=config.seed, linked=linked)
        test_ids = [i for i in ids if outer[i] == 0]
    cv_ids = [i for i in ids if i not in set(test_ids)]
    if args.distil_from:  # one adapter, trained on every frame: its "fold" holds out none
        fold_names, assignment = [STUDENT], {i: -1 for i in cv_ids}
    else:
        assignment = make_folds(cv_ids, n_folds=config.n_folds, block_size=config.block_size, seed=config.seed,
                                linked=[[i for i in group if i in set(cv_ids)] for group in linked])
        fold_names = [fold_name(k) for k in range(config.n_folds)]
    if args.fold is not None and not 0 <= args.fold < config.n_folds:
        raise PSFHInputError(f"--fold {args.fold}: folds are numbered 0 to {config.n_folds - 1}")
    to_train = [args.fold] if args.fold is not None else list(range(len(fold_names)))
    init_package = resolve_package(args.init_adapters) if args.init_adapters else None
    teacher_package = resolve_package(args.distil_from) if args.distil_from else None  # a bad name fails now

    # ---- model: one shared base, one adapter per fold -------------------------------------
    lora = make_lora_config(config.encoder_rank, config.decoder_rank, config.train_decoder_tokens,
                            encoder_targets=get_base(config.base).encoder_targets(config.encoder_scope),
                            decoder=config.decoder)
    base_folder = resolve_package(config.base_package) if config.base_package else None  # None: the registry's
    model = PSFHModel.from_base(config.base, fold_names, lora, device=accelerator.device, base_folder=base_folder)
    size = model.config.input_size
    init_tensors = {}  # fold -> its starting weights, read and checked here, before any work
    if init_package is not None:
        init_tensors = {fold_names[k]: check_same_form(model.network, fold_names[k], init_package, args.init_from)
                        for k in to_train}
    if labels.shape[-2:] != (size, size):  # images go to the model's grid where inference puts them
        labels = np.stack([resize_label(label, size) for label in labels])

    # ---- batches: cached embeddings (cpu) or augmented images (paper) ---------------------
    with accelerator.main_process_first():  # under DDP the others then read the cache the first one wrote
        source = _make_source(config, model, ids, images, labels, args.progress and accelerator.is_main_process,
                              accelerator.device)
    teacher = None
    if args.distil_from:  # the teacher's soft labels of every frame, once, before training
        teacher = load_teacher(teacher_package, model, accelerator.device)
        source.set_soft_labels(teacher_probabilities(teacher, source, config.mixed_precision, args.progress))

    # ---- one training loop per fold ------------------------------------------------------
    index_of = {i: n for n, i in enumerate(ids)}
    results, warm_start = {}, {}
    for k in to_train:
        fold = fold_names[k]
        if args.resume and (out / fold / "metrics.json").is_file():
            print(f"{fold}: already trained, skipped")
            continue
        train_idx = torch.tensor([index_of[i] for i in cv_ids if assignment[i] != k])
        val_idx = torch.tensor([index_of[i] for i in cv_ids if assignment[i] == k])
        if teacher is not None:  # nothing held out: the training frames are "validated" for the record only
            val_idx = train_idx
        if init_package is not None:
            warm_start[fold] = start_fold(model.network, fold, init_tensors[fold], init_package, args.init_from,
                                          [i for i in cv_ids if assignment[i] == k], holds_out=teacher is None,
                                          named=str(args.init_adapters), warn=accelerator.is_main_process)
        result = train_fold(model.network, fold, k, source, train_idx, val_idx, config, size,
                            out / "checkpoints" / fold, accelerator, resume=args.resume, progress=args.progress,
                            validate_start=init_package is not None and teacher is None, keep_best=teacher is None)
        results[fold] = result
        if accelerator.is_main_process:
            _save_fold(model, fold, result, out)

    # ---- the package --------------------------------------------------------------------
    if accelerator.is_main_process:
        done = [f for f in fold_names if (out / f / ADAPTER_WEIGHTS).is_file()]
        model.config.folds = done
        model.config.training = {"recipe": config.to_dict(), "images": len(ids), "cv_images": len(cv_ids),
                                 "test_images": len(test_ids),
                                 "seconds_per_fold": {f: r.seconds for f, r in results.items()}}
        if warm_start:
            model.config.training["warm_start"] = warm_start
        if teacher is not None:
            describe_student(model.config, teacher, args.distil_from, config.distil_weight)
        model.save_pretrained(out, folds=[])  # base + config; the adapters are already in place
        write_fold_assignment(out, {i: fold_names[assignment[i]] for i in cv_ids if assignment[i] >= 0}, test_ids)
        if set(done) == set(fold_names):
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            if args.soup != "none" and len(done) > 1 and teacher is None:
                _add_soup(out, make_default=args.soup == "default")
        print(f"package written to {out} with folds {done}")
    return 0


def _make_source(config, model, ids, images, labels, progress: bool, device):
    from psfh.training.embedding_cache import EmbeddingCache
    from psfh.training.sources import CachedEmbeddingSource, ImageSource

    labels_t = torch.as_tensor(labels)
    if config.recipe != "cpu":
        augmentation = None
        if config.augment and config.augment_on == "device":
            from psfh.training.batch_augment import BatchAugmentation  # torch only: no MONAI on the GPU machine

            augmentation = BatchAugmentation()
        elif config.augment:
            from psfh.training.augment import paper_augmentations

            augmentation = paper_augmentations()
        return ImageSource(images, labels_t, model.config.input_size, model.config.pixel_mean,
                           model.config.pixel_std, augmentation, ids=ids, device=device)
    embeddings = EmbeddingCache(model, config.cache_dir).build(ids, list(images), progress=progress)
    return CachedEmbeddingSource(embeddings, labels_t, shift_cells=config.shift_cells)


def _add_soup(out: Path, make_default: bool) -> None:
    """The fold soup from the saved folds (each fold's best epoch), written beside them."""
    package = PSFHModel.from_pretrained(out, device="cpu")
    soup = package.add_soup()
    if make_default:
        package.config.default_adapters = [soup]
    package.save_pretrained(out, folds=[soup], with_base=False)


def _save_fold(model: PSFHModel, fold: str, result, out: Path) -> None:
    """The fold's best adapter (peft safetensors) and its metrics (JSON and CSV)."""
    staging = out / f".{fold}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.network.save_pretrained(str(staging), selected_adapters=[fold])
    target = out / fold
    shutil.rmtree(target, ignore_errors=True)
    (staging / fold).rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    metrics = {"fold": fold, "best_epoch": result.best_epoch, "best_val_score": result.best_score,
               "seconds": result.seconds, "history": result.history}
    if result.start is not None:  # a warm start: the starting weights' validation (best_epoch 0: kept)
        metrics["start"] = result.start
    write_csv_atomic(target / "metrics.csv", list(result.history[0]), result.history)
    write_text_atomic(target / "metrics.json", json.dumps(metrics, indent=1))


if __name__ == "__main__":
    sys.exit(main())
