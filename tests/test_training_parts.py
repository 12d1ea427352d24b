"""Pieces of the CPU recipe: the persistent embedding cache, grid shifts, early stopping, the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfh.core.errors import PSFHInputError
from psfh.model import inference
from psfh.model.lora import make_lora_config
from psfh.model.package import base_key
from psfh.model.psfh_model import PSFHModel
from psfh.training.embedding_cache import FORMAT, EmbeddingCache
from psfh.training.sources import CachedEmbeddingSource, ImageSource, shift_2d


@pytest.fixture
def decoder_only_model():
    torch.manual_seed(0)
    return PSFHModel.from_base("tiny-random", ["fold_0"], make_lora_config(0, 4), device="cpu")


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (48, 40)).astype(np.uint8) for _ in range(count)]


def test_the_cache_holds_both_tta_views_and_never_encodes_a_frame_twice(decoder_only_model, tmp_path, monkeypatch,
                                                                        one_torch_thread):
    model, images = decoder_only_model, _images(3)
    cache = EmbeddingCache(model, tmp_path)
    embeddings = cache.build(["a", "b", "c"], images, progress=False)
    assert set(embeddings) == {"identity", "hflip"} and embeddings["identity"].shape[0] == 3
    with torch.no_grad():
        views = inference.tta_views(model.preprocess(images[1]), True)
        expected = model.base_model.get_image_embeddings(views)
    assert torch.allclose(embeddings["identity"][1].float(), expected[0], atol=2e-2)  # stored as bfloat16
    assert torch.allclose(embeddings["hflip"][1].float(), expected[1], atol=2e-2)
    assert len(list(cache.folder.rglob("*.safetensors"))) == 3

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran for a cached frame")

    monkeypatch.setattr(model.base_model, "get_image_embeddings", no_encoder)
    again = EmbeddingCache(model, tmp_path).build(["x", "y", "z"], images, progress=False)  # other ids, same frames
    assert torch.equal(again["identity"], embeddings["identity"])


def test_the_cache_is_keyed_by_the_base_weights(decoder_only_model, tmp_path):
    before = base_key(decoder_only_model, FORMAT)
    with torch.no_grad():
        next(decoder_only_model.base_model.vision_encoder.parameters()).add_(1e-3)
    assert base_key(decoder_only_model, FORMAT) != before and before.startswith("tiny-random-")


def test_a_damaged_cache_file_is_computed_again(decoder_only_model, tmp_path, one_torch_thread):
    cache = EmbeddingCache(decoder_only_model, tmp_path)
    first = cache.views(_images(1)[0])
    assert torch.equal(cache.views(_images(1)[0]), first), "computed and cached give the same values"
    (path,) = cache.folder.rglob("*.safetensors")
    path.write_bytes(b"not safetensors")
    assert torch.equal(cache.views(_images(1)[0]), first)


def test_grid_shifts_move_embedding_and_label_together():
    embedding = torch.zeros(1, 2, 8, 8)
    embedding[0, :, 2, 3] = 1.0
    label = torch.zeros(1, 32, 32, dtype=torch.uint8)
    label[0, 8:12, 12:16] = 1  # the 4 x 4 pixels under embedding cell (2, 3)
    source = CachedEmbeddingSource({"identity": embedding, "hflip": embedding.flip(-1)}, label, shift_cells=2)
    seen = set()
    for seed in range(20):
        inputs, labels = source.batch(torch.tensor([0]), torch.Generator().manual_seed(seed), augment=True)
        hot = inputs["image_embeddings"][0, 0].nonzero()
        block = labels[0].nonzero()
        if len(hot):
            (y, x), = hot.tolist()
            assert block.min(0).values.tolist() == [4 * y, 4 * x] and len(block) == 16
            seen.add((y, x))
    assert len(seen) > 3, "the shifts vary"
    assert shift_2d(torch.ones(4, 4), 5, 0).sum() == 0


def test_patience_stops_training_once_validation_stops_improving(decoder_only_model, tmp_path, one_torch_thread):
    from accelerate import Accelerator

    from psfh.training.loop import train_fold
    from psfh.training.recipe import preset

    model = decoder_only_model
    embeddings = torch.randn(4, 32, 8, 8)
    labels = torch.zeros(4, 64, 64, dtype=torch.uint8)
    labels[:, 20:40, 20:40] = 2
    source = CachedEmbeddingSource({"identity": embeddings, "hflip": embeddings.flip(-1)}, labels)
    config = preset("cpu", epochs=10, batch_size=2, learning_rate=0.0, patience=2)  # nothing can improve
    result = train_fold(model.network, "fold_0", 0, source, torch.arange(4), torch.arange(4), config, 64,
                        tmp_path / "checkpoints", Accelerator(cpu=True), progress=False)
    assert result.best_epoch == 1 and len(result.history) == 3


def test_class_weights_make_the_loss_count_a_missed_ps_more():
    from psfh.training.loss import segmentation_loss

    labels = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    labels[0, 0, :2, :2] = 1
    logits = torch.zeros(1, 3, 8, 8)
    logits[:, 0] = 5.0  # predicts background everywhere: the PS is missed
    plain = segmentation_loss()(logits, labels)
    weighted = segmentation_loss(class_weights=(1.0, 3.0, 1.0))(logits, labels)
    assert weighted > plain


def test_the_decoder_is_trained_as_lora_or_whole_and_nothing_else():
    from psfh.core.errors import PSFHInputError
    from psfh.model.lora import describe

    whole = make_lora_config(0, 16, decoder="whole")
    assert "mask_decoder" in whole.modules_to_save and describe(whole)["mask_decoder"].startswith("every weight")
    assert describe(make_lora_config(0, 16))["mask_decoder"] == "LoRA rank 16 on its linear layers"
    with pytest.raises(PSFHInputError, match="decoder='full'"):
        make_lora_config(0, 16, decoder="full")


@pytest.mark.parametrize("shape", [(32, 32), (50, 70), (80, 64)])
def test_training_sees_an_image_as_inference_prepares_it(shape):
    # One preprocessing for both: min-max scale, then resize to the model's grid (no uint8 rounding
    # in between), then normalise.
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    image = np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8)
    source = ImageSource([image], torch.zeros(1, 32, 32, dtype=torch.uint8), 32, mean, std)
    batch, _ = source.batch(torch.tensor([0]), None, augment=False)
    assert torch.equal(batch["pixel_values"][0], inference.preprocess(image, 32, mean, std)[0])


def test_a_constant_training_image_is_refused_by_name():
    with pytest.raises(PSFHInputError, match="frame_7: the image is constant"):
        ImageSource([np.full((32, 32), 9, np.uint8)], torch.zeros(1, 32, 32, dtype=torch.uint8), 32,
                    (0.5,) * 3, (0.2,) * 3, ids=["frame_7"])
