"""Training recipes: every knob of train.py with its default, in one dataclass.

Two presets:
- ``paper`` (the default; for GPUs): LoRA rank 4 on the image encoder's qkv plus the decoder
  side, images augmented on the fly with MONAI (flip, Gaussian noise, blur, zoom, affine),
  0.2 x cross-entropy + 0.8 x Dice, AdamW with linear warm-up then linear decay, 400 epochs
  (Elbatel et al., 2023; FACTS.md).
- ``cpu``: for 2 CPU cores. The encoder stays frozen, so its image embeddings are computed once
  (identity and horizontal flip) and cached; only the decoder trains, every weight of it (a full
  copy per fold, learning rate 1e-4), on the cached embeddings, with the flip as augmentation.
  Chosen by the ablation of docs/ABLATION.md: the whole decoder (variant b) beat decoder LoRA
  (variant a, 5e-4) out of fold on Dice, HD and the AoP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from psfh.core.errors import PSFHInputError


@dataclass
class TrainConfig:
    """Everything that decides a training run (saved with the package)."""

    recipe: str = "paper"
    base: str = "lite-medsam"
    base_package: str | None = None      # folder or hub id holding the base weights (None: embedded)
    n_folds: int = 5                     # cross-validation folds (one adapter each)
    block_size: int = 20                 # consecutive ids per fold block (frames of one exam)
    holdout: float = 0.0                 # fraction of id blocks kept out of training entirely (a test set)
    epochs: int = 400
    batch_size: int = 4
    learning_rate: float = 1e-4
    base_learning_rate: float | None = None  # with lr_scaling: the rate given for lr_reference_batch
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05        # of all optimiser steps
    encoder_rank: int = 4
    encoder_scope: str = "all"           # encoder LoRA on "all" qkv (paper) or the "last_stage" only
    decoder_rank: int = 16
    decoder: str = "lora"                # mask decoder: "lora" (rank decoder_rank) or "whole" (every weight)
    train_decoder_tokens: bool = True
    ce_weight: float = 0.2
    dice_weight: float = 0.8
    class_weights: tuple[float, float, float] | None = None  # background, PS, FH in Dice and CE (None: equal)
    ps_moment_weight: float = 0.0        # weight of the PS second-moment (orientation) loss (0: off; issue 25)
    distil_weight: float = 0.0          # a student (train.py --distil-from): weight of the teacher's soft labels
    shift_cells: int = 0                 # cpu recipe: random shifts of embedding and label, in embedding cells
    patience: int | None = None          # early stopping: epochs without a better validation score
    augment: bool = True
    augment_on: str = "cpu"              # "cpu": MONAI per image (data step); "device": batched torch, on the
                                         # training device (psfh.training.batch_augment; no MONAI needed)
    mixed_precision: str = "no"          # accelerate: "no", "bf16" or "fp16"
    channels_last: bool = False          # feed the encoder channels-last batches (its weights already are)
    compile: bool = False                # torch.compile the training forward (off: untested on a GPU here)
    lr_scaling: str = "none"             # learning rate for another batch size: "none", "linear" or "sqrt"
    lr_reference_batch: int = 8          # the batch size learning_rate was chosen for (paper GPU runs: 8)
    seed: int = 0
    time_budget_minutes: float | None = None  # per fold: epochs are fitted to it after the first one
    cache_dir: str | None = None         # cpu recipe: embedding cache (None: $PSFH_CACHE or ~/.cache/psfh)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "paper": TrainConfig(),
    "cpu": TrainConfig(recipe="cpu", epochs=4, batch_size=8, learning_rate=1e-4, encoder_rank=0,
                       decoder="whole"),
}


LR_SCALINGS = ("none", "linear", "sqrt")
AUGMENT_PLACES = ("cpu", "device")


def scaled_learning_rate(learning_rate: float, batch_size: int, reference_batch: int, rule: str) -> float:
    """The learning rate for ``batch_size`` when ``learning_rate`` suited ``reference_batch``:
    unchanged ("none"), times batch / reference ("linear", Goyal et al. 2017 for SGD) or times
    sqrt(batch / reference) ("sqrt", the usual rule for Adam-type optimisers, as AdamW here)."""
    if rule not in LR_SCALINGS:
        raise PSFHInputError(f"unknown learning-rate scaling {rule!r}; known: {', '.join(LR_SCALINGS)}")
    ratio = batch_size / reference_batch
    return learning_rate * {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}[rule]


def preset(name: str, **overrides) -> TrainConfig:
    """The named recipe with ``overrides`` (None values are ignored)."""
    if name not in PRESETS:
        raise PSFHInputError(f"unknown recipe {name!r}; known: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
