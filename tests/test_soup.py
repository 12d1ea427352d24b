"""The fold soup: one adapter whose weight changes are the folds' mean, in memory, saved, loaded, chosen."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import load_file

from psfh.cli.soup import main as soup_main
from psfh.core.errors import PSFHInputError
from psfh.model.package import ADAPTER_WEIGHTS, PackageConfig
from psfh.model.psfh_model import PSFHModel
from psfh.model.soup import SOUP, add_soup

FOLDS = ["fold_0", "fold_1", "fold_2"]
IMAGE = np.random.default_rng(3).integers(0, 256, (48, 56)).astype(np.uint8)


@pytest.fixture
def model(tiny_package):
    """A fresh tiny model per test: the soup changes it."""
    return PSFHModel.from_pretrained(tiny_package, device="cpu")


def lora_layers(network, name):
    return [module for module in network.modules() if isinstance(module, LoraLayer) and name in module.lora_A]


def test_the_soup_changes_each_weight_by_the_folds_mean_change(model):
    weights = [0.5, 0.3, 0.2]
    add_soup(model.network, FOLDS, weights, name="weighted")
    layers = lora_layers(model.network, "weighted")
    assert layers
    for layer in layers:
        expected = sum(w * layer.get_delta_weight(fold) for w, fold in zip(weights, FOLDS))
        assert torch.allclose(layer.get_delta_weight("weighted"), expected, atol=1e-6)
        assert layer.lora_A["weighted"].weight.shape[0] == sum(layer.lora_A[f].weight.shape[0] for f in FOLDS)
    wrappers = [m for m in model.network.modules() if isinstance(m, ModulesToSaveWrapper)]
    assert wrappers
    for wrapper in wrappers:
        for key, parameter in wrapper.modules_to_save["weighted"].named_parameters():
            expected = sum(w * dict(wrapper.modules_to_save[f].named_parameters())[key]
                           for w, f in zip(weights, FOLDS))
            assert torch.allclose(parameter, expected, atol=1e-6)


def test_a_rank_cap_keeps_the_best_approximation_of_the_mean_change(model):
    add_soup(model.network, FOLDS, name="exact")
    add_soup(model.network, FOLDS, name="capped", max_rank=3)
    truncated = 0
    for layer in lora_layers(model.network, "capped"):
        exact = layer.get_delta_weight("exact")
        u, s, vh = torch.linalg.svd(exact, full_matrices=False)
        rank = layer.lora_A["capped"].weight.shape[0]
        assert rank == min(3, layer.lora_A["exact"].weight.shape[0])
        best = (u[:, :rank] * s[:rank]) @ vh[:rank]
        assert torch.allclose(layer.get_delta_weight("capped"), best, atol=1e-5)
        truncated += rank < layer.lora_A["exact"].weight.shape[0]
    assert truncated > 0
    with pytest.raises(PSFHInputError, match="max_rank must be at least 1"):
        add_soup(model.network, FOLDS, name="none", max_rank=0)


def test_a_soup_of_one_fold_predicts_as_that_fold(model):
    model.add_soup(["fold_1"])
    pixels = model.preprocess(IMAGE)
    alone = model.fold_probabilities(pixels, ["fold_1"], tta=True)
    souped = model.fold_probabilities(pixels, [SOUP], tta=True)
    assert torch.allclose(alone, souped, atol=1e-5)


def test_the_soup_is_one_member_and_the_folds_stay_one_option_away(model):
    model.add_soup()
    assert model.adapters == [*FOLDS, SOUP] and model.default_adapters == FOLDS
    model.config.default_adapters = [SOUP]
    assert model.members() == [SOUP] and model.members(FOLDS) == FOLDS
    prediction = model.predict(IMAGE)
    assert prediction.folds == [SOUP] and list(prediction.fold_aop_deg) == [SOUP]
    assert model.predict(IMAGE, folds=FOLDS).folds == FOLDS


def test_a_saved_soup_is_half_the_bytes_and_loads_back(model, tmp_path):
    model.add_soup()
    model.config.default_adapters = [SOUP]
    pixels = model.preprocess(IMAGE)
    in_memory = model.fold_probabilities(pixels, [SOUP], tta=True)
    folder = model.save_pretrained(tmp_path / "package")
    stored = load_file(str(folder / SOUP / ADAPTER_WEIGHTS))
    assert stored and all(tensor.dtype == torch.float16 for tensor in stored.values())
    config = json.loads((folder / PackageConfig.FILENAME).read_text())
    assert config["soup"]["folds"] == FOLDS and config["default_adapters"] == [SOUP]
    loaded = PSFHModel.from_pretrained(folder, device="cpu")
    assert loaded.soup == SOUP and loaded.members() == [SOUP]
    assert torch.allclose(loaded.fold_probabilities(loaded.preprocess(IMAGE), [SOUP], tta=True), in_memory, atol=1e-3)


def test_named_folds_load_without_the_soup_made_of_them_all(model, tmp_path):
    model.add_soup()
    model.config.default_adapters = [SOUP]
    folder = model.save_pretrained(tmp_path / "package")
    some = PSFHModel.from_pretrained(folder, device="cpu", folds=["fold_1"])
    assert some.soup is None and some.adapters == ["fold_1"] and some.members() == ["fold_1"]


def test_a_package_whose_soup_folder_is_gone_falls_back_to_the_folds(model, tmp_path):
    model.add_soup()
    model.config.default_adapters = [SOUP]
    folder = model.save_pretrained(tmp_path / "package")
    shutil.rmtree(folder / SOUP)
    loaded = PSFHModel.from_pretrained(folder, device="cpu")
    assert loaded.soup is None and loaded.members() == FOLDS


def test_bad_soups_are_refused(model):
    with pytest.raises(PSFHInputError, match=r"unknown folds \['fold_9'\]"):
        model.add_soup(["fold_0", "fold_9"])
    with pytest.raises(PSFHInputError, match="2 weights for 3 folds"):
        model.add_soup(FOLDS, [0.5, 0.5])
    with pytest.raises(PSFHInputError, match="already has an adapter named 'fold_0'"):
        add_soup(model.network, FOLDS, name="fold_0")
    with pytest.raises(PSFHInputError, match=r"unknown folds \['soup'\]"):
        model.predict(IMAGE, folds=[SOUP])  # no soup yet


def test_the_soup_command_adds_the_soup_and_leaves_the_folds(tiny_package, tmp_path, capsys):
    package = shutil.copytree(tiny_package, tmp_path / "package")
    before = {path: path.read_bytes() for path in package.rglob("*.safetensors")}
    assert soup_main([str(package), "--default"]) == 0
    assert "soup" in capsys.readouterr().out
    assert all(path.read_bytes() == content for path, content in before.items())  # base and folds untouched
    loaded = PSFHModel.from_pretrained(package, device="cpu")
    assert loaded.members() == [SOUP]
    assert soup_main([str(package)]) == 2  # a second soup needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert soup_main([str(tmp_path / "nothing")]) == 2
