"""The fold soup: ONE adapter whose weights are the mean of the fold adapters' (a weight-space ensemble).

Fold k's LoRA changes a layer's weight by ``dW_k = s_k B_k A_k`` (``s_k``: its alpha / rank). The
soup changes it by the weighted mean ``dW = sum_k w_k dW_k`` (``w_k = 1 / K``: the uniform soup),
written exactly as one LoRA of rank ``sum_k r_k`` with scale 1::

    A = [w_1 s_1 A_1; ...; w_K s_K A_K]   (the folds' A stacked: (sum r_k) x in)
    B = [B_1, ..., B_K]                   (the folds' B side by side: out x (sum r_k))

so ``B A = sum_k w_k s_k B_k A_k``. With ``max_rank``, a layer whose summed rank is larger keeps
the best rank-``max_rank`` approximation of that change instead (truncated SVD: ``B = U S``,
``A = V^T``), which stores less where the folds' changes overlap. What peft keeps whole per fold
(``modules_to_save``: the decoder's output tokens and the no-prompt embedding) becomes the
weighted mean of the fold copies.
A soup runs like one fold: one encoder pass per view instead of one per fold and view.

In a package the soup is the adapter folder ``soup/`` (peft's files), its factors stored in
float16 (:data:`STORED_DTYPE`; loading puts them back into the model's float32), and
``psfh_config.json``'s ``soup`` entry says how it was made.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import load_file, save_file

from psfh.core.errors import PSFHInputError
from psfh.core.files import atomic_target
from psfh.model.package import ADAPTER_WEIGHTS

SOUP = "soup"  # the soup's adapter name, and its folder in a package
STORED_DTYPE = torch.float16


def soup_config(network: PeftModel, folds: list[str], max_rank: int | None = None):
    """The peft LoraConfig of the soup of ``folds``: theirs, with each rank the sum of the folds'
    ranks (at most ``max_rank``) and alpha equal to it (scale 1: the folds' scales go into A)."""
    configs = [network.peft_config[fold] for fold in folds]
    first = configs[0]
    for fold, config in zip(folds, configs):
        same = (config.target_modules == first.target_modules and config.modules_to_save == first.modules_to_save
                and set(config.rank_pattern) == set(first.rank_pattern) and not config.use_dora)
        if not same:
            raise PSFHInputError(f"fold {fold!r} adapts other layers than {folds[0]!r} (or uses DoRA): "
                                 "only folds of one recipe can be souped")
    cap = (lambda rank: rank) if max_rank is None else (lambda rank: min(rank, max_rank))
    rank = cap(sum(config.r for config in configs))
    rank_pattern = {pattern: cap(sum(config.rank_pattern[pattern] for config in configs))
                    for pattern in first.rank_pattern}
    return replace(first, r=rank, lora_alpha=rank, rank_pattern=rank_pattern, alpha_pattern=dict(rank_pattern),
                   use_rslora=False, inference_mode=True)


def add_soup(network: PeftModel, folds: list[str], weights: list[float] | None = None, name: str = SOUP,
             max_rank: int | None = None) -> None:
    """Add the soup of ``folds`` to ``network`` as the adapter ``name`` (see the module docstring).

    Args:
        network: the peft model holding the fold adapters.
        folds: the adapters to soup (at least one).
        weights: one weight per fold (default: uniform, 1 / K each).
        name: the new adapter's name; it must not exist yet.
        max_rank: keep at most this rank per layer (truncated SVD of its change); None: exact.
    """
    if not folds:
        raise PSFHInputError("a soup needs at least one fold adapter")
    if name in network.peft_config:
        raise PSFHInputError(f"the model already has an adapter named {name!r}")
    weights = [1.0 / len(folds)] * len(folds) if weights is None else [float(w) for w in weights]
    if len(weights) != len(folds):
        raise PSFHInputError(f"{len(weights)} weights for {len(folds)} folds")
    if max_rank is not None and max_rank < 1:
        raise PSFHInputError(f"max_rank must be at least 1, not {max_rank}")
    network.add_adapter(name, soup_config(network, folds, max_rank))
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, LoraLayer) and name in module.lora_A:
                stacked_a = torch.cat([w * module.scaling[fold] * module.lora_A[fold].weight
                                       for fold, w in zip(folds, weights)], dim=0)
                side_by_side_b = torch.cat([module.lora_B[fold].weight for fold in folds], dim=1)
                rank = module.lora_A[name].weight.shape[0]
                if rank < stacked_a.shape[0]:  # the best rank-`rank` approximation of B A
                    u, s, vh = torch.linalg.svd(side_by_side_b @ stacked_a, full_matrices=False)
                    side_by_side_b, stacked_a = u[:, :rank] * s[:rank], vh[:rank]
                module.lora_A[name].weight.copy_(stacked_a)
                module.lora_B[name].weight.copy_(side_by_side_b)
                module.scaling[name] = 1.0
            elif isinstance(module, ModulesToSaveWrapper) and name in module.modules_to_save:
                copies = [dict(module.modules_to_save[fold].named_parameters()) for fold in folds]
                for key, parameter in module.modules_to_save[name].named_parameters():
                    parameter.copy_(sum(w * copy[key] for w, copy in zip(weights, copies)))


def store_compactly(adapter_folder: Path) -> Path:
    """Rewrite a saved soup adapter's weights in :data:`STORED_DTYPE` (half the bytes)."""
    path = Path(adapter_folder) / ADAPTER_WEIGHTS
    tensors = {key: value.to(STORED_DTYPE).contiguous() for key, value in load_file(str(path)).items()}
    with atomic_target(path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    return path


def describe_soup(folds: list[str], weights: list[float] | None = None, max_rank: int | None = None) -> dict:
    """The ``soup`` entry of psfh_config.json: what the soup was made from, and how."""
    weights = [1.0 / len(folds)] * len(folds) if weights is None else [float(w) for w in weights]
    method = ("weighted mean of the folds' LoRA weight changes, as LoRA factors of the summed rank"
              + ("" if max_rank is None else f", truncated by SVD to rank {max_rank} where larger")
              + "; modules_to_save averaged")
    return {"adapter": SOUP, "folds": list(folds), "weights": weights, "max_rank": max_rank, "method": method,
            "stored_dtype": str(STORED_DTYPE).removeprefix("torch.")}
