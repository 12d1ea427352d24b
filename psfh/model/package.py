"""The on-disk model package: its JSON config, base weights, fold adapters, and where it comes from.

A package is a folder (locally or as a Hugging Face hub repository)::

    psfh_config.json               PackageConfig: base, input size, normalisation, classes, folds, ...
    base/model.safetensors         base weights, when the package embeds its base (lite-medsam)
    fold_0/adapter_config.json     one peft LoRA adapter per cross-validation fold
    fold_0/adapter_model.safetensors
    ...
    folds.json                     which training image was held out by which fold (from train.py)
    README.md                      the model card (hub repositories)

Only safetensors are ever read: a package holding pickle weights (.bin, .pt, .pth, .pkl, .ckpt)
is refused before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from psfh.core.errors import PSFHInputError
from psfh.core.files import atomic_target, write_text_atomic
from psfh.core.labels import CLASSES
from psfh.model.bases import EMBEDDED_PACKAGE_DIR, get_base

FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
BASE_WEIGHTS = Path("base") / "model.safetensors"
DEFAULT_PACKAGE_DIR = EMBEDDED_PACKAGE_DIR  # the package `from_pretrained()` loads with no argument
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class PackageConfig:
    """Everything needed to rebuild a model package besides its weights (``psfh_config.json``).

    Attributes:
        base: registry name or hub id of the SamModel base (see :mod:`psfh.model.bases`).
        base_revision: hub revision of the base (hub bases only).
        embedded_base: True when ``base/model.safetensors`` holds the base weights.
        base_package: where those weights are when this package borrows them from another
            package instead of holding a copy: a folder relative to this one (two packages
            shipped side by side share one base file) or a hub repo id. None: its own ``base/``.
        input_size: side of the square model input in pixels.
        pixel_mean / pixel_std: per-channel normalisation applied to the [0, 1]-scaled image.
        classes: names of the output channels, in order (label values 0, 1, 2).
        folds: adapter names, one per cross-validation fold (sub-folders of the package).
        lora: the peft LoraConfig arguments every fold shares.
        trained: plain-words record of what was trained (and what stayed frozen).
        tta: test-time augmentation used by default.
        training: recipe, data and timing of the run that made the folds (free form).
        soup: how the package's fold soup (the adapter ``soup/``, :mod:`psfh.model.soup`) was made;
            empty when it has none.
        default_adapters: the adapters a prediction uses when the caller names none (empty: all
            folds, the ensemble).
    """

    FILENAME = "psfh_config.json"

    base: str
    input_size: int
    pixel_mean: list[float]
    pixel_std: list[float]
    embedded_base: bool = True
    base_package: str | None = None
    base_revision: str | None = None
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    folds: list[str] = field(default_factory=list)
    lora: dict = field(default_factory=dict)
    trained: dict = field(default_factory=dict)
    tta: dict = field(default_factory=lambda: {"horizontal_flip": True})
    training: dict = field(default_factory=dict)
    soup: dict = field(default_factory=dict)
    default_adapters: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @classmethod
    def for_base(cls, base: str, folds: list[str] | None = None, **overrides) -> "PackageConfig":
        """A config with the registry's defaults for ``base``."""
        spec = get_base(base)
        values = dict(base=base, input_size=spec.input_size, pixel_mean=list(spec.pixel_mean),
                      pixel_std=list(spec.pixel_std), embedded_base=spec.weights != "hub",  # random weights travel too
                      folds=list(folds or []))
        values.update(overrides)
        return cls(**values)

    @classmethod
    def load(cls, folder: Path) -> "PackageConfig":
        path = Path(folder) / cls.FILENAME
        if not path.is_file():
            raise PSFHInputError(f"{folder}: not a psfh model package (no {cls.FILENAME})")
        try:
            values = json.loads(path.read_text())
            config = cls(**values)
        except (json.JSONDecodeError, TypeError) as error:
            raise PSFHInputError(f"{path}: not a valid psfh package config ({error})") from None
        if config.format_version > FORMAT_VERSION:
            raise PSFHInputError(f"{path}: format version {config.format_version} is newer than this psfh "
                                 f"({FORMAT_VERSION}); upgrade psfh")
        return config

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(folder / self.FILENAME, json.dumps(asdict(self), indent=2) + "\n")


def refuse_pickle_weights(folder: Path) -> None:
    """Raise if the package holds any pickle-format weights: psfh only reads safetensors."""
    pickles = sorted(p for p in Path(folder).rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        names = ", ".join(str(p.relative_to(folder)) for p in pickles[:5])
        raise PSFHInputError(f"{folder}: the package holds pickle weights ({names}); psfh only loads "
                             "safetensors, because unpickling can run arbitrary code. Convert them to "
                             "safetensors first.")


def resolve_package(path_or_repo_id: str | os.PathLike | None, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Path:
    """A local folder for a package given as a folder, a hub repo id, or None (the embedded one).

    Hub repositories go through ``huggingface_hub.snapshot_download``, which honours
    ``HF_HUB_OFFLINE=1`` by reading the local HF cache only.
    """
    if path_or_repo_id is None:
        folder = DEFAULT_PACKAGE_DIR
        if not (folder / PackageConfig.FILENAME).is_file():
            raise PSFHInputError(f"the embedded package {folder} is missing; run `python -m psfh.convert` "
                                 "(see README) or pass a package folder or hub repo id")
        return folder
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise PSFHInputError(f"{path} is a file; a model package is a folder (or a hub repo id)")
    name = str(path_or_repo_id)
    if not HUB_ID_PATTERN.match(name):
        raise PSFHInputError(f"{name}: no such folder, and not a hub repo id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir,
                                      allow_patterns=["*.json", "*.safetensors", "*.md"]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise PSFHInputError(f"{name}: no such folder, and the hub repository could not be fetched or found "
                             f"in the local HF cache ({type(error).__name__}: {error})") from None


FOLDS_FILE = "folds.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's file name in each fold_k/ folder


def fold_name(index: int) -> str:
    """The name of fold ``index``'s adapter (and of its folder): ``fold_0``, ``fold_1``, ..."""
    return f"fold_{index}"


def write_fold_assignment(folder: Path, fold_of_id: dict[str, str], test_ids: list[str]) -> Path:
    """Write ``folder``'s folds.json: which fold held out which training image, and the test ids."""
    return write_text_atomic(Path(folder) / FOLDS_FILE,
                             json.dumps({"fold_of_id": fold_of_id, "test_ids": list(test_ids)}, indent=1))


def read_fold_assignment(folder: Path) -> dict[str, str]:
    """{image id: the fold adapter that held it out} of the package in ``folder`` (its folds.json,
    written by train.py), or PSFHInputError when the package has none."""
    path = Path(folder) / FOLDS_FILE
    if not path.is_file():
        raise PSFHInputError(f"{folder}: the package has no {FOLDS_FILE} (written by train.py), so it does not "
                             "say which fold held out which image")
    try:
        return dict(json.loads(path.read_text())["fold_of_id"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise PSFHInputError(f"{path}: not a psfh folds file ({error})") from None


def base_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base SamModel's own weights, also when peft has wrapped some of its layers.

    peft renames a wrapped layer's weight ``x.weight`` to ``x.base_layer.weight`` (LoRA) or
    ``x.original_module.weight`` (modules_to_save); adapter tensors are dropped.
    """
    state = {}
    for key, tensor in model.state_dict().items():
        if "lora_" in key or ".modules_to_save." in key:
            continue
        key = key.replace(".base_layer.", ".").replace(".original_module.", ".")
        key = key.removeprefix("base_model.model.")
        state[key] = tensor.detach().contiguous()
    return state


def save_base_weights(model: torch.nn.Module, folder: Path) -> Path:
    """Write the base weights to ``folder/base/model.safetensors`` (atomically)."""
    target = Path(folder) / BASE_WEIGHTS
    target.parent.mkdir(parents=True, exist_ok=True)
    state = base_state_dict(model)
    # HF ties the prompt encoder's Fourier matrix to the model's: safetensors refuses shared
    # memory, so store separate contiguous copies (they are 256 floats).
    state = {k: v.clone() for k, v in state.items()}
    with atomic_target(target) as temporary:
        save_file(state, str(temporary), metadata={"format": "pt", "producer": "psfh"})
    return target


def base_weights_path(config: PackageConfig, folder: Path) -> Path:
    """The embedded base weights of the package in ``folder``: its own, or those of the package
    its config's ``base_package`` names (a folder beside it, or a hub repo id)."""
    if not config.base_package:
        return folder / BASE_WEIGHTS
    beside = (folder / config.base_package).resolve()
    lender = beside if beside.is_dir() else resolve_package(config.base_package)
    refuse_pickle_weights(lender)
    weights = lender / BASE_WEIGHTS
    if not weights.is_file():
        raise PSFHInputError(f"{folder}: the base is borrowed from {config.base_package!r}, which has no "
                             f"{BASE_WEIGHTS}")
    return weights


def load_base(config: PackageConfig, folder: Path | None):
    """Build the package's base SamModel (on the CPU, in eval mode) and load its weights: from
    ``folder``'s package when it embeds them, from the hub, or none (a random-weights base)."""
    spec = get_base(config.base)
    if config.embedded_base and folder is not None:
        weights = base_weights_path(config, Path(folder))
        if not weights.is_file():
            raise PSFHInputError(f"{folder}: the config says the base is embedded but {BASE_WEIGHTS} is missing")
        model = spec.build(config.input_size)
        state = load_file(str(weights))
        missing, unexpected = model.load_state_dict(state, strict=False)
        # The tied Fourier matrix may be stored once; anything else missing is an error.
        missing = [k for k in missing if not k.endswith("shared_embedding.positional_embedding")]
        if missing or unexpected:
            raise PSFHInputError(f"{weights}: weights do not match base {config.base!r} "
                                 f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    elif spec.weights == "package":
        raise PSFHInputError(f"base {config.base!r} keeps its weights in a package: give its folder")
    else:
        model = spec.build(config.input_size, revision=config.base_revision)
    return model.eval()


def base_key(model, purpose: str) -> str:
    """``<base name>-<16 hex>``: a hash of ``purpose`` (what the key names, with its format
    version), the frozen base's weights and the preprocessing (input size, normalisation) of a
    :class:`psfh.model.psfh_model.PSFHModel`: the key of anything computed from the base alone."""
    digest = hashlib.sha256(purpose.encode())
    config = model.config
    digest.update(json.dumps([config.input_size, config.pixel_mean, config.pixel_std]).encode())
    for name, tensor in sorted(base_state_dict(model.base_model).items()):
        digest.update(name.encode())
        digest.update(tensor.float().cpu().numpy().tobytes())
    return f"{config.base.replace('/', '--')}-{digest.hexdigest()[:16]}"


def package_key(folder: Path) -> str:
    """``<folder name>-<16 hex>``: a hash of what the fold adapters' predictions depend on: the base's
    weight files, each fold adapter's files and the config's preprocessing. The key of anything
    computed from the folds (their kept predictions); a soup or a new default leaves it unchanged."""
    folder = Path(folder)
    config = PackageConfig.load(folder)
    digest = hashlib.sha256(json.dumps([config.base, config.input_size, config.pixel_mean, config.pixel_std]).encode())
    files = [path for sub in ("base", *config.folds) for path in (folder / sub).rglob("*")]
    for path in sorted(files):
        if path.is_file() and path.suffix in (".safetensors", ".json"):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return f"{folder.name}-{digest.hexdigest()[:16]}"
