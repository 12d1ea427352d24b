"""PSFHModel: one shared SamModel base, one LoRA adapter per fold, and the TTA soft ensemble.

    model = PSFHModel.from_pretrained()              # the embedded package (models/psfh-lite-medsam)
    model = PSFHModel.from_pretrained("some/folder")  # or a hub repo id (offline: the local HF cache)
    model = PSFHModel.from_pretrained(backend="onnxruntime")  # encoder and decoders on ONNX Runtime
    result = model.predict("scan.mha")                # Prediction: label map, probabilities, AoP, ...

All fold adapters live as named peft adapters on ONE base in memory and are switched with
``set_adapter``; a lock makes :meth:`PSFHModel.predict` safe to call from several threads
(the Gradio demo) without ever mixing adapters.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from psfh.core.errors import PSFHInputError
from psfh.core.labels import CLASSES
from psfh.core.options import check_backend, check_precision, resolve_folds
from psfh.io.images import as_uint8, load_image, pixel_spacing_mm
from psfh.measure import quality, stability
from psfh.measure.aop import measure_aop
from psfh.measure.hsd import check_spacing, measure_hsd
from psfh.model import inference, prompts
from psfh.model.bases import get_base
from psfh.model.lora import adapts_encoder, describe, encoder_scope, make_lora_config
from psfh.model.merged_folds import MergedFoldWeights
from psfh.model.prediction import Prediction
from psfh.model.package import (
    ADAPTER_WEIGHTS,
    FOLDS_FILE,
    PackageConfig,
    load_base,
    refuse_pickle_weights,
    resolve_package,
    save_base_weights,
)
from psfh.model.soup import SOUP, add_soup, describe_soup, store_compactly


@dataclass(eq=False)
class ImageEmbeddings:
    """What :meth:`PSFHModel.embed` made of one image, kept to decode again without an encoder pass.

    Attributes:
        image: H x W uint8, the input as shown (its size, and the quality checks' input).
        name: the input's name, when known.
        folds, tta, precision: what the encoder ran for.
        per_fold: {fold: V x C x g x g} embeddings of the TTA views (identity, then the flip);
            folds that share the encoder share one tensor.
        base: 1 x C x g x g, the base encoder's embedding of the image (adapters off), which box
            prompts decode from; None unless asked for.
        timings: seconds spent so far.
        automatic: the ensemble's own prediction, kept by the first :meth:`PSFHModel.decode` so
            that a correction runs only the box-prompted decoder and the AoP.
        spacing_mm: (row, col) mm per pixel of the image, None when unknown (the HSD in mm).
        framing: where the image lies on the model's grid (:func:`psfh.model.inference.framing`);
            None: the image taken whole (:func:`psfh.model.inference.whole_frame`).
    """

    image: np.ndarray
    name: str | None
    folds: list[str]
    tta: bool
    precision: str
    per_fold: dict[str, torch.Tensor]
    base: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    automatic: Prediction | None = None
    spacing_mm: tuple[float, float] | None = None
    framing: inference.Framing | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return self.image.shape[:2]

    def framed(self, input_size: int) -> inference.Framing:
        """The image's framing on an S x S grid (the image taken whole when it was not kept)."""
        return self.framing or inference.whole_frame(self.size, input_size, self.name or "image")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class PSFHModel:
    """A psfh model package in memory: config, a peft-wrapped SamModel base, fold adapters.

    Loading and saving: :meth:`from_pretrained`, :meth:`from_base` (new adapters, for training),
    :meth:`save_pretrained`, :meth:`push_to_hub`, :meth:`use_backend`.
    Predicting: :meth:`predict` (file or array -> :class:`Prediction`), or :meth:`embed` then
    :meth:`decode` (again with box prompts, without an encoder pass).
    The steps of :meth:`predict`, each callable alone (research, caching, evaluation):
    :meth:`preprocess` (H x W -> 1 x 3 x S x S), :meth:`fold_probabilities` (-> F x V x 3 x S x S
    members; or :meth:`fold_probabilities_from_embeddings` from cached image embeddings) and
    :meth:`prediction_from_members` (members -> soft ensemble, label map, AoP, quality check).
    """

    def __init__(self, config: PackageConfig, network: torch.nn.Module, source: Path | None = None):
        self.config = config
        self.network = network
        self.source = source
        self.device = next(network.parameters()).device
        self._lock = threading.Lock()
        # The encoder and fold decoders' runner when they run from an ONNX export (psfh.model.onnx_backends);
        # None: torch. Everything else (preprocessing, ensemble, AoP, box prompts) stays here.
        self._runtime = None
        if get_base(config.base).channels_last:
            # Saved weights are made contiguous again (package.base_state_dict).
            self.base_model.vision_encoder.to(memory_format=torch.channels_last)

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_base(cls, base: str, folds: list[str], lora_config: LoraConfig | None = None,
                  device: str | torch.device | None = None, base_folder: Path | None = None,
                  **config_overrides) -> "PSFHModel":
        """A new package: the registry's base with freshly initialised adapters named ``folds``
        (what train.py starts from). A base whose weights live in a package reads them from
        ``base_folder`` (default: the registry's ``default_package``)."""
        if not folds:
            raise PSFHInputError("a model needs at least one fold adapter name")
        spec = get_base(base)
        config = PackageConfig.for_base(base, folds=list(folds), **config_overrides)
        if spec.weights == "package":
            base_folder = base_folder or spec.default_package
            if base_folder is None:
                raise PSFHInputError(f"base {base!r} keeps its weights in a package: pass base_folder")
        base_model = load_base(config, base_folder)
        lora_config = lora_config or make_lora_config()
        config.lora = lora_config.to_dict()
        config.trained = describe(lora_config)
        network = get_peft_model(base_model, lora_config, adapter_name=folds[0])
        for fold in folds[1:]:
            network.add_adapter(fold, lora_config)
        network.set_adapter(folds[0])
        return cls(config, network.to(device or default_device()).eval())

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike | None = None, revision: str | None = None,
                        device: str | torch.device | None = None, cache_dir: str | os.PathLike | None = None,
                        folds: list[str] | None = None,
                        backend: str = "torch", export_dir: str | os.PathLike | None = None) -> "PSFHModel":
        """Load a package from a folder, a hub repo id (offline from the HF cache when
        ``HF_HUB_OFFLINE=1``), or, with no argument, the embedded package.

        Args:
            folds: the fold adapters to load (default: all, and the package's soup when it has one;
                named folds come without the soup, which is made of them all; []: the base
                alone, e.g. to cache its embeddings).
            backend: what runs the encoder and the fold decoders: "torch", or (CPU, fp32) an ONNX
                export of the package run by "onnxruntime" or "openvino" (:mod:`psfh.model.onnx_backends`);
                these load the model on the CPU unless ``device`` says otherwise.
            export_dir: the ONNX export to run (``python -m psfh.export``). Default: the package's
                own ``onnx/`` folder when it matches the weights, else one made once (minutes: docs/PERFORMANCE.md,
                "One-off measurements") and kept under ``~/.cache/psfh/onnx``, keyed by the weights.
        """
        check_backend(backend)
        folder = resolve_package(path_or_repo_id, revision=revision, cache_dir=cache_dir)
        refuse_pickle_weights(folder)
        config = PackageConfig.load(folder)
        every_fold = folds is None
        folds = list(config.folds) if folds is None else (resolve_folds(config.folds, folds) if folds else [])
        config = replace(config, folds=folds)
        base_model = load_base(config, folder)
        if not folds:
            return cls(config, base_model.to(device or default_device()).eval(), source=folder)
        for fold in folds:
            if not (folder / fold / ADAPTER_WEIGHTS).is_file():
                raise PSFHInputError(f"{folder}: fold {fold!r} has no {fold}/{ADAPTER_WEIGHTS}")
        network = PeftModel.from_pretrained(base_model, str(folder / folds[0]), adapter_name=folds[0])
        for fold in folds[1:]:
            network.load_adapter(str(folder / fold), adapter_name=fold)
        soup = config.soup.get("adapter")
        if soup and every_fold and (folder / soup / ADAPTER_WEIGHTS).is_file():
            network.load_adapter(str(folder / soup), adapter_name=soup)
        elif soup:
            config = replace(config, soup={}, default_adapters=[a for a in config.default_adapters if a != soup])
        network.set_adapter(folds[0])
        if device is None:
            device = default_device() if backend == "torch" else "cpu"
        model = cls(config, network.to(device).eval(), source=folder)
        if backend != "torch":
            model.use_backend(backend, export_dir)
        return model

    def use_backend(self, backend: str, export_dir: str | os.PathLike | None = None) -> "PSFHModel":
        """Run the encoder and fold decoders on ``backend`` from now on (see :meth:`from_pretrained`)."""
        from psfh.model.onnx_backends import OnnxEnsemble
        from psfh.model.onnx_export import find_or_make_export

        if check_backend(backend) == "torch":
            self._runtime = None
            return self
        if self.device.type != "cpu":
            raise PSFHInputError(f"the {backend} backend runs on the CPU; load the model with device='cpu'")
        with self._lock:
            self._runtime = None  # an export is made from (and checked against) the torch model
        folder = Path(export_dir) if export_dir else find_or_make_export(self)
        runtime = OnnxEnsemble(folder, backend)
        missing = [adapter for adapter in self.adapters if adapter not in runtime.folds]
        if missing or runtime.manifest["input_size"] != self.config.input_size:
            raise PSFHInputError(f"{folder}: the export holds folds {runtime.folds} at input size "
                                 f"{runtime.manifest['input_size']}; this model needs {self.adapters} at "
                                 f"{self.config.input_size}")
        with self._lock:
            self._runtime = runtime
        return self

    @property
    def export_folder(self) -> Path | None:
        """The ONNX export the encoder and decoders run from; None on the torch backend."""
        return None if self._runtime is None else self._runtime.folder

    @property
    def backend(self) -> str:
        """What runs the encoder and the fold decoders: "torch", "onnxruntime" or "openvino"."""
        return "torch" if self._runtime is None else self._runtime.backend

    # ----------------------------------------------------------------------------- saving
    def save_pretrained(self, folder: str | os.PathLike, folds: list[str] | None = None,
                        with_base: bool = True) -> Path:
        """Write the package (config, embedded base weights, fold adapters, the soup) to ``folder``.

        ``folds`` selects the adapters to write (None: all, the soup too; []: none, config and base
        only); ``with_base=False`` leaves the base weights out (adding an adapter to a package).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        adapters = self.adapters if folds is None else list(folds)
        if self.config.embedded_base and with_base:
            save_base_weights(self.network, folder)  # a saved package is whole, even if this one borrows its base
        if adapters:
            had_readme = (folder / "README.md").exists()
            # peft writes each named adapter to folder/<name>/ (the package layout)
            self.network.save_pretrained(str(folder), selected_adapters=adapters)
            if not had_readme:
                # peft writes a placeholder card; the package's card is model_card.md (push_to_hub)
                (folder / "README.md").unlink(missing_ok=True)
            if self.soup in adapters:
                store_compactly(folder / self.soup)
        config = replace(self.config, base_package=None)
        if not (self.soup and (folder / self.soup / ADAPTER_WEIGHTS).is_file()):  # no soup written, none claimed
            config = replace(config, soup={}, default_adapters=[a for a in config.default_adapters if a != self.soup])
        config.save(folder)
        if self.source is not None and (self.source / FOLDS_FILE).is_file() and self.source != folder:
            shutil.copy2(self.source / FOLDS_FILE, folder / FOLDS_FILE)
        return folder

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    model_card: str | os.PathLike | None = None, commit_message: str = "Upload psfh model package"):
        """Upload the package to the Hugging Face hub (with ``model_card`` as its README.md)."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as staging:
            self.save_pretrained(staging)
            card = Path(model_card) if model_card else Path(__file__).resolve().parents[2] / "model_card.md"
            if card.is_file():
                shutil.copy2(card, Path(staging) / "README.md")
            return api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=commit_message)

    # ----------------------------------------------------------------------------- inference
    @property
    def folds(self) -> list[str]:
        """The names of the fold adapters loaded."""
        return list(self.config.folds)

    @property
    def soup(self) -> str | None:
        """The fold soup's adapter name (:mod:`psfh.model.soup`), None when the model has none."""
        name = self.config.soup.get("adapter")
        return name if name and isinstance(self.network, PeftModel) and name in self.network.peft_config else None

    @property
    def adapters(self) -> list[str]:
        """Every adapter a prediction can use: the folds, then the soup when there is one."""
        return self.folds + ([self.soup] if self.soup else [])

    @property
    def default_adapters(self) -> list[str]:
        """The adapters a prediction uses when the caller names none: the package's choice
        (``default_adapters`` in its config), else all folds (the ensemble)."""
        chosen = [name for name in self.config.default_adapters if name in self.adapters]
        return chosen or self.folds

    def members(self, folds: list[str] | None = None) -> list[str]:
        """The adapters a prediction with ``folds`` uses (None: :attr:`default_adapters`), checked:
        PSFHInputError for an unknown name or a package without fold adapters."""
        return resolve_folds(self.adapters, self.default_adapters if folds is None else folds)

    def add_soup(self, folds: list[str] | None = None, weights: list[float] | None = None,
                 max_rank: int | None = None) -> str:
        """Add the soup of ``folds`` (default: all) as this model's soup adapter, replacing any
        it had (:func:`psfh.model.soup.add_soup`; ``max_rank``: truncate each layer's change to
        that rank, None: exact); ``save_pretrained`` writes it. -> its name."""
        folds = self.members(folds)
        with self._lock:
            if SOUP in self.network.peft_config:
                self.network.set_adapter(folds[0])
                self.network.delete_adapter(SOUP)
            add_soup(self.network, folds, weights, SOUP, max_rank)
            self.network.set_adapter(folds[0])
            self.config = replace(self.config, soup=describe_soup(folds, weights, max_rank))
            self.__dict__.pop("_merged_encoder", None)  # merged weights are made per adapter: start again
        return SOUP

    @property
    def default_tta(self) -> bool:
        """Whether predictions use the flip TTA when the caller does not say (the package's setting)."""
        return bool(self.config.tta.get("horizontal_flip", True))

    @property
    def base_model(self) -> torch.nn.Module:
        """The shared SamModel under every adapter."""
        return self.network.get_base_model() if isinstance(self.network, PeftModel) else self.network

    def preprocess(self, pixels: np.ndarray, name: str = "image",
                   framing: inference.Framing | None = None) -> torch.Tensor:
        """H x W image -> 1 x 3 x S x S model input on the model's device, framed as
        :meth:`framing` says (:func:`psfh.model.inference.preprocess`)."""
        c = self.config
        return inference.preprocess(pixels, c.input_size, c.pixel_mean, c.pixel_std, name, framing).to(self.device)

    def framing(self, pixels: np.ndarray, name: str = "image") -> inference.Framing:
        """Where the H x W image lies on the model's grid (:func:`psfh.model.inference.framing`):
        what :meth:`prediction_from_members` needs to bring the members back to the image."""
        return inference.framing(pixels, self.config.input_size, name)

    def _autocast(self, precision: str):
        if check_precision(precision) == "fp32":
            return nullcontext()
        if self._runtime is not None:
            raise PSFHInputError(f"the {self.backend} backend runs fp32 only; precision={precision!r} "
                                 "needs backend='torch'")
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @torch.inference_mode()
    def fold_probabilities(self, pixel_values: torch.Tensor, folds: list[str] | None = None, tta: bool = True,
                           precision: str = "fp32") -> torch.Tensor:
        """Class probabilities of every fold and TTA view: 1 x 3 x S x S -> F x V x 3 x S x S."""
        folds = self.members(folds)
        with self._lock, self._autocast(precision):
            embeddings = self._encode(inference.tta_views(pixel_values, tta), folds)
            return self._decode_folds(embeddings, folds, tta)

    @property
    def model_lock(self):
        """The lock (a ``with`` context) taken around every forward pass and adapter switch, and
        nowhere else: what keeps the hot-swapped adapters of one shared base consistent across threads."""
        return self._lock

    def use_model_lock(self, lock) -> None:
        """Take ``lock`` (anything usable in ``with``) in place of the plain threading.Lock, e.g.
        psfh.serve.fair's lock that lets single frames go before clips. Call it before the model is
        shared: a call holding the old lock at that moment would not exclude the new one."""
        if not (hasattr(lock, "__enter__") and hasattr(lock, "__exit__")):
            raise TypeError(f"a model lock is used in `with`: {type(lock).__name__} is not a context manager")
        self._lock = lock

    @torch.inference_mode()
    def ensemble_probabilities(self, pixel_values: torch.Tensor, folds: list[str] | None = None, tta: bool = True,
                               precision: str = "fp32") -> torch.Tensor:
        """The soft ensemble (mean over folds and TTA views, before any largest-component step) of a
        batch: B x 3 x S x S normalised images -> B x 3 x S x S class probabilities. One encoder call
        per fold for the whole batch (a teacher pass over a data set; on a GPU, batch 1 wastes it)."""
        folds = self.members(folds)
        with self._lock, self._autocast(precision):
            embeddings = self._encode(inference.tta_views(pixel_values, tta), folds)
            return self._decode_folds_batched(embeddings, folds, tta).float().mean(dim=(0, 1))

    @cached_property  # adapters are all in place once the model is built
    def encoder_scope(self) -> str:
        """What the fold adapters change in the image encoder: "none", "last_stage" or "all"."""
        if not isinstance(self.network, PeftModel):  # the base alone (no fold adapters loaded)
            return "none"
        return encoder_scope(self.config.lora, get_base(self.config.base).last_stage_lora_targets)

    @torch.inference_mode()
    def fold_probabilities_from_embeddings(self, view_embeddings: torch.Tensor, folds: list[str] | None = None,
                                           tta: bool = True) -> torch.Tensor:
        """Like :meth:`fold_probabilities` from precomputed encoder embeddings of the views
        (V x C x g x g: identity, then the horizontal flip), e.g. an embedding cache."""
        if adapts_encoder(self.config.lora):
            raise PSFHInputError("this package adapts the image encoder: embeddings differ per fold")
        folds = self.members(folds)
        shared = view_embeddings[: 2 if tta else 1].to(self.device)
        with self._lock:
            return self._decode_folds({fold: shared for fold in folds}, folds, tta)

    @cached_property  # found once: every prediction asks
    def _shared_encoder_stages(self) -> int | None:
        """How many leading encoder stages no fold adapter touches (their output is shared by all
        folds), or None when the encoder cannot be split (a ViT base, or LoRA in its first layer)."""
        encoder = self.base_model.vision_encoder
        if not hasattr(encoder, "forward_prefix"):
            return None
        stages = []
        for name, _ in self.network.named_modules():
            if "lora_A" in name and "vision_encoder" in name:
                match = re.search(r"vision_encoder\.layers\.(\d+)\.", name)
                if match is None:  # LoRA outside the stages (patch embedding, neck): no split
                    return None
                stages.append(int(match.group(1)))
        return min(stages) if stages else len(encoder.layers)

    def _encode(self, views: torch.Tensor, folds: list[str]) -> dict[str, torch.Tensor]:
        """Each fold's image embeddings of the views: (V*B) x 3 x S x S -> {fold: (V*B) x C x g x g}.

        Call under the lock. When no adapter touches the encoder (the CPU recipe), it runs once
        and every fold shares its output; otherwise the stages no adapter touches run once for
        all folds and views (exact: the tests compare with full passes), and each fold runs the rest.
        """
        if self._runtime is not None:
            return self._runtime.encode(views, folds)
        encoder = self.base_model.vision_encoder
        if self.encoder_scope == "none":
            shared = self.base_model.get_image_embeddings(views)
            return {fold: shared for fold in folds}
        stage = self._shared_encoder_stages
        hidden = encoder.forward_prefix(views, stage) if stage is not None else None
        embeddings = {}
        for fold in folds:
            with self._fold_encoder(fold):
                embeddings[fold] = (self.base_model.get_image_embeddings(views) if hidden is None
                                    else encoder.forward_from(hidden, stage).last_hidden_state)
        return embeddings

    @cached_property
    def _merged_encoder(self) -> MergedFoldWeights:
        return MergedFoldWeights(self.network, scope="vision_encoder")

    def _fold_encoder(self, fold: str):
        """Context: the encoder as ``fold`` adapts it, its LoRA merged into plain weights when it
        can be (faster: psfh.model.merged_folds, docs/PERFORMANCE.md), else peft's unmerged
        layers: with gradients on (the merged weights carry none to the adapters) or for an
        adapter kind that does not merge exactly. Call under the lock."""
        self.network.set_adapter(fold)
        merge = self._merged_encoder.supports(fold) and not torch.is_grad_enabled()
        return self._merged_encoder.active(fold) if merge else nullcontext()

    def _decode_folds(self, embeddings: dict[str, torch.Tensor], folds: list[str], tta: bool) -> torch.Tensor:
        """Each fold adapter's decoder on its embeddings of the views of ONE image -> F x V x 3 x S x S
        class probabilities in image orientation (adapters hot-swapped on the shared base). Call under the lock."""
        return self._decode_folds_batched(embeddings, folds, tta)[:, :, 0]

    def _decode_folds_batched(self, embeddings: dict[str, torch.Tensor], folds: list[str], tta: bool) -> torch.Tensor:
        """As :meth:`_decode_folds` for the views of B images ({fold: (V*B) x C x g x g}) -> F x V x B x 3 x S x S."""
        per_fold = []
        for fold in folds:
            if self._runtime is not None:
                probabilities = self._runtime.decode(fold, embeddings[fold])
            else:
                self.network.set_adapter(fold)
                logits = inference.mask_logits(self.network, self.config.input_size, image_embeddings=embeddings[fold])
                probabilities = logits.float().softmax(dim=1)
            per_fold.append(inference.undo_tta(probabilities, tta))
        return torch.stack(per_fold)

    # ----------------------------------------------------------------------------- embed, decode, predict
    @torch.inference_mode()
    def embed(self, image, folds: list[str] | None = None, tta: bool | None = None, precision: str = "fp32",
              for_prompts: bool = False, spacing_mm: tuple[float, float] | None = None) -> ImageEmbeddings:
        """Run the encoder once on one image and keep what it made (the SamPredictor.set_image step).

        Args:
            image, folds, tta, precision: as in :meth:`predict`.
            for_prompts: also keep the base encoder's embedding (adapters off) that box prompts
                decode from. Free when no adapter touches the encoder; otherwise one more
                encoder pass on the identity view, so that a later correction runs none.
            spacing_mm: as in :meth:`predict`.
        """
        start = time.perf_counter()
        loaded = load_image(image)
        spacing_mm = pixel_spacing_mm(loaded) if spacing_mm is None else spacing_mm
        if spacing_mm is not None:
            check_spacing(spacing_mm)  # a bad spacing is refused before the encoder runs
            spacing_mm = tuple(float(v) for v in spacing_mm)
        tta = self.default_tta if tta is None else bool(tta)
        folds = self.members(folds)
        framing = self.framing(loaded.pixels, str(loaded.path or loaded.name or "image"))
        pixel_values = self.preprocess(loaded.pixels, loaded.name or "image", framing)
        timings = {"load_and_preprocess": time.perf_counter() - start}
        start = time.perf_counter()
        with self._lock, self._autocast(precision):
            per_fold = self._encode(inference.tta_views(pixel_values, tta), folds)
            base = None
            if for_prompts:
                if self.encoder_scope == "none":
                    base = per_fold[folds[0]][:1]
                else:
                    with self._adapters_off():
                        base = self.base_model.get_image_embeddings(pixel_values)
        timings["encoder"] = time.perf_counter() - start
        return ImageEmbeddings(image=as_uint8(loaded), name=loaded.name, folds=folds, tta=tta,
                               precision=precision, per_fold=per_fold, base=base, timings=timings,
                               spacing_mm=spacing_mm, framing=framing)

    @torch.inference_mode()
    def decode(self, embeddings: ImageEmbeddings, boxes: dict | None = None,
               box_policy: str | None = None) -> Prediction:
        """The fold ensemble's prediction from kept embeddings, optionally corrected by box prompts;
        no encoder pass. The probabilities, disagreement and fold AoPs stay the ensemble's; the
        label map and the AoP show the correction.

        Args:
            embeddings: from :meth:`embed`.
            boxes: ``{"ps": (x0, y0, x1, y1), "fh": ...}`` in image pixels: those structures are
                re-segmented by the base's decoder from the box (SAM's box prompt) and replace
                the ensemble's; the other structure is kept (:mod:`psfh.model.prompts`). Needs
                embeddings made with ``for_prompts=True``.
            box_policy: how a box corrects a structure (:func:`psfh.model.prompts.box_outline`):
                "ensemble_first" or "sam" for both; None: each structure's measured best
                (:data:`psfh.model.prompts.DEFAULT_POLICY`).
        """
        checked = prompts.check_boxes(boxes, embeddings.size)
        if checked and embeddings.base is None:
            raise PSFHInputError("box prompts need embeddings made with embed(..., for_prompts=True)")
        if embeddings.automatic is None:  # the ensemble's answer does not change with prompts: once
            start = time.perf_counter()
            with self._lock, self._autocast(embeddings.precision):
                members = self._decode_folds(embeddings.per_fold, embeddings.folds, embeddings.tta).cpu()
            timings = {**embeddings.timings, "decoder": time.perf_counter() - start}
            embeddings.automatic = self.prediction_from_members(
                members, embeddings.size, embeddings.folds, embeddings.tta, name=embeddings.name, timings=timings,
                image=embeddings.image, spacing_mm=embeddings.spacing_mm,
                framing=embeddings.framed(self.config.input_size))
        automatic = embeddings.automatic
        if not checked:
            return automatic
        start = time.perf_counter()
        # Boxes go to the model's grid and the decoder's mask back to the image through the framing
        # the encoder saw: on the grid, box_to_input and mask_from_logits have nothing left to scale.
        framed, side = embeddings.framed(self.config.input_size), self.config.input_size
        with self._lock, self._autocast(embeddings.precision), self._adapters_off():
            box_logits = {value: prompts.box_mask_logits(
                self.base_model, embeddings.base,
                prompts.box_to_input(inference.box_to_grid(box, framed), (side, side), side)).cpu()
                for value, box in checked.items()}
        corrected = {value: prompts.box_outline(
            automatic.label_map == value,
            prompts.mask_from_logits(inference.to_frame(logits[None], framed, -1e4)[0], embeddings.size),
            checked[value], box_policy or prompts.DEFAULT_POLICY[value])
            for value, logits in box_logits.items()}
        label_map = prompts.fuse(automatic.label_map, corrected)
        aop = measure_aop(label_map)
        # A corrected structure follows the user's box, not the model: the views' and folds' AoPs
        # no longer describe it, so only the image and anatomy checks run.
        return replace(automatic, label_map=label_map, aop=aop,
                       quality=quality.check_corrected(embeddings.image, label_map, set(checked), aop),
                       hsd=measure_hsd(label_map, embeddings.spacing_mm),
                       corrected={CLASSES[value]: list(box) for value, box in checked.items()},
                       timings={"correction": time.perf_counter() - start})

    def predict(self, image, folds: list[str] | None = None, tta: bool | None = None,
                precision: str = "fp32", boxes: dict | None = None,
                spacing_mm: tuple[float, float] | None = None, stability_check: bool = False) -> Prediction:
        """Segment PS and FH in one image and measure the AoP (:meth:`embed`, then :meth:`decode`).

        Args:
            image: a file path (.png .jpg .bmp .tif .mha .nii .nii.gz .nrrd), an H x W or H x W x C
                numpy array (uint8, uint16 or float), a PIL image, or a :class:`psfh.io.images.LoadedImage`.
            folds: which fold adapters to ensemble (default: all).
            tta: horizontal-flip test-time augmentation (default: :attr:`default_tta`).
            precision: "fp32" (reference) or "bf16" (autocast; faster on CPUs with AVX512-BF16).
            boxes: optional box prompts per structure, ``{"ps": (x0, y0, x1, y1)}`` in image
                pixels (see :meth:`decode`). To correct one image several times, keep
                ``embed(image, for_prompts=True)`` and call :meth:`decode` with each box.
            spacing_mm: (row, col) mm per pixel, for the HSD in mm; default: the file's own
                (:func:`psfh.io.images.pixel_spacing_mm`: a DICOM's, or a SimpleITK file's unless 1 x 1).
            stability_check: also segment the frame made brighter, darker and zoomed out with the
                first fold, and flag an AoP that moves too much (:mod:`psfh.measure.stability`; three more
                passes of one fold). Not with ``boxes``: a corrected result is the user's outline.
        Raises:
            PSFHInputError: unreadable or invalid input, unknown folds, a package without folds, bad boxes.
        """
        if stability_check:
            stability.refuse_corrected(boxes)  # before the encoder runs
        embeddings = self.embed(image, folds, tta, precision, for_prompts=bool(boxes), spacing_mm=spacing_mm)
        prediction = self.decode(embeddings, boxes)
        return stability.checked(self, prediction, embeddings.image) if stability_check else prediction

    def _adapters_off(self):
        """Context: the base alone (peft's disable_adapter), for box prompts. Call under the lock."""
        return self.network.disable_adapter() if isinstance(self.network, PeftModel) else nullcontext()

    def prediction_from_members(self, members: torch.Tensor, size: tuple[int, int], folds: list[str], tta: bool,
                                name: str | None = None, timings: dict[str, float] | None = None,
                                image: np.ndarray | None = None,
                                spacing_mm: tuple[float, float] | None = None,
                                framing: inference.Framing | None = None) -> Prediction:
        """The ensemble's members -> a :class:`Prediction` at the image's H x W ``size``.

        ``members`` is F x V x 3 x S x S (:meth:`fold_probabilities`): they are averaged (soft
        ensemble), brought back to the image through its ``framing`` (:meth:`framing`, what
        :meth:`preprocess` used), turned into a label map with the largest component of each
        structure, and the AoP is measured on it, on each fold's own prediction and on each
        fold's view, and the HSD on the label map (in mm with ``spacing_mm``, (row, col)). With
        the H x W uint8 ``image``, the quality checks run on it, the label map and the views'
        and folds' AoPs. Without ``framing``, it is the framing of ``image`` when given, else the
        image taken whole (:func:`psfh.model.inference.whole_frame`: right for a 256 x 256 PSFHS
        frame whose content starts at its top and spans its width, not for a cropped one).
        """
        if framing is None:
            framing = (inference.framing(image, self.config.input_size, name or "image") if image is not None
                       else inference.whole_frame(size, self.config.input_size, name or "image"))
        if tuple(framing.size) != tuple(size):
            raise PSFHInputError(f"{name or 'image'}: framing of a {framing.size} frame for members of a {size} image")
        timings = dict(timings or {})
        start = time.perf_counter()
        mean, disagreement = inference.ensemble(members.flatten(0, 1))
        label_map, probabilities = inference.to_label_map(mean, framing)
        disagreement_map = inference.resize_map(disagreement, framing).numpy()
        fold_aop_deg = {fold: measure_aop(inference.to_label_map(members[i].mean(dim=0), framing)[0]).angle_deg
                        for i, fold in enumerate(folds)}
        # Each fold's views alone, for the self-agreement checks; with one view (no flip) that is
        # the fold's own prediction, measured above already, and there is nothing to compare.
        view_maps = ({fold: [inference.to_label_map(view, framing)[0] for view in members[i]]
                      for i, fold in enumerate(folds)} if members.shape[1] > 1 else {})
        view_aop_deg = {fold: [measure_aop(m).angle_deg for m in maps] for fold, maps in view_maps.items()}
        aop = measure_aop(label_map)
        checked_quality = None if image is None else quality.check(
            image, label_map, view_aop_deg, fold_aop_deg, view_maps, aop)
        timings["postprocess_and_aop"] = time.perf_counter() - start
        timings["total"] = sum(timings.values())
        return Prediction(label_map=label_map, probabilities=probabilities, disagreement=disagreement_map,
                          aop=aop, fold_aop_deg=fold_aop_deg, folds=list(folds), tta=tta, timings=timings, name=name,
                          quality=checked_quality, view_aop_deg=view_aop_deg, hsd=measure_hsd(label_map, spacing_mm),
                          spacing_mm=spacing_mm, backend=self.backend)
