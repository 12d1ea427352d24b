"""The converted LiteMedSAM reproduces the original model's outputs (golden file)."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from psfh.model.convert import KEY_RENAMES, convert_state_dict

GOLDEN = Path(__file__).parent / "golden" / "lite_medsam_reference.safetensors"
TOLERANCE = 1e-4


def _outputs(base, golden):
    image = golden["input_uint8"].float().div(255.0)[None, None].repeat(1, 3, 1, 1)
    with torch.no_grad():
        embedding = base.get_image_embeddings(image)
        boxes = golden["box"].view(1, 1, 4)
        single = base(image_embeddings=embedding, input_boxes=boxes, multimask_output=False)
        multi = base(image_embeddings=embedding, input_boxes=boxes, multimask_output=True)
    return embedding, single, multi


def test_converted_lite_medsam_matches_the_original(lite_medsam_base):
    golden = load_file(str(GOLDEN))
    embedding, single, multi = _outputs(lite_medsam_base, golden)
    checks = {
        "embedding_first_channels": embedding[0, :4],
        "single_mask_logits": single.pred_masks[0, 0, 0],
        "single_iou": single.iou_scores[0, 0],
        "multimask_logits_every_4th_pixel": multi.pred_masks[0, 0, :, ::4, ::4],
        "multimask_iou": multi.iou_scores[0, 0],
    }
    for key, value in checks.items():
        reference = golden[key].reshape(value.shape)
        difference = (value - reference).abs().max().item()
        assert difference <= TOLERANCE, f"{key}: max abs difference {difference:.2e} > {TOLERANCE}"
    # The reference really is a segmentation of this image, not all-zero logits.
    assert golden["single_mask_logits"].abs().max() > 1.0


def test_golden_check_catches_a_wrong_weight(lite_medsam_base):
    """A perturbed decoder weight must break the comparison (the test can fail)."""
    golden = load_file(str(GOLDEN))
    layer = lite_medsam_base.mask_decoder.output_hypernetworks_mlps[0].proj_out
    original = layer.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.weight.add_(0.01)
        _, single, _ = _outputs(lite_medsam_base, golden)
        difference = (single.pred_masks[0, 0, 0] - golden["single_mask_logits"]).abs().max().item()
        assert difference > TOLERANCE
    finally:
        with torch.no_grad():
            layer.weight.copy_(original)


def test_key_renames_cover_the_sam_layouts():
    original = {
        "image_encoder.neck.0.weight": torch.zeros(1),
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.zeros(2, 4),
        "prompt_encoder.mask_downscaling.4.bias": torch.zeros(1),
        "mask_decoder.transformer.layers.1.norm3.weight": torch.zeros(1),
        "mask_decoder.output_hypernetworks_mlps.2.layers.1.weight": torch.zeros(1),
        "mask_decoder.iou_prediction_head.layers.2.bias": torch.zeros(1),
        "image_encoder.layers.0.blocks.0.conv1.bn.num_batches_tracked": torch.zeros(1),
    }
    converted = convert_state_dict(original)
    assert set(converted) == {
        "vision_encoder.neck.0.weight",
        "shared_image_embedding.positional_embedding",
        "prompt_encoder.shared_embedding.positional_embedding",
        "prompt_encoder.mask_embed.layer_norm2.bias",
        "mask_decoder.transformer.layers.1.layer_norm3.weight",
        "mask_decoder.output_hypernetworks_mlps.2.layers.0.weight",
        "mask_decoder.iou_prediction_head.proj_out.bias",
    }
    assert len(KEY_RENAMES) > 10


def test_batchnorm_folding_and_channels_last_change_nothing(lite_medsam_base):
    """The inference optimisations of the encoder give the reference (unfolded, NCHW) answer."""
    import copy

    from psfh.model.tiny_vit import TinyViTConfig, TinyViTVisionEncoder

    image = load_file(str(GOLDEN))["input_uint8"].float().div(255.0)[None, None].repeat(1, 3, 1, 1)
    encoder = lite_medsam_base.vision_encoder
    assert encoder.config.fold_batchnorm, "bases fold BatchNorm at inference by default"
    unfolded = TinyViTVisionEncoder(TinyViTConfig(fold_batchnorm=False))
    unfolded.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        optimised = copy.deepcopy(encoder).to(memory_format=torch.channels_last)(image).last_hidden_state
        reference = unfolded.eval()(image).last_hidden_state
    assert (optimised - reference).abs().max().item() <= 1e-4
