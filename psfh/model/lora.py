"""LoRA adapters (peft) for a SamModel base: what a fold adapter trains.

The paper adapts the image encoder with rank-4 LoRA on each attention block's ``qkv``. Without
prompts the mask decoder must also learn to emit background / PS / FH from its three multimask
outputs, so the decoder side trains too: LoRA on the two-way transformer's and the output
hypernetworks' linear layers, plus the (tiny) output tokens and the dense no-prompt embedding as
full copies (peft ``modules_to_save``). Keeping the decoder in LoRA form keeps a fold's file
around 2 MB instead of the 16 MB of a full decoder copy.

Or the whole mask decoder trains, every weight (``decoder="whole"``, the SAMed-style setup the
paper builds on): each fold keeps its own full copy (peft ``modules_to_save``), about 16 MB in
float32. On 2 CPU cores it beats decoder LoRA on every out-of-fold measure but the challenge's AoP
(docs/ABLATION.md, variant b), so the CPU recipe uses it.
"""

from __future__ import annotations

from peft import LoraConfig

from psfh.core.errors import PSFHInputError

ENCODER_QKV = r"vision_encoder\..*\.qkv"
DECODER_LINEARS = (r"mask_decoder\.(transformer\..*\.(q_proj|k_proj|v_proj|out_proj|lin1|lin2)"
                   r"|output_hypernetworks_mlps\.\d+\.(proj_in|proj_out|layers\.\d+))")
DECODER_TOKENS = ["mask_tokens", "iou_token", "no_mask_embed"]
DECODER_PATTERN_KEY = r"mask_decoder\..*"
DECODER_CHOICES = ("lora", "whole")
# The whole decoder as full copies; its output tokens live inside it, the no-prompt embedding does not.
WHOLE_DECODER = ["mask_decoder", "no_mask_embed"]
# peft needs at least one LoRA target. With the encoder frozen and the whole decoder copied, that
# is the prompt encoder's mask-input convolution: its LoRA starts at zero and no pass psfh runs
# (prompt-free or box-prompted) uses mask inputs, so it never changes an output.
PLACEHOLDER_TARGET = r"prompt_encoder\.mask_embed\.conv1"


def make_lora_config(encoder_rank: int = 4, decoder_rank: int = 16, train_decoder_tokens: bool = True,
                     alpha_ratio: float = 1.0, dropout: float = 0.0, encoder_targets: str = ENCODER_QKV,
                     decoder: str = "lora") -> LoraConfig:
    """The peft LoraConfig of a fold adapter.

    Args:
        encoder_rank: LoRA rank on the encoder's qkv (0: the encoder stays frozen, as in the CPU recipe).
        decoder_rank: LoRA rank on the mask decoder's linear layers (0: decoder LoRA off; not
            used with ``decoder="whole"``).
        train_decoder_tokens: fully train the decoder's output tokens and no-prompt embedding.
        alpha_ratio: lora_alpha = alpha_ratio * rank (peft scales updates by alpha / rank).
        encoder_targets: peft regex of the encoder layers to adapt (the base registry's
            ``encoder_targets(scope)``; default every attention qkv, as the paper).
        decoder: "lora" (LoRA on its linear layers) or "whole" (every decoder weight trained, a
            full copy per fold).
    """
    if decoder not in DECODER_CHOICES:
        raise PSFHInputError(f"decoder={decoder!r}: choose one of {', '.join(DECODER_CHOICES)}")
    if decoder == "whole":
        rank = encoder_rank or 1
        return LoraConfig(r=rank, lora_alpha=alpha_ratio * rank, lora_dropout=dropout,
                          target_modules=encoder_targets if encoder_rank > 0 else PLACEHOLDER_TARGET,
                          modules_to_save=list(WHOLE_DECODER), bias="none")
    targets = []
    if encoder_rank > 0:
        targets.append(encoder_targets)
    if decoder_rank > 0:
        targets.append(DECODER_LINEARS)
    if not targets:
        raise PSFHInputError("a fold adapter needs LoRA on the encoder, the decoder, or both")
    rank = encoder_rank or decoder_rank
    rank_pattern, alpha_pattern = {}, {}
    if encoder_rank and decoder_rank and decoder_rank != encoder_rank:
        # peft matches a key as the tail of a module name: this one selects the decoder layers.
        rank_pattern = {DECODER_PATTERN_KEY: decoder_rank}
        alpha_pattern = {DECODER_PATTERN_KEY: alpha_ratio * decoder_rank}
    return LoraConfig(
        r=rank,
        lora_alpha=alpha_ratio * rank,
        lora_dropout=dropout,
        target_modules="|".join(f"(?:{t})" for t in targets) if len(targets) > 1 else targets[0],
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        modules_to_save=list(DECODER_TOKENS) if train_decoder_tokens else None,
        bias="none",
    )


def encoder_scope(lora_config: LoraConfig | dict, last_stage_targets: str | None) -> str:
    """Which part of the image encoder a fold adapter changes: "none", "last_stage" or "all".

    ``last_stage_targets`` is the base registry's regex for its last stage
    (:attr:`psfh.model.bases.BaseSpec.last_stage_lora_targets`).
    """
    if not adapts_encoder(lora_config):
        return "none"
    targets = lora_config["target_modules"] if isinstance(lora_config, dict) else lora_config.target_modules
    if last_stage_targets and isinstance(targets, str) and last_stage_targets in targets and ENCODER_QKV not in targets:
        return "last_stage"
    return "all"


def adapts_encoder(lora_config: LoraConfig | dict) -> bool:
    """True when the adapter changes the image encoder (so its embeddings differ per fold)."""
    targets = lora_config["target_modules"] if isinstance(lora_config, dict) else lora_config.target_modules
    if isinstance(targets, (list, set, tuple)):
        return any("vision_encoder" in t or t in ("qkv",) for t in targets)
    return "vision_encoder" in str(targets)


def describe(lora_config: LoraConfig) -> dict:
    """Plain-words record of what a fold adapter trains (stored in the package config)."""
    decoder_rank = (lora_config.rank_pattern or {}).get(DECODER_PATTERN_KEY, lora_config.r)
    targets = str(lora_config.target_modules)
    return {
        "image_encoder": (("frozen" if "vision_encoder" not in targets
                           else f"LoRA rank {lora_config.r} on attention qkv" if ENCODER_QKV in targets
                           else f"LoRA rank {lora_config.r} on the last stage's linear layers; earlier stages "
                                "frozen and shared by all folds")),
        "mask_decoder": ("every weight trained (a full copy per fold)"
                         if "mask_decoder" in (lora_config.modules_to_save or [])
                         else f"LoRA rank {decoder_rank} on its linear layers" if "mask_decoder" in targets
                         else "frozen"),
        "fully_trained": list(lora_config.modules_to_save or []),
        "prompt_encoder": "frozen (no prompts are used)",
    }
