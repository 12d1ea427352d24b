"""Shared fixtures: the real data set, the examples, tiny-random packages, and the embedded package
(loaded once per run) with its cached predictions of the examples.

Tests that need the full PSFHS data set read it from $PSFH_DATA (default ../shared/data/psfhs
beside the repository) and call :func:`require_data`: on a fresh clone without it they are
skipped, with that reason; with PSFH_REQUIRE_DATA=1 (CI, .ci/run) a missing data set fails them
instead, so CI never skips them. Everything else runs from examples/ and generated data.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PSFH_DATA") or ROOT.parent / "shared" / "data" / "psfhs")
# The challenge AoP reference (shared/reference/aop_on_ground_truth.csv), beside the data set.
REFERENCE = Path(os.environ.get("PSFH_REFERENCE") or ROOT.parent / "shared" / "reference")
EXAMPLES = ROOT / "examples"
EMBEDDED = ROOT / "models" / "psfh-lite-medsam"

# Label maps that no AoP measurement may accept (each must raise PSFHInputError).
BAD_LABEL_MAPS = [
    np.zeros(10, dtype=np.uint8),  # 1-D
    np.zeros((0, 0), dtype=np.uint8),  # empty
    np.zeros((5, 0), dtype=np.uint8),  # empty
    np.zeros((2, 8, 8), dtype=np.uint8),  # 3-D
    np.full((8, 8), 3, dtype=np.uint8),  # not a PS/FH label
    np.full((8, 8), 0.5),  # probabilities, not labels
]

def tiny_train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """train.py's arguments for a tiny-random 2-fold run on ``data`` into ``out``."""
    return ["--data", str(data), "--out", str(out), "--base", "tiny-random", "--n-folds", "2", "--block-size", "2",
            "--batch-size", "4", "--no-progress", *extra]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """The 8 real image/label pairs of examples/ in the published layout, copied (training tests)."""
    root = tmp_path_factory.mktemp("psfhs8")
    for sub in ("image_mha", "label_mha"):
        shutil.copytree(EXAMPLES / sub, root / sub)
    return root


def have_data() -> bool:
    return (DATA / "image_mha").is_dir() and (DATA / "label_mha").is_dir()


def _missing(reason: str) -> None:
    if os.environ.get("PSFH_REQUIRE_DATA") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def require_data() -> Path:
    """The PSFHS data set folder; skips the test when it is missing (fails it under PSFH_REQUIRE_DATA=1)."""
    if not have_data():
        _missing(f"needs the PSFHS data set, not found at {DATA} (set PSFH_DATA to its folder)")
    return DATA


def require_reference(name: str) -> Path:
    """A file of the shared reference folder ($PSFH_REFERENCE); skipped or failed as require_data."""
    path = REFERENCE / name
    if not path.is_file():
        _missing(f"needs {path} (set PSFH_REFERENCE to its folder)")
    return path


# Two cores: more torch threads than that only adds contention (PSFH_TEST_THREADS=1 beside a busy job).
torch.set_num_threads(int(os.environ.get("PSFH_TEST_THREADS", "2")))


def randomise_adapters(model, seed: int = 0, scale: float = 0.5) -> None:
    """Give every LoRA B matrix random values so the folds really differ (peft starts them at 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.network.named_parameters():
            if "lora_B" in name or ".modules_to_save." in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory):
    """A saved tiny-random package with 3 folds whose adapters differ."""
    from psfh.model.lora import make_lora_config
    from psfh.model.psfh_model import PSFHModel

    torch.manual_seed(0)  # LoRA A matrices are drawn from the global RNG: keep the fixture reproducible
    model = PSFHModel.from_base("tiny-random", ["fold_0", "fold_1", "fold_2"],
                                make_lora_config(encoder_rank=4, decoder_rank=4), device="cpu")
    randomise_adapters(model)
    folder = tmp_path_factory.mktemp("tiny_package")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def lite_medsam_base():
    """The converted LiteMedSAM base (no adapters)."""
    from psfh.model.package import PackageConfig, load_base

    return load_base(PackageConfig.load(EMBEDDED), EMBEDDED)


@pytest.fixture(scope="session")
def embedded():
    """The real embedded package (models/psfh-lite-medsam, every fold), loaded once per run.

    Shared by every test that uses it: a test must not change its weights or settings, or must
    put them back before it ends (PSFHModel.predict itself changes nothing)."""
    from psfh.model.psfh_model import PSFHModel

    return PSFHModel.from_pretrained(device="cpu")


class ExamplePredictions(Mapping):
    """The embedded package's prediction of each example frame (examples/image_mha) by its full
    fold ensemble (every fold, the package's flip TTA; named, since the package's default is its
    soup), by id ("03811"), each made at most once per run, on first use. Read them only: they
    are shared."""

    def __init__(self, model):
        self.model = model
        self.paths = {path.stem: path for path in sorted((EXAMPLES / "image_mha").glob("*.mha"))}
        self._cache = {}

    def __getitem__(self, sample_id):
        if sample_id not in self._cache:
            self._cache[sample_id] = self.model.predict(self.paths[sample_id], folds=self.model.folds)
        return self._cache[sample_id]

    def __iter__(self):
        return iter(self.paths)

    def __len__(self):
        return len(self.paths)


@pytest.fixture(scope="session")
def example_predictions(embedded):
    """:class:`ExamplePredictions` of the session's embedded package."""
    return ExamplePredictions(embedded)


@pytest.fixture
def example_images():
    return sorted((EXAMPLES / "image_mha").glob("*.mha"))


@pytest.fixture
def one_torch_thread():
    """Run the tiny model on one thread: its matrices are too small to share, and a second thread
    spinning against a busy core made these tests 20-40 times slower on the 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def app_outputs(tmp_path_factory):
    """The demo's downloads go under pytest's tmp dir, not the machine's /tmp/psfh-app."""
    import app

    saved = app.OUTPUT_ROOT
    app.OUTPUT_ROOT = tmp_path_factory.mktemp("app_outputs")
    yield app.OUTPUT_ROOT
    app.OUTPUT_ROOT = saved


@pytest.fixture(scope="module")
def tiny_model(tiny_package):
    """The tiny package loaded once per test module."""
    from psfh.model.psfh_model import PSFHModel

    return PSFHModel.from_pretrained(tiny_package, device="cpu")
