"""train.py --init-adapters: a fold starts from a trained package's adapter of the same name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_train_args as tiny_args
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

import train
from psfh.training.warm_start import seen_validation_ids


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory):
    """A tiny 2-fold package, 1 epoch: what the warm start starts from."""
    out = tmp_path_factory.mktemp("warm") / "first"
    assert train.main(tiny_args(small_dataset, out, "--epochs", "1", "--soup", "none")) == 0
    return out


@pytest.mark.slow  # trains twice (tiny model, about 15 s)
def test_a_warm_started_fold_starts_from_the_given_adapter_and_trains(small_dataset, trained, tmp_path, monkeypatch):
    seen = {}
    original = train.train_fold

    def spy(network, fold, *args, **kwargs):  # the adapter as training gets it, before the first step
        seen[fold] = ({k: v.detach().clone() for k, v in network.named_parameters() if f".{fold}." in k},
                      {k: v.detach().clone() for k, v in get_peft_model_state_dict(network, adapter_name=fold).items()})
        return original(network, fold, *args, **kwargs)

    monkeypatch.setattr(train, "train_fold", spy)
    out = tmp_path / "warm"
    assert train.main(tiny_args(small_dataset, out, "--fold", "1", "--epochs", "2", "--lr", "1e-2",
                                "--init-adapters", str(trained))) == 0
    stored = load_file(str(trained / "fold_1" / "adapter_model.safetensors"))
    start, as_peft_saves_it = seen["fold_1"]
    # Every stored tensor is the adapter's weight before the first step, exactly, and they are all of it.
    assert stored.keys() == as_peft_saves_it.keys() and len(stored) == len(start)
    for key, value in stored.items():
        torch.testing.assert_close(as_peft_saves_it[key], value, rtol=0, atol=0, msg=key)
    assert any(v.abs().max() > 0 for k, v in stored.items() if "lora_B" in k), "the start is not peft's zero init"
    # It trained: the last epoch's weights (kept in the checkpoint: only fold 1 ran) moved away from the start.
    state = json.loads((out / "checkpoints" / "fold_1" / "state.json").read_text())
    last = load_file(str(out / "checkpoints" / "fold_1" / state["tensors"]))
    moved = [k for k, v in start.items() if not torch.equal(last[f"trainable.{k}"], v)]
    assert moved, "two epochs at lr 1e-2 changed the adapter"
    metrics = json.loads((out / "fold_1" / "metrics.json").read_text())
    assert set(metrics["start"]) == {"val_dice_ps", "val_dice_fh", "val_score"}
    assert metrics["best_val_score"] >= metrics["start"]["val_score"], "the start competes as epoch 0"
    config = json.loads((out / "psfh_config.json").read_text())
    # Same data, folds and seed: fold 1 of the start held out the same frames, so none was trained on.
    assert config["training"]["warm_start"] == {"fold_1": {"from": str(trained), "validation_frames_it_trained_on": 0}}


@pytest.mark.slow  # trains once (tiny model)
def test_a_start_that_trained_on_the_folds_validation_frames_is_counted_and_warned(small_dataset, trained, tmp_path,
                                                                                   capsys):
    # fold 1 starts from the other fold's adapter (--init-from fold_0), which trained on fold 1's validation frames
    out = tmp_path / "crossed"
    assert train.main(tiny_args(small_dataset, out, "--fold", "1", "--epochs", "1", "--init-adapters", str(trained),
                                "--init-from", "fold_0")) == 0
    held_out_by_1 = [i for i, f in json.loads((trained / "folds.json").read_text())["fold_of_id"].items() if f == "fold_1"]
    config = json.loads((out / "psfh_config.json").read_text())
    assert config["training"]["warm_start"] == {"fold_1": {"from": str(trained), "adapter": "fold_0",
                                                           "validation_frames_it_trained_on": len(held_out_by_1)}}
    assert len(held_out_by_1) > 0
    err = capsys.readouterr().err
    assert f"warning: fold_1 starts from {trained}/fold_0, which trained on {len(held_out_by_1)} of" in err
    assert "not out of fold" in err


def test_an_adapter_of_another_form_is_refused_before_any_work(small_dataset, tiny_package, tmp_path, capsys):
    # tiny_package's folds have decoder rank 4; this run trains rank 16: exit status 2, nothing written.
    out = tmp_path / "never"
    assert train.main(tiny_args(small_dataset, out, "--fold", "0", "--epochs", "1",
                                "--init-adapters", str(tiny_package))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "another kind of adapter" in err and "rank_pattern" in err
    assert not (out / "psfh_config.json").exists()


def test_a_package_without_the_fold_is_refused(small_dataset, tiny_package, tmp_path, capsys):
    missing = tmp_path / "nofold"
    shutil.copytree(tiny_package, missing)
    shutil.rmtree(missing / "fold_1")
    assert train.main(tiny_args(small_dataset, tmp_path / "o", "--fold", "1", "--init-adapters", str(missing))) == 2
    assert "no adapter fold_1/" in capsys.readouterr().err


def test_seen_validation_ids_counts_frames_the_start_trained_on(tmp_path):
    (tmp_path / "folds.json").write_text(json.dumps({"fold_of_id": {"a": "fold_0", "b": "fold_1", "c": "fold_0"}}))
    # fold_0 held out a and c, trained on b; d was never in its data.
    assert seen_validation_ids(tmp_path, "fold_0", ["a", "b", "c", "d"]) == ["b"]
    assert seen_validation_ids(tmp_path / "none", "fold_0", ["a"]) == ["a"], "no folds.json: all count as seen"


def test_the_gpu_jobs_folds_are_the_shipped_packages_so_its_warm_start_stays_out_of_fold():
    """The draw warm-starts from models/psfh-lite-medsam: train.py's folds of the 978 frames outside the
    test split (5 folds, blocks of 20, seed 0, what gpu_train.py runs) must be the shipped folds.json's,
    or a warm-started fold would be validated on frames it trained on."""
    from conftest import EMBEDDED, ROOT, require_data

    from psfh.io.dataset import find_duplicate_images, find_samples, load_arrays, make_folds, read_ids_file

    test_ids = set(read_ids_file(ROOT / "docs" / "splits" / "test_ids.txt"))
    samples = [s for s in find_samples(require_data()) if s.id not in test_ids]
    ids, images, _ = load_arrays(samples, progress=False)
    assignment = make_folds(ids, n_folds=5, block_size=20, seed=0, linked=find_duplicate_images(ids, images))
    shipped = json.loads((EMBEDDED / "folds.json").read_text())["fold_of_id"]
    assert len(ids) == 978 and {i: f"fold_{assignment[i]}" for i in ids} == shipped
    for k in range(5):
        held_out = [i for i in ids if assignment[i] == k]
        assert held_out and seen_validation_ids(EMBEDDED, f"fold_{k}", held_out) == []
