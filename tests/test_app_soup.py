"""The demo with a fold soup: the Model choice, the API's mode, what the page says made a result."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import app
from psfh.batch.cine import fast_options
from psfh.model.psfh_model import PSFHModel
from psfh.model.soup import SOUP


@pytest.fixture(scope="module")
def souped(tiny_package):
    """The tiny package with its soup made the default (as the shipped package)."""
    model = PSFHModel.from_pretrained(tiny_package, device="cpu")
    model.add_soup()
    model.config.default_adapters = [SOUP]
    return model


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("soup_app") / "frame.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 80)).astype(np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("mode, n_folds, members", [("soup", 3, [SOUP]), ("default", 3, [SOUP]),
                                                     ("ensemble", 2, ["fold_0", "fold_1"]),
                                                     ("ensemble", None, ["fold_0", "fold_1", "fold_2"]),
                                                     (None, 1, ["fold_0"])])
def test_the_mode_chooses_the_members(souped, image, mode, n_folds, members):
    *_, report, analysis = app.run_segment(souped, image, True, n_folds, mode=mode)
    assert report["folds"] == members and analysis.prediction.folds == members


def test_the_page_says_which_mode_made_the_result(souped, image):
    *_, analysis = app.run_segment(souped, image, True, 3, mode="soup")
    assert "Made by the fold soup" in app.timing_markdown(analysis)
    assert "come with the fold ensemble" in app.fold_markdown(analysis.prediction)
    *_, analysis = app.run_segment(souped, image, True, 2, mode="ensemble")
    assert "Made by 2 fold(s) (fold_0, fold_1)" in app.timing_markdown(analysis)


def test_bad_modes_are_refused(souped, tiny_model, image):
    with pytest.raises(gr.Error, match="mode must be one of default, soup, ensemble"):
        app.run_segment(souped, image, True, 3, mode="fastest")
    with pytest.raises(gr.Error, match="no fold soup: choose the ensemble"):
        app.run_segment(tiny_model, image, True, 3, mode="soup")


def test_the_model_choice_starts_at_the_packages_default(souped, tiny_model):
    def mode_radio(model):
        demo = app.build_demo(model)
        return next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "mode")

    radio = mode_radio(souped)
    assert radio.value == "soup" and radio.visible
    radio = mode_radio(tiny_model)  # no soup: the ensemble, and no choice to show
    assert radio.value == "ensemble" and not radio.visible


def test_the_fast_clip_mode_is_the_soup_with_the_flip(souped, tiny_model):
    assert fast_options(souped) == {"folds": [SOUP], "tta": True}
    assert fast_options(tiny_model) == {"folds": ["fold_0"], "tta": False}
