"""Ensemble inference: inputs of every kind, TTA, soft ensemble, largest components, bad input."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from psfh.core.errors import PSFHInputError
from psfh.io.images import load_image
from psfh.model import inference
from psfh.model.psfh_model import PSFHModel

RNG = np.random.default_rng(0)
GRAY = (RNG.random((70, 90)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model(tiny_package):
    return PSFHModel.from_pretrained(tiny_package, device="cpu")


def test_tta_views_and_undo_restore_the_image_orientation():
    pixels = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    views = inference.tta_views(pixels, tta=True)
    assert views.shape == (4, 3, 4, 5) and torch.equal(views[2:], pixels.flip(-1))
    restored = inference.undo_tta(views, tta=True)  # a "model" that returns its input
    assert restored.shape == (2, 2, 3, 4, 5)
    assert torch.equal(restored[0], pixels) and torch.equal(restored[1], pixels)
    assert torch.equal(inference.undo_tta(pixels, tta=False)[0], pixels)


def test_soft_ensemble_is_the_mean_and_disagreement_counts_dissenters():
    a = torch.tensor([0.8, 0.1, 0.1]).view(3, 1, 1)
    b = torch.tensor([0.1, 0.8, 0.1]).view(3, 1, 1)
    mean, disagreement = inference.ensemble(torch.stack([a, a, b]))
    assert torch.allclose(mean[:, 0, 0], torch.tensor([1.7, 1.0, 0.3]) / 3)
    assert disagreement.item() == pytest.approx(1 / 3)


def test_largest_component_keeps_one_blob_per_class():
    labels = np.zeros((30, 30), np.uint8)
    labels[2:12, 2:12] = 2
    labels[20:22, 20:22] = 2  # a small spurious head blob
    labels[15:17, 2:9] = 1
    labels[28, 28] = 1
    kept = inference.largest_components(labels)
    for value in (1, 2):
        assert ndimage.label(kept == value)[1] == 1
    assert kept[20, 20] == 0 and kept[5, 5] == 2 and kept[28, 28] == 0


@pytest.mark.parametrize("make", [
    lambda: GRAY,
    lambda: np.repeat(GRAY[..., None], 3, axis=2),
    lambda: GRAY.astype(np.uint16) * 200,
    lambda: GRAY.astype(np.float32) / 255.0,
    lambda: Image.fromarray(GRAY),
    lambda: np.dstack([GRAY, GRAY, GRAY, np.full_like(GRAY, 255)]),
], ids=["uint8", "rgb", "uint16", "float", "pil", "rgba"])
def test_predict_accepts_arrays_and_images_of_every_kind(model, make):
    result = model.predict(make())
    assert result.label_map.shape == GRAY.shape and result.label_map.dtype == np.uint8
    assert set(np.unique(result.label_map)) <= {0, 1, 2}
    assert result.probabilities.shape == (3,) + GRAY.shape
    assert np.allclose(result.probabilities.sum(axis=0), 1, atol=1e-4)
    assert 0 <= result.disagreement.min() and result.disagreement.max() <= 0.9 + 1e-6
    assert set(result.fold_aop_deg) == set(model.folds) and result.timings["total"] > 0


def test_intensity_scale_does_not_change_the_answer(model):
    """uint8, uint16 and float versions of the same image give the same labels (min-max scaling)."""
    reference = model.predict(GRAY).label_map
    assert np.array_equal(model.predict(GRAY.astype(np.float32) / 255.0).label_map, reference)
    assert np.array_equal(model.predict(GRAY.astype(np.uint16) * 257).label_map, reference)


def test_predict_reads_files(model, example_images, tmp_path):
    result = model.predict(example_images[0])  # the data set's 3-channel grayscale .mha
    assert result.label_map.shape == (256, 256) and result.name == example_images[0].stem
    Image.fromarray(GRAY).save(tmp_path / "scan.png")
    assert model.predict(tmp_path / "scan.png").name == "scan"


def test_the_ensemble_averages_all_folds_and_views(model):
    pixels = model.preprocess(GRAY.astype(np.float32))
    members = model.fold_probabilities(pixels, tta=True)
    assert members.shape == (3, 2, 3, 64, 64)
    single = model.fold_probabilities(pixels, folds=["fold_1"], tta=False)
    assert torch.allclose(single[0, 0], members[1, 0], atol=1e-6)
    result = model.predict(GRAY, folds=["fold_1"], tta=False)
    assert result.disagreement.max() == 0  # one member agrees with itself
    assert result.folds == ["fold_1"] and result.tta is False


def test_a_batch_ensemble_equals_each_frames_members_averaged(embedded, example_images):
    """ensemble_probabilities (the student's teacher pass) batches frames without mixing them up:
    on the real package (the tiny random model answers every input alike)."""
    frames = [embedded.preprocess(load_image(path).pixels) for path in example_images[:2]]
    folds = embedded.folds[:2]
    batched = embedded.ensemble_probabilities(torch.cat(frames), folds=folds, tta=True)
    assert batched.shape == (2, 3, 256, 256)
    for index, frame in enumerate(frames):
        alone = embedded.fold_probabilities(frame, folds=folds, tta=True).flatten(0, 1).mean(0)
        torch.testing.assert_close(batched[index], alone, atol=1e-4, rtol=0)
    assert (batched[0] - batched[1]).abs().max() > 0.5  # two different frames, two answers


def test_shared_encoder_path_equals_running_every_fold_in_full(tiny_package, monkeypatch):
    """When no adapter touches the encoder, computing its embedding once changes nothing."""
    model = PSFHModel.from_pretrained(tiny_package, device="cpu")
    model.config.lora = {**model.config.lora, "target_modules": "mask_decoder.*"}
    for fold in model.folds:  # take the encoder LoRA out of play: zero its B matrices
        model.network.set_adapter(fold)
        with torch.no_grad():
            for name, parameter in model.network.named_parameters():
                if "vision_encoder" in name and "lora_B" in name:
                    parameter.zero_()
    pixels = model.preprocess(GRAY.astype(np.float32))
    shared = model.fold_probabilities(pixels)
    assert model.encoder_scope == "none"
    monkeypatch.setattr(PSFHModel, "encoder_scope", property(lambda self: "all"))
    full = model.fold_probabilities(pixels)
    assert torch.allclose(shared, full, atol=1e-5)


@pytest.mark.slow  # builds the real LiteMedSAM base and runs it in full per fold (~20 s)
def test_last_stage_adapters_share_the_encoder_prefix_and_equal_full_passes(monkeypatch):
    """Adapters on the last TinyViT stage only: the earlier stages run once for all folds and
    views, and the answer is what a full encoder pass per fold gives."""
    from conftest import EMBEDDED, randomise_adapters

    from psfh.model.bases import get_base
    from psfh.model.lora import make_lora_config

    torch.manual_seed(0)
    lora = make_lora_config(4, 4, encoder_targets=get_base("lite-medsam").encoder_targets("last_stage"))
    model = PSFHModel.from_base("lite-medsam", ["fold_0", "fold_1"], lora, device="cpu", base_folder=EMBEDDED)
    randomise_adapters(model, scale=0.05)
    adapted = {n.split(".lora_")[0] for n, _ in model.network.named_parameters() if "vision_encoder" in n and "lora_" in n}
    assert adapted and all(".layers.3." in name for name in adapted)
    assert model.encoder_scope == "last_stage"
    assert "last stage" in model.config.trained["image_encoder"]
    pixels = model.preprocess(GRAY.astype(np.float32))
    calls = []
    encoder = model.base_model.vision_encoder
    original = encoder.forward_prefix
    monkeypatch.setattr(encoder, "forward_prefix", lambda x, n: calls.append((x.shape, n)) or original(x, n))
    assert model._shared_encoder_stages == 3
    shared = model.fold_probabilities(pixels)
    assert calls == [((2, 3, 256, 256), 3)], "one prefix pass (3 stages) for both views and all folds"
    monkeypatch.setattr(PSFHModel, "_shared_encoder_stages", property(lambda self: None))
    full = model.fold_probabilities(pixels)
    assert len(calls) == 3, "the full path runs the whole encoder once per fold"
    assert torch.allclose(shared, full, atol=1e-5)
    assert (shared[0] - shared[1]).abs().max() > 1e-3, "the two folds' last stages really differ"


@pytest.mark.slow  # builds the real LiteMedSAM base and runs it in full per fold (~10 s)
def test_paper_adapters_on_every_qkv_still_share_the_patch_embedding_and_stage_0(monkeypatch):
    """LoRA on every attention qkv leaves the convolutional stage 0 (half the encoder's cost) alone."""
    from conftest import EMBEDDED, randomise_adapters

    from psfh.model.lora import make_lora_config

    torch.manual_seed(0)
    model = PSFHModel.from_base("lite-medsam", ["fold_0", "fold_1"], make_lora_config(4, 4), device="cpu",
                                base_folder=EMBEDDED)
    randomise_adapters(model, scale=0.05)
    assert model.encoder_scope == "all" and model._shared_encoder_stages == 1
    pixels = model.preprocess(GRAY.astype(np.float32))
    shared = model.fold_probabilities(pixels, tta=False)
    monkeypatch.setattr(PSFHModel, "_shared_encoder_stages", property(lambda self: None))
    full = model.fold_probabilities(pixels, tta=False)
    assert torch.allclose(shared, full, atol=1e-5)
    assert (shared[0] - shared[1]).abs().max() > 1e-3


def test_encoder_scope_of_a_base_without_a_last_stage_split_is_refused():
    from psfh.model.bases import get_base

    with pytest.raises(PSFHInputError, match="no encoder LoRA scope 'last_stage'"):
        get_base("tiny-random").encoder_targets("last_stage")
    assert get_base("tiny-random").encoder_targets("all") == get_base("lite-medsam").encoder_targets("all")


def test_concurrent_predictions_never_mix_adapters(model):
    images = [GRAY, np.ascontiguousarray(GRAY[::-1]), np.ascontiguousarray(GRAY.T)]
    requests = [(images[i % 3], [model.folds[i % 3]]) for i in range(8)]
    expected = [model.predict(image, folds=folds).probabilities for image, folds in requests]
    results = [None] * len(requests)

    def run(index):
        image, folds = requests[index]
        results[index] = model.predict(image, folds=folds).probabilities

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, expected):
        assert np.array_equal(got, want)


@pytest.mark.parametrize("bad, message", [
    (np.zeros(10), "1-D|dimension"),
    (np.zeros((0, 0)), "empty"),
    (np.zeros((20, 20, 5)), "channel"),
    (np.zeros((1, 1)), "1x1|1 x 1|small"),
    (np.full((20, 20), np.nan), "NaN"),
    (np.full((20, 20), 7.0), "constant"),
])
def test_bad_arrays_raise_one_clear_error(model, bad, message):
    with pytest.raises(PSFHInputError, match=message):
        model.predict(bad)


def test_bad_files_raise_one_clear_error_naming_the_file(model, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    for path in (empty, text, tmp_path / "missing.mha"):
        with pytest.raises(PSFHInputError, match=path.name):
            model.predict(path)


def test_unknown_folds_and_precisions_are_refused(model):
    with pytest.raises(PSFHInputError, match="fold_9"):
        model.predict(GRAY, folds=["fold_9"])
    with pytest.raises(PSFHInputError, match="precision"):
        model.predict(GRAY, precision="fp8")
