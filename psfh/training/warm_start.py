"""Warm start: begin a fold's training from a trained package's adapter for that fold, not from zero.

A package's ``fold_k/`` (peft files) is loaded into the adapter ``fold_k`` being trained, so a
short GPU draw continues the shipped folds instead of repeating their first epochs. Only an
adapter of the same form can be loaded (the same LoRA targets, ranks, alphas and fully trained
modules): anything else is refused before training starts.

Out of fold stays honest only when the package's fold k held out the same frames as this run's
fold k (the same data, fold count, block size and seed: the package's ``folds.json``).
:func:`seen_validation_ids` counts this run's validation frames that the starting adapter trained
on; train.py prints and records that count (0 for the GPU job on the shipped package).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from psfh.core.errors import PSFHInputError
from psfh.model.package import ADAPTER_WEIGHTS, FOLDS_FILE

# What must agree between the adapter on disk and the adapter being trained.
SAME_FORM = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "modules_to_save", "use_dora")


def _form(config: dict) -> dict:
    form = {key: config.get(key) for key in SAME_FORM}
    form["modules_to_save"] = sorted(form["modules_to_save"] or [])
    form["lora_alpha"] = float(form["lora_alpha"])
    form["alpha_pattern"] = {k: float(v) for k, v in (form["alpha_pattern"] or {}).items()}
    form["target_modules"] = (sorted(form["target_modules"]) if isinstance(form["target_modules"], (list, set))
                              else form["target_modules"])
    return form


def stored_adapter(package: Path, fold: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json, tensors) of ``package/fold`` -> PSFHInputError when it is missing."""
    folder = Path(package) / fold
    if not (folder / ADAPTER_WEIGHTS).is_file() or not (folder / "adapter_config.json").is_file():
        raise PSFHInputError(f"--init-adapters {package}: no adapter {fold}/ ({ADAPTER_WEIGHTS} and "
                             "adapter_config.json) to start that fold from")
    return json.loads((folder / "adapter_config.json").read_text()), load_file(str(folder / ADAPTER_WEIGHTS))


def check_same_form(network, fold: str, package: Path, source: str | None = None) -> dict[str, torch.Tensor]:
    """The stored tensors of ``package/source`` (default: ``package/fold``) once checked to fit the
    adapter ``fold`` of ``network`` (same LoRA form, same tensor names and shapes); PSFHInputError
    otherwise."""
    source = source or fold
    stored_config, tensors = stored_adapter(package, source)
    ours = json.loads(json.dumps(network.peft_config[fold].to_dict(), default=list))
    theirs, wanted = _form(stored_config), _form(ours)
    differing = [key for key in SAME_FORM if theirs[key] != wanted[key]]
    if differing:
        details = "; ".join(f"{key}: stored {theirs[key]!r}, this run {wanted[key]!r}" for key in differing)
        raise PSFHInputError(f"--init-adapters {package}: {source} is another kind of adapter than this run trains "
                             f"({details})")
    expected = get_peft_model_state_dict(network, adapter_name=fold)
    if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
        extra, missing = sorted(set(tensors) - set(expected)), sorted(set(expected) - set(tensors))
        raise PSFHInputError(f"--init-adapters {package}: {source}'s tensors do not fit this run's adapter "
                             f"(unexpected {extra[:3]}, missing {missing[:3]}, or other shapes)")
    return tensors


def load_fold_adapter(network, fold: str, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Put ``tensors`` (from :func:`check_same_form`; ``where`` names them in errors) into the
    adapter ``fold`` of the peft ``network`` (in place)."""
    set_peft_model_state_dict(network, tensors, adapter_name=fold)
    loaded = get_peft_model_state_dict(network, adapter_name=fold)
    for key, value in tensors.items():  # peft's key mapping is silent about what it skips: check
        if not torch.equal(loaded[key].cpu(), value.to(loaded[key].dtype)):
            raise PSFHInputError(f"--init-adapters {where}/{key} did not load")


def seen_validation_ids(package: Path, fold: str, validation_ids: list[str]) -> list[str]:
    """This run's validation ids that ``package``'s adapter ``fold`` trained on: those its
    folds.json assigns to another fold (held out by another, so trained on by this one)."""
    path = Path(package) / FOLDS_FILE
    if not path.is_file():
        return list(validation_ids)  # unknown: count every one as seen
    fold_of_id = json.loads(path.read_text()).get("fold_of_id", {})
    return [i for i in validation_ids if i in fold_of_id and fold_of_id[i] != fold]


def start_fold(network, fold: str, tensors: dict[str, torch.Tensor], package: Path, source: str | None,
               validation_ids: list[str], holds_out: bool, named: str, warn: bool) -> dict:
    """Put the starting adapter (``tensors``, read by :func:`check_same_form`) in place of ``fold``
    and say what it started from, for the package config's ``training.warm_start``.

    ``holds_out`` is False for a student (it validates on its training frames, so no count of
    validation frames seen is kept); ``named`` is the package as the user gave it; ``warn`` prints
    to stderr when the start trained on this fold's validation frames (its Dice is then not out of fold)."""
    source_adapter = source or fold
    load_fold_adapter(network, fold, tensors, f"{package}/{source_adapter}")
    record = {"from": named, **({"adapter": source_adapter} if source else {})}
    if not holds_out:
        return record
    seen = seen_validation_ids(package, source_adapter, validation_ids)
    record["validation_frames_it_trained_on"] = len(seen)
    if seen and warn:
        print(f"warning: {fold} starts from {named}/{source_adapter}, which trained on {len(seen)} of this fold's "
              f"{len(validation_ids)} validation frames (other folds or data than it was made with): its "
              "validation Dice is not out of fold", file=sys.stderr)
    return record

