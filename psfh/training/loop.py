"""The training loop of one fold adapter: epochs, validation, best epoch, resumable checkpoints."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm

from psfh.model.inference import mask_logits
from psfh.training.checkpoint import load_checkpoint, save_checkpoint
from psfh.training.loss import dice_per_class, distillation_loss, segmentation_loss
from psfh.training.recipe import TrainConfig


@dataclass
class FoldResult:
    """What one fold's training produced."""

    fold: str
    best_epoch: int
    best_score: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    start: dict | None = None  # validation Dice of the starting weights (a warm start), else None


def epoch_generator(seed: int, fold_index: int, epoch: int) -> torch.Generator:
    """The RNG of one epoch: a pure function of (seed, fold, epoch), so resuming repeats it exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + fold_index * 10_007 + epoch)


class WarmupLinearDecay:
    """LR factor: linear warm-up over the first steps, then linear decay to 0 at ``total_steps``.

    ``total_steps`` may be shortened once training has started (a time budget: the epochs that
    fit are known after the first one); the warm-up keeps its length. Steps are optimiser steps;
    the scheduler may be stepped ``ticks_per_step`` times for each (accelerate does that under
    DDP: see :func:`train_fold`), so that the schedule is the same on any number of processes.
    """

    def __init__(self, total_steps: int, warmup_steps: int, ticks_per_step: int = 1):
        self.total_steps = total_steps
        self.warmup = max(1, warmup_steps)
        self.ticks_per_step = ticks_per_step

    def __call__(self, tick: int) -> float:
        step = tick // self.ticks_per_step
        if step < self.warmup:
            return (step + 1) / self.warmup
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup))


def warmup_then_linear_decay(optimizer, total_steps: int, warmup_fraction: float, warmup_steps: int | None = None,
                             ticks_per_step: int = 1):
    """LambdaLR over :class:`WarmupLinearDecay` (its schedule is ``scheduler.lr_lambdas[0]``): the
    warm-up lasts ``warmup_steps``, or else ``warmup_fraction`` of all steps."""
    if warmup_steps is None:
        warmup_steps = int(round(total_steps * warmup_fraction))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupLinearDecay(total_steps, warmup_steps, ticks_per_step))


def epochs_within_budget(budget_seconds: float, first_epoch_seconds: float, max_epochs: int) -> int:
    """How many epochs fit a time budget, from the first epoch's duration (at least 1)."""
    return max(1, min(max_epochs, int(budget_seconds // max(first_epoch_seconds, 1e-6))))


def shard_indices(order: torch.Tensor, rank: int, shards: int) -> torch.Tensor:
    """Process ``rank``'s share of an epoch's ``order`` under data parallelism (DDP).

    Every process gets the same number of samples, so the same number of batches: a process
    with one batch fewer would leave the others waiting in DDP's gradient all-reduce for ever.
    As torch's DistributedSampler does, the order is padded by wrapping around to a multiple of
    ``shards`` (at most ``shards - 1`` samples seen twice in the epoch). One process: ``order``.
    """
    if shards == 1:
        return order
    per_shard = math.ceil(len(order) / shards)
    padded = order.repeat(math.ceil(per_shard * shards / max(len(order), 1)))[:per_shard * shards]
    return padded[rank::shards]


def keep_frozen_statistics(network: torch.nn.Module) -> None:
    """Put every BatchNorm back in eval mode after ``network.train()``.

    The base is shared by all folds and frozen: in train mode BatchNorm would normalise with
    the batch's statistics (noisy at batch 4) and overwrite the base's running statistics,
    which are part of the shared base, not of any fold adapter.
    """
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def trainable_parameters(network) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in network.named_parameters() if p.requires_grad}


@torch.no_grad()
def validate(network, source, indices: torch.Tensor, input_size: int, batch_size: int) -> torch.Tensor:
    """Mean Dice (PS, FH) over the held-out images (identity view, no augmentation) -> (2,)."""
    network.eval()
    scores = []
    for start in range(0, len(indices), batch_size):
        inputs, labels = source.batch(indices[start:start + batch_size], None, augment=False)
        device = next(network.parameters()).device
        logits = mask_logits(network, input_size, **{k: v.to(device) for k, v in inputs.items()})
        scores.append(dice_per_class(logits.float().cpu(), labels))
    return torch.cat(scores).mean(dim=0)


def train_fold(network, fold: str, fold_index: int, source, train_indices: torch.Tensor,
               val_indices: torch.Tensor, config: TrainConfig, input_size: int, checkpoint_dir: Path,
               accelerator: Accelerator, resume: bool = False, progress: bool = True,
               validate_start: bool = False, keep_best: bool = True) -> FoldResult:
    """Train the adapter ``fold`` of a peft model on ``source[train_indices]``.

    After each epoch the held-out Dice is measured, the best epoch's adapter weights are kept,
    and a checkpoint is written; with ``config.patience`` training stops early once that many
    epochs in a row brought no better score. On return the network holds the BEST epoch's weights.
    With ``validate_start`` (a warm start: the adapter already holds trained weights) the starting
    weights are validated first and compete as "epoch 0": if no epoch beats them, they are kept.
    ``keep_best=False`` keeps the last epoch instead (a student: nothing is held out to choose by).
    """
    network.set_adapter(fold)  # peft: only this adapter's weights require grad now
    params = trainable_parameters(network)
    optimizer = torch.optim.AdamW(params.values(), lr=config.learning_rate, weight_decay=config.weight_decay)
    shard = accelerator.num_processes
    steps_per_epoch = math.ceil(len(train_indices) / (config.batch_size * shard))
    # Under a time budget the length of the run is known only after the first epoch, which is
    # therefore the warm-up; the decay is then fitted to the epochs that remain. accelerate steps a
    # prepared scheduler once per process for each optimiser step (it takes the processes' batches
    # as one larger batch): the schedule counts those ticks as one step, as on one process.
    scheduler = warmup_then_linear_decay(optimizer, steps_per_epoch * config.epochs, config.warmup_fraction,
                                         steps_per_epoch if config.time_budget_minutes else None,
                                         ticks_per_step=shard)
    schedule = scheduler.lr_lambdas[0]  # kept: accelerate wraps the scheduler
    network, optimizer, scheduler = accelerator.prepare(network, optimizer, scheduler)
    # The training forward, compiled on request (validation and saving use the network itself).
    forward_network = torch.compile(network) if config.compile else network
    loss_fn = segmentation_loss(config.ce_weight, config.dice_weight, config.class_weights, config.ps_moment_weight)
    if config.distil_weight:  # a student: the source's targets carry the teacher's probabilities
        loss_fn = distillation_loss(loss_fn, config.distil_weight)

    start_epoch, history = 0, []
    planned_epochs = config.epochs
    best_score, best_epoch = -1.0, 0
    best = {k: v.detach().clone() for k, v in params.items()}
    state = load_checkpoint(checkpoint_dir) if resume else None
    at_start = None
    if validate_start and state is None:
        dice_ps, dice_fh = validate(network, source, val_indices, input_size, config.batch_size).tolist()
        at_start = {"val_dice_ps": dice_ps, "val_dice_fh": dice_fh, "val_score": (dice_ps + dice_fh) / 2}
        best_score = at_start["val_score"]
        if accelerator.is_local_main_process:
            tqdm.write(f"{fold} start: val Dice PS {dice_ps:.4f} FH {dice_fh:.4f}")
    if state is not None:
        meta, trainable, best, optimizer_state = state
        with torch.no_grad():
            for name, value in trainable.items():
                params[name].copy_(value)
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict({**meta["scheduler"], "lr_lambdas": [None]})
        start_epoch, history = meta["epoch"], meta["history"]
        best_score, best_epoch = meta["best_score"], meta["best_epoch"]
        planned_epochs = meta.get("planned_epochs", config.epochs)
        schedule.total_steps = steps_per_epoch * planned_epochs

    started = time.perf_counter() - sum(h["seconds"] for h in history)
    budget = 60 * config.time_budget_minutes if config.time_budget_minutes else None
    epoch = start_epoch
    while epoch < planned_epochs:
        epoch_start = time.perf_counter()
        generator = epoch_generator(config.seed, fold_index, epoch)
        order = train_indices[torch.randperm(len(train_indices), generator=generator)]
        order = shard_indices(order, accelerator.process_index, shard)
        network.train()
        keep_frozen_statistics(network)
        losses, learning_rate = [], float("nan")
        bar = tqdm(range(0, len(order), config.batch_size), desc=f"{fold} epoch {epoch + 1}/{planned_epochs}",
                   disable=not (progress and accelerator.is_local_main_process), unit="batch", leave=False)
        for start in bar:
            inputs, labels = source.batch(order[start:start + config.batch_size], generator, config.augment)
            inputs = {k: v.to(accelerator.device) for k, v in inputs.items()}
            if config.channels_last and "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].contiguous(memory_format=torch.channels_last)
            with accelerator.autocast():
                logits = mask_logits(forward_network, input_size, **inputs)
            targets = labels[:, None] if labels.dim() == 3 else labels  # B x 4 x S x S: with a teacher's soft labels
            loss = loss_fn(logits.float(), targets.to(accelerator.device))
            learning_rate = scheduler.get_last_lr()[0]  # the rate this step uses
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())  # no .item() per step: it would stall a GPU's queue
            if not bar.disable:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        dice_ps, dice_fh = validate(network, source, val_indices, input_size, config.batch_size).tolist()
        score = (dice_ps + dice_fh) / 2
        if score > best_score or not keep_best:
            best_score, best_epoch = score, epoch + 1
            best = {k: v.detach().clone() for k, v in params.items()}
        history.append({"epoch": epoch + 1, "train_loss": torch.stack(losses).mean().item() if losses else float("nan"),
                        "val_dice_ps": dice_ps, "val_dice_fh": dice_fh, "val_score": score,
                        "lr_last_step": learning_rate, "seconds": time.perf_counter() - epoch_start})
        epoch += 1
        if budget is not None:
            spent = sum(h["seconds"] for h in history)
            if epoch == 1:  # fit the schedule to the epochs the budget allows
                planned_epochs = epochs_within_budget(budget, history[0]["seconds"], config.epochs)
                schedule.total_steps = steps_per_epoch * planned_epochs
            elif spent + spent / epoch > budget:  # the next epoch would overrun: stop at the best so far
                planned_epochs = epoch
        if config.patience is not None and epoch - best_epoch >= config.patience:
            planned_epochs = epoch  # early stopping: no better validation score for `patience` epochs
        if accelerator.is_local_main_process:
            tqdm.write(f"{fold} epoch {epoch}/{planned_epochs}: loss {history[-1]['train_loss']:.4f} "
                       f"val Dice PS {dice_ps:.4f} FH {dice_fh:.4f} ({history[-1]['seconds']:.1f} s)")
            save_checkpoint(checkpoint_dir, epoch, params, best, optimizer, scheduler,
                            {"history": history, "best_score": best_score, "best_epoch": best_epoch, "fold": fold,
                             "planned_epochs": planned_epochs})

    with torch.no_grad():
        for name, value in best.items():
            params[name].copy_(value)
    return FoldResult(fold, best_epoch, best_score, history, time.perf_counter() - started, at_start)
