"""psfh.model.merged_folds: a fold's encoder LoRA merged into plain weights gives peft's unmerged answer,
leaves the shared base as it was, and follows the adapters when they change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfh.model.merged_folds import MergedFoldWeights
from psfh.model.psfh_model import PSFHModel

IMAGE = (np.random.default_rng(3).random((80, 96)) * 255).astype(np.uint8)
# The real LiteMedSAM base with random folds, run merged and unmerged (~25 s on 2 cores): the full
# suite's; the quick tier's golden test runs the shipped package through the merged path.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    """LiteMedSAM with two random folds of LoRA on every attention qkv (the shipped package's
    layout; the tiny random base's encoder barely reaches its outputs, so it could not tell)."""
    from conftest import EMBEDDED, randomise_adapters

    from psfh.model.lora import make_lora_config

    torch.manual_seed(0)
    model = PSFHModel.from_base("lite-medsam", ["fold_0", "fold_1"], make_lora_config(4, 4), device="cpu",
                                base_folder=EMBEDDED)
    randomise_adapters(model, scale=0.05)
    return model


def peft_unmerged(monkeypatch):
    """Make the model run peft's own unmerged LoRA layers (the path before psfh.model.merged_folds)."""
    monkeypatch.setattr(MergedFoldWeights, "supports", lambda self, fold: False)


def test_merged_encoder_folds_predict_what_pefts_unmerged_layers_predict(model, monkeypatch):
    merged_weights = model._merged_encoder
    assert model.encoder_scope == "all" and len(merged_weights.layers) > 0
    assert all(merged_weights.supports(fold) for fold in model.folds)
    base_parameters = {name: layer.get_base_layer().weight for name, layer in merged_weights.layers.items()}
    base_values = {name: parameter.detach().clone() for name, parameter in base_parameters.items()}

    merged = model.predict(IMAGE, tta=False)

    # the shared base is back as it was: the same parameter objects, the same values
    for name, layer in merged_weights.layers.items():
        assert layer.get_base_layer().weight is base_parameters[name]
        assert torch.equal(layer.get_base_layer().weight, base_values[name])
    # each fold got its own merged weights
    first_layer = next(iter(merged_weights.layers))
    fold_weights = [merged_weights._weights(fold)[first_layer] for fold in model.folds]
    assert not torch.allclose(fold_weights[0], fold_weights[1])

    peft_unmerged(monkeypatch)
    plain = model.predict(IMAGE, tta=False)
    assert np.abs(merged.probabilities - plain.probabilities).max() <= 1e-5
    assert (merged.label_map == plain.label_map).all()
    fold_outputs = [model.predict(IMAGE, folds=[fold], tta=False).probabilities for fold in model.folds]
    assert np.abs(fold_outputs[0] - fold_outputs[1]).max() > 1e-3, "the two folds' encoders really differ"


def test_merged_weights_follow_an_adapter_changed_in_place(model, monkeypatch):
    """Training (or loading) changes LoRA weights in place; the next pass must not use stale merges."""
    def flip_fold_0():
        with torch.no_grad():
            for layer in model._merged_encoder.layers.values():
                layer.lora_B["fold_0"].weight.mul_(-1.0)

    before = model.predict(IMAGE, folds=["fold_0"], tta=False).probabilities
    flip_fold_0()
    try:
        after = model.predict(IMAGE, folds=["fold_0"], tta=False).probabilities
        assert np.abs(after - before).max() > 1e-3, "the changed adapter changed the answer"
        peft_unmerged(monkeypatch)
        plain = model.predict(IMAGE, folds=["fold_0"], tta=False).probabilities
        assert np.abs(after - plain).max() <= 1e-5
    finally:
        flip_fold_0()  # as it was, for the other tests of this module


def test_the_weights_are_put_back_when_the_pass_fails(model):
    merged_weights = model._merged_encoder
    name, layer = next(iter(merged_weights.layers.items()))
    base = layer.get_base_layer().weight
    with pytest.raises(RuntimeError, match="stopped"):
        with merged_weights.active("fold_1"):
            assert layer.get_base_layer().weight is merged_weights._weights("fold_1")[name]
            raise RuntimeError("stopped")
    assert layer.get_base_layer().weight is base
    assert not layer.disable_adapters, "the adapters are on again"


def test_a_base_too_large_to_keep_merged_copies_runs_pefts_layers(model, monkeypatch):
    import psfh.model.merged_folds

    merged_weights = model._merged_encoder
    assert 0 < merged_weights.merged_bytes <= psfh.model.merged_folds.MAX_MERGED_BYTES, "LiteMedSAM's qkv merge"
    merged = model.predict(IMAGE, folds=["fold_1"], tta=False).probabilities
    monkeypatch.setattr(psfh.model.merged_folds, "MAX_MERGED_BYTES", merged_weights.merged_bytes - 1)
    assert not merged_weights.supports("fold_1")
    calls = []
    monkeypatch.setattr(MergedFoldWeights, "active", lambda self, fold: calls.append(fold))
    plain = model.predict(IMAGE, folds=["fold_1"], tta=False).probabilities
    assert calls == [], "no merged weights were swapped in"
    assert np.abs(merged - plain).max() <= 1e-5
