"""Registry of base models: every base is a ``transformers.SamModel``.

Like segment-anything's ``sam_model_registry``, a base is one named entry that says how to build
the network and how to feed it. Adding a variant is one entry, not a new code path.

- ``lite-medsam``: LiteMedSAM (Ma et al. 2024; TinyViT encoder, :mod:`psfh.model.tiny_vit`)
  with HF's own prompt encoder and mask decoder; its weights live in a package's
  ``base/model.safetensors`` (made by :mod:`psfh.model.convert`), by default the embedded package's.
- ``facebook/sam-vit-base|large|huge``: stock SAM from the hub (or the local HF cache offline),
  with the position embeddings resized to the package's input size (the paper: ViT-H at 512).
- ``tiny-random``: a tiny randomly initialised SAM for tests and smoke runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import SamConfig, SamModel

from psfh.core.errors import PSFHInputError
from psfh.model.lora import ENCODER_QKV
from psfh.model.tiny_vit import TinyViTConfig, TinyViTVisionEncoder

# The package that ships with psfh, and holds the LiteMedSAM weights.
# The embedded package: the repository's models/ folder in a source checkout (or an editable
# install); `pip install .` copies that folder into psfh/model/embedded (pyproject.toml).
_SOURCE_TREE_PACKAGE = Path(__file__).resolve().parents[2] / "models" / "psfh-lite-medsam"
_INSTALLED_PACKAGE = Path(__file__).resolve().parent / "embedded"
EMBEDDED_PACKAGE_DIR = _SOURCE_TREE_PACKAGE if _SOURCE_TREE_PACKAGE.is_dir() else _INSTALLED_PACKAGE
WEIGHT_SOURCES = ("package", "hub", "random")

# Images are scaled to [0, 1] first; these then normalise them per channel.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BaseSpec:
    """How to build one base and feed it.

    Attributes:
        name: registry name (or hub id).
        build: ``build(input_size, revision=None) -> SamModel``: random or hub weights at that size.
        input_size: default side of the square input in pixels.
        weights: where the trained weights come from: "package" (a package's
            ``base/model.safetensors``, by default ``default_package``'s), "hub" (``hub_id``) or
            "random" (``build`` makes them; tests).
        pixel_mean / pixel_std: per-channel normalisation of a [0, 1] image.
        hub_id: the hub repository holding the weights ("hub" bases).
        default_package: the package holding the weights of a "package" base when none is named.
        last_stage_lora_targets: peft regex for the linear layers of the encoder's last stage only
            (the shared-prefix variant: every earlier layer stays frozen and shared by all folds),
            or None when the base has no such split.
        channels_last: run the image encoder in channels-last memory layout (its convolutions
            are faster so on CPU).
    """

    name: str
    build: Callable[..., SamModel]
    input_size: int
    weights: str
    pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hub_id: str | None = None
    default_package: Path | None = None
    last_stage_lora_targets: str | None = None
    channels_last: bool = False

    def __post_init__(self):
        if self.weights not in WEIGHT_SOURCES:  # a registry typo must not fall through to "hub"
            raise ValueError(f"base {self.name!r}: weights must be one of {WEIGHT_SOURCES}, not {self.weights!r}")

    def encoder_targets(self, scope: str) -> str:
        """The peft regex of the encoder layers a fold adapter adapts: scope "all" (every attention
        qkv, the paper's LoRA target) or "last_stage"."""
        if scope == "all":
            return ENCODER_QKV
        if scope == "last_stage" and self.last_stage_lora_targets:
            return self.last_stage_lora_targets
        raise PSFHInputError(f"base {self.name!r} has no encoder LoRA scope {scope!r} "
                             f"(known: all{', last_stage' if self.last_stage_lora_targets else ''})")


def _sam_config_for_custom_encoder(input_size: int, embedding_size: int) -> SamConfig:
    """A SamConfig whose own ViT is a throw-away placeholder (replaced by a custom encoder).

    The prompt encoder and the positional embedding must describe the real embedding grid
    (``embedding_size`` x ``embedding_size``) for an ``input_size`` image.
    """
    patch = input_size // embedding_size
    config = SamConfig()
    config.vision_config.update(dict(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=1, mlp_dim=16, image_size=input_size,
        patch_size=patch, global_attn_indexes=[0], output_channels=256,
    ))
    config.prompt_encoder_config.update(dict(image_size=input_size, patch_size=patch))
    config.prompt_encoder_config.image_embedding_size = embedding_size
    # segment-anything's two-way transformer uses nn.LayerNorm's default eps (1e-5); HF's config
    # default is 1e-6, which moves LiteMedSAM's mask logits by ~1e-2.
    config.mask_decoder_config.layer_norm_eps = 1e-5
    return config


def build_lite_medsam(input_size: int = 256, revision: str | None = None) -> SamModel:
    """LiteMedSAM as a SamModel (random weights; load ``base/model.safetensors`` on top)."""
    if input_size != 256:
        raise PSFHInputError("lite-medsam works at 256 x 256 only (its encoder hard-codes the 64 x 64 grid).")
    encoder = TinyViTVisionEncoder(TinyViTConfig(image_size=input_size))
    model = SamModel(_sam_config_for_custom_encoder(input_size, encoder.output_resolution))
    model.vision_encoder = encoder
    return model.eval()


def tiny_random_config(input_size: int = 64) -> SamConfig:
    """A SAM small enough for unit tests: 32-d everywhere, patch 8."""
    config = SamConfig()
    config.vision_config.update(dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, image_size=input_size,
        patch_size=8, global_attn_indexes=[1], window_size=4, output_channels=32, num_pos_feats=16,
    ))
    config.prompt_encoder_config.update(dict(hidden_size=32, image_size=input_size, patch_size=8, mask_input_channels=4))
    config.prompt_encoder_config.image_embedding_size = input_size // 8
    config.mask_decoder_config.update(dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32))
    return config


def build_tiny_random(input_size: int = 64, revision: str | None = None) -> SamModel:
    """A deterministic tiny random SamModel (seeded, so every build has the same weights)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return SamModel(tiny_random_config(input_size)).eval()


def resize_sam_input(model: SamModel, input_size: int) -> SamModel:
    """Rebuild a stock ViT SamModel for a new square input size, keeping its weights.

    The absolute position embedding (1 x G x G x C) is resized bicubically and the relative
    position tables of the global-attention layers ((2G - 1) x head_dim) linearly, the way SAM
    adaptations to other resolutions do (the paper runs ViT-H at 512 x 512: G = 32).
    """
    config = model.config
    old_size = config.vision_config.image_size
    if input_size == old_size:
        return model
    patch = config.vision_config.patch_size
    if input_size % patch:
        raise PSFHInputError(f"input size {input_size} is not a multiple of the patch size {patch}")
    grid = input_size // patch
    new_config = SamConfig.from_dict(config.to_dict())
    new_config.vision_config.image_size = input_size
    new_config.prompt_encoder_config.image_size = input_size
    new_config.prompt_encoder_config.image_embedding_size = grid
    state = model.state_dict()
    resized = {}
    for key, value in state.items():
        if key.endswith("vision_encoder.pos_embed"):
            value = F.interpolate(value.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic",
                                  align_corners=False).permute(0, 2, 3, 1).to(value.dtype)
        elif (key.endswith("rel_pos_h") or key.endswith("rel_pos_w")) and value.shape[0] == 2 * (old_size // patch) - 1:
            value = F.interpolate(value.T[None].float(), size=2 * grid - 1, mode="linear",
                                  align_corners=False)[0].T.to(value.dtype)
        resized[key] = value
    new_model = SamModel(new_config)
    new_model.load_state_dict(resized)
    return new_model.eval()


def _hub_builder(hub_id: str) -> Callable[[int], SamModel]:
    def build(input_size: int, revision: str | None = None) -> SamModel:
        model = SamModel.from_pretrained(hub_id, revision=revision, use_safetensors=True)
        return resize_sam_input(model, input_size)
    return build


BASES: dict[str, BaseSpec] = {
    # The last TinyViT stage: 2 blocks at 64 x 64 tokens, 320 dims, after most of the encoder's cost,
    # which the folds then share (docs/PERFORMANCE.md, "One-off measurements").
    "lite-medsam": BaseSpec("lite-medsam", build_lite_medsam, 256, weights="package",
                            default_package=EMBEDDED_PACKAGE_DIR,
                            last_stage_lora_targets=r"vision_encoder\.layers\.3\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))",
                            # its convolutions run faster channels-last
                            # (docs/PERFORMANCE.md, "One-off measurements")
                            channels_last=True),
    "tiny-random": BaseSpec("tiny-random", build_tiny_random, 64, weights="random"),
}
for _size in ("base", "large", "huge"):
    _hub_id = f"facebook/sam-vit-{_size}"
    BASES[_hub_id] = BaseSpec(_hub_id, _hub_builder(_hub_id), 512, "hub", IMAGENET_MEAN, IMAGENET_STD, hub_id=_hub_id)


def get_base(name: str) -> BaseSpec:
    """The registry entry for ``name``; an unknown name lists the known ones."""
    try:
        return BASES[name]
    except KeyError:
        raise PSFHInputError(f"unknown base {name!r}; known bases: {', '.join(sorted(BASES))}") from None


def count_parameters(module: torch.nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
