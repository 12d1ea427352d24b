"""Run a fold's adapted encoder layers with its LoRA merged into plain weights (inference only).

peft runs an unmerged LoRA linear layer as ``base(x) + scale * B(A(x))``: two more matrix
products, a multiply and an add per layer. With LoRA on every attention ``qkv`` of the TinyViT's
stages 1-3 (the shipped package) that is a noticeable share of a fold's encoder time on CPU
(``python -m experiments.profile_encoder``; the share and the time saved: docs/PERFORMANCE.md,
"Merged fold weights"). peft's ``merge_adapter`` /
``unmerge_adapter`` would add the product to the shared base weights and later subtract it,
leaving rounding drift in the base after every pass; here each fold's merged weight
``W + scale * B @ A`` is made once, kept beside the base (4.5 MiB per fold for LiteMedSAM) and put in
the base layer's place for the pass, with the adapters off; the base's own parameter object is put
back after it, untouched. Large bases keep peft's unmerged layers (:data:`MAX_MERGED_BYTES`).

    merged = MergedFoldWeights(peft_model, scope="vision_encoder")
    with merged.active("fold_0"):
        embeddings = encoder(...)     # fold_0's adapted encoder, LoRA merged
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from peft import PeftModel
from peft.tuners.lora import Linear as LoraLinear

# Merged copies are kept per fold only up to this size each. SAM ViT-H's qkv weights are 630 MB a
# fold (3 GB for five, on a GPU): there the rank-4 side path is a negligible share of the work,
# and memory matters more, so such bases keep peft's unmerged layers.
MAX_MERGED_BYTES = 32 * 2**20


class MergedFoldWeights:
    """Each fold's LoRA-adapted linear weights under ``scope``, merged once and swapped in on demand.

    Args:
        network: the peft-wrapped model holding the fold adapters.
        scope: the part of the model whose LoRA layers are merged (a module-name substring).
    """

    def __init__(self, network: torch.nn.Module, scope: str = "vision_encoder"):
        self.network = network
        self.layers = {name: module for name, module in network.named_modules()
                       if scope in name and isinstance(module, LoraLinear)}
        # The base's own weights, kept here: while a fold is active its merged weights stand in them.
        self._base = {name: layer.get_base_layer().weight for name, layer in self.layers.items()}
        self._merged: dict[str, tuple[tuple, dict[str, torch.nn.Parameter]]] = {}

    @property
    def merged_bytes(self) -> int:
        """Memory one fold's merged weights take."""
        return sum(weight.numel() * weight.element_size() for weight in self._base.values())

    def supports(self, fold: str) -> bool:
        """Whether ``fold``'s layers here are plain LoRA (no DoRA, no LoRA bias), which merge
        exactly, and small enough to keep merged (:data:`MAX_MERGED_BYTES`)."""
        return (bool(self.layers) and isinstance(self.network, PeftModel) and self.merged_bytes <= MAX_MERGED_BYTES
                and all(not layer.use_dora.get(fold, False) and not getattr(layer, "lora_bias", {}).get(fold, False)
                        for layer in self.layers.values()))

    def _version(self, fold: str) -> tuple:
        """Changes whenever a weight the merge reads is changed in place (training, loading)."""
        return tuple((self._base[name]._version,
                      layer.lora_A[fold].weight._version if fold in layer.lora_A else -1,
                      layer.lora_B[fold].weight._version if fold in layer.lora_B else -1)
                     for name, layer in self.layers.items())

    def _weights(self, fold: str) -> dict[str, torch.nn.Parameter]:
        """{layer name: merged weight} for ``fold``, made on first use and again after any change."""
        version = self._version(fold)
        kept = self._merged.get(fold)
        if kept is None or kept[0] != version:
            # Plain tensors even when called under inference_mode: they stand in for parameters.
            with torch.inference_mode(False), torch.no_grad():
                weights = {}
                for name, layer in self.layers.items():
                    merged = self._base[name].detach().clone()
                    if fold in layer.lora_A:
                        merged += layer.get_delta_weight(fold).to(merged.dtype)
                    weights[name] = torch.nn.Parameter(merged, requires_grad=False)
            kept = self._merged[fold] = (version, weights)
        return kept[1]

    @contextmanager
    def active(self, fold: str):
        """Context: the layers under ``scope`` compute ``fold``'s adapted output from merged
        weights (every adapter off); outside ``scope`` the base alone runs. Not thread-safe:
        call under the model's lock, as adapter switching is."""
        weights = self._weights(fold)
        originals = {}
        try:
            with self.network.disable_adapter():
                for name, weight in weights.items():
                    base_layer = self.layers[name].get_base_layer()
                    originals[name] = base_layer.weight
                    base_layer.weight = weight
                yield
        finally:
            for name, weight in originals.items():
                self.layers[name].get_base_layer().weight = weight  # this layer's weight before the pass
