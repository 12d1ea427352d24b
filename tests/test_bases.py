"""The base registry: LiteMedSAM as a SamModel, tiny-random, and the stock SAM hub bases."""

import pytest
import torch
from transformers import SamConfig, SamModel

from psfh.core.errors import PSFHInputError
from psfh.model.bases import BASES, IMAGENET_MEAN, build_tiny_random, count_parameters, get_base, resize_sam_input
from psfh.model.tiny_vit import TinyViTVisionEncoder


def test_registry_names_every_base_of_the_design():
    assert {"lite-medsam", "tiny-random", "facebook/sam-vit-base", "facebook/sam-vit-large",
            "facebook/sam-vit-huge"} <= set(BASES)
    with pytest.raises(PSFHInputError, match="known bases"):
        get_base("sam-vit-gigantic")


def test_hub_bases_use_the_papers_512_input_and_sam_normalisation():
    huge = get_base("facebook/sam-vit-huge")
    assert huge.hub_id == "facebook/sam-vit-huge" and huge.input_size == 512
    assert huge.pixel_mean == IMAGENET_MEAN
    assert get_base("lite-medsam").hub_id is None  # embedded weights


def test_lite_medsam_is_a_sam_model_with_litemedsams_parameter_counts(lite_medsam_base):
    assert isinstance(lite_medsam_base, SamModel)
    assert isinstance(lite_medsam_base.vision_encoder, TinyViTVisionEncoder)
    # FACTS.md: encoder 5.73 M, decoder 4.06 M, prompt encoder 0.006 M parameters
    assert abs(count_parameters(lite_medsam_base.vision_encoder) / 1e6 - 5.73) < 0.02
    assert abs(count_parameters(lite_medsam_base.mask_decoder) / 1e6 - 4.06) < 0.02
    assert count_parameters(lite_medsam_base.prompt_encoder) < 0.01e6
    with torch.no_grad():
        embedding = lite_medsam_base.get_image_embeddings(torch.rand(1, 3, 256, 256))
        masks = lite_medsam_base(image_embeddings=embedding, multimask_output=True).pred_masks
    assert embedding.shape == (1, 256, 64, 64)
    assert masks.shape == (1, 1, 3, 256, 256)  # no prompt at all: three outputs = background / PS / FH


def test_tiny_random_is_deterministic_and_small():
    a, b = build_tiny_random(), build_tiny_random()
    assert count_parameters(a) < 300_000
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def _small_vit_sam(image_size: int) -> SamModel:
    config = SamConfig()
    config.vision_config.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                                      image_size=image_size, patch_size=16, global_attn_indexes=[1], window_size=2,
                                      output_channels=32, num_pos_feats=16))
    config.prompt_encoder_config.update(dict(hidden_size=32, image_size=image_size, patch_size=16))
    config.prompt_encoder_config.image_embedding_size = image_size // 16
    config.mask_decoder_config.update(dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32))
    torch.manual_seed(0)
    model = SamModel(config).eval()
    with torch.no_grad():
        model.vision_encoder.pos_embed.normal_()
        for layer in model.vision_encoder.layers:
            layer.attn.rel_pos_h.normal_()
    return model


def test_resizing_a_vit_sam_to_a_new_input_size_keeps_it_working():
    """The paper runs ViT-H (1024 native) at 512: position embeddings follow the new grid."""
    model = _small_vit_sam(128)  # 8 x 8 grid
    resized = resize_sam_input(model, 64)  # 4 x 4 grid
    assert resized.config.vision_config.image_size == 64
    assert resized.vision_encoder.pos_embed.shape == (1, 4, 4, 32)
    global_layer = resized.vision_encoder.layers[1].attn
    assert global_layer.rel_pos_h.shape[0] == 2 * 4 - 1
    windowed = resized.vision_encoder.layers[0].attn
    assert torch.equal(windowed.rel_pos_h, model.vision_encoder.layers[0].attn.rel_pos_h)
    # a constant field stays constant under interpolation: the resize is an interpolation, not a reset
    assert torch.allclose(resized.vision_encoder.pos_embed.mean(), model.vision_encoder.pos_embed.mean(), atol=0.2)
    with torch.no_grad():
        masks = resized(pixel_values=torch.rand(1, 3, 64, 64), multimask_output=True).pred_masks
    assert masks.shape == (1, 1, 3, 16, 16)
    assert resize_sam_input(model, 128) is model
    with pytest.raises(PSFHInputError, match="multiple of the patch size"):
        resize_sam_input(model, 100)
