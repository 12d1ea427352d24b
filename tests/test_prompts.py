"""Embed once, decode many: box prompts re-segment one structure from kept embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfh.core.errors import PSFHInputError
from psfh.core.labels import FH, PS
from psfh.model.prompts import box_to_input, check_boxes, fuse


def test_boxes_are_checked_clipped_and_named():
    assert check_boxes({"ps": (10, 5, 30, 20), "fetal_head": [0, 0, 500, 90]}, (100, 200)) == {
        PS: (10.0, 5.0, 30.0, 20.0), FH: (0.0, 0.0, 199.0, 90.0)}
    assert check_boxes(None, (10, 10)) == {}
    for boxes, message in (({"head": (0, 0, 5, 5)}, "'ps'"), ({"ps": (5, 5, 5, 9)}, "x0 < x1"),
                           ({"ps": (0, 0, 1)}, "four numbers"), ({"fh": (300, 0, 400, 5)}, "outside"),
                           ({"ps": (0, float("nan"), 3, 3)}, "x0 < x1")):
        with pytest.raises(PSFHInputError, match=message):
            check_boxes(boxes, (100, 200))


def test_a_box_is_scaled_to_the_model_input():
    assert torch.allclose(box_to_input((10, 20, 110, 60), (200, 400), 256), torch.tensor([[[6.4, 25.6, 70.4, 76.8]]]))


def test_fuse_replaces_the_corrected_structure_and_keeps_the_other():
    labels = np.zeros((6, 6), np.uint8)
    labels[0:2, 0:2] = PS
    labels[3:6, 0:6] = FH
    new_ps = np.zeros((6, 6), bool)
    new_ps[2:4, 4:6] = True  # moved, and over two head pixels
    fused = fuse(labels, {PS: new_ps})
    assert (fused == PS).sum() == 4 and fused[0, 0] == 0 and fused[3, 4] == PS
    assert (fused == FH).sum() == 18 - 2


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(3)
    return rng.integers(0, 255, (72, 64)).astype(np.uint8)


def test_predict_is_embed_then_decode_and_a_correction_runs_no_encoder(tiny_model, image, monkeypatch,
                                                                       one_torch_thread):
    expected = tiny_model.predict(image)
    embeddings = tiny_model.embed(image, for_prompts=True)
    automatic = tiny_model.decode(embeddings)
    np.testing.assert_array_equal(automatic.label_map, expected.label_map)
    assert automatic.corrected == {} and automatic.report()["corrected_by_user"] == {}

    def no_pass(*args, **kwargs):
        raise AssertionError("a correction must not run the encoder or the fold decoders again")

    monkeypatch.setattr(tiny_model.base_model.vision_encoder, "forward", no_pass)
    monkeypatch.setattr(tiny_model, "_decode_folds", no_pass)
    corrected = tiny_model.decode(embeddings, boxes={"ps": (8, 8, 30, 20)})
    assert corrected.report()["corrected_by_user"] == {"pubic_symphysis": [8.0, 8.0, 30.0, 20.0]}
    ps = corrected.label_map == PS
    untouched = (automatic.label_map == FH) & ~ps
    assert ((corrected.label_map == FH) == untouched).all(), "the fetal head is kept where the PS did not take it"
    np.testing.assert_array_equal(corrected.probabilities, automatic.probabilities)
    assert corrected.aop == tiny_model.decode(embeddings, boxes={"ps": (8, 8, 30, 20)}).aop  # repeatable

    # A box around the ensemble's own PS keeps it ("ensemble_first"); the box-prompted decoder redraws it ("sam").
    rows, cols = np.nonzero(automatic.label_map == PS)
    assert len(rows), "the tiny package finds some PS on this image"
    around = (cols.min() - 2, rows.min() - 2, cols.max() + 2, rows.max() + 2)
    kept = tiny_model.decode(embeddings, boxes={"ps": around}, box_policy="ensemble_first")
    np.testing.assert_array_equal(kept.label_map, automatic.label_map)
    redrawn = tiny_model.decode(embeddings, boxes={"ps": around}, box_policy="sam")
    assert not np.array_equal(redrawn.label_map == PS, automatic.label_map == PS)


def test_boxes_need_embeddings_kept_for_prompts(tiny_model, image, one_torch_thread):
    embeddings = tiny_model.embed(image)
    assert embeddings.base is None
    with pytest.raises(PSFHInputError, match="for_prompts=True"):
        tiny_model.decode(embeddings, boxes={"fh": (0, 0, 10, 10)})
    with pytest.raises(PSFHInputError, match="x0 < x1"):
        tiny_model.predict(image, boxes={"fh": (10, 0, 0, 10)})
    with pytest.raises(PSFHInputError, match="boxes must map a structure"):
        tiny_model.predict(image, boxes=[(0, 0, 10, 10)])


def test_the_base_embedding_is_the_unadapted_encoders(tiny_model, image, one_torch_thread):
    """The package adapts its encoder: the prompt embedding is the base's, not a fold's."""
    embeddings = tiny_model.embed(image, tta=False, for_prompts=True)
    pixels = tiny_model.preprocess(image)
    with torch.no_grad(), tiny_model.network.disable_adapter():
        base = tiny_model.base_model.get_image_embeddings(pixels)
    assert tiny_model.encoder_scope == "all", "the base pass is the extra one, not a fold's"
    scale = base.abs().max()  # the tiny random encoder's outputs are far from unit size
    assert (embeddings.base - base).abs().max() <= 1e-5 * scale


def test_ensemble_first_keeps_the_ensembles_outline_in_the_box_and_asks_sam_elsewhere():
    from psfh.model.prompts import box_outline

    ensemble = np.zeros((40, 40), bool)
    ensemble[10:20, 10:20] = True
    sam = np.zeros((40, 40), bool)
    sam[12:18, 12:30] = True
    # The box covers the ensemble's structure (give or take the margin): its outline stays, trimmed.
    np.testing.assert_array_equal(box_outline(ensemble, sam, (12, 12, 30, 30), "ensemble_first"), ensemble)
    trimmed = box_outline(ensemble, sam, (17, 10, 30, 30), "ensemble_first")
    assert trimmed[:, :12].sum() == 0 and trimmed.sum() == 10 * 8
    # The ensemble put it elsewhere: the box-prompted mask.
    np.testing.assert_array_equal(box_outline(ensemble, sam, (28, 28, 38, 38), "ensemble_first"), sam)
    np.testing.assert_array_equal(box_outline(ensemble, sam, (12, 12, 30, 30), "sam"), sam)
    with pytest.raises(PSFHInputError, match="box policy"):
        box_outline(ensemble, sam, (0, 0, 5, 5), "best")
