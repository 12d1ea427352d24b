"""psfh.core.labels: the one label-map check and the one largest-component filter."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BAD_LABEL_MAPS

from psfh.core.errors import PSFHInputError
from psfh.core.labels import CLASSES, FH, LABEL_VALUES, PS, check_label_map, largest_components, structure_areas


def test_the_vocabulary_matches_the_model_channels_and_the_label_files():
    assert (PS, FH) == (1, 2) and LABEL_VALUES == (0, 1, 2)
    assert CLASSES == ("background", "pubic_symphysis", "fetal_head")


@pytest.mark.parametrize("labels", [np.array([[0, 1], [2, 2]], np.int64), np.array([[0.0, 1.0], [2.0, 0.0]]),
                                    np.array([[True, False], [False, True]])])
def test_integer_float_and_boolean_label_maps_pass_as_uint8(labels):
    checked = check_label_map(labels)
    assert checked.dtype == np.uint8
    np.testing.assert_array_equal(checked, labels.astype(np.uint8))


@pytest.mark.parametrize("labels", BAD_LABEL_MAPS + [np.array([[0, np.nan]]), np.array([["a"]])])
def test_every_bad_label_map_is_refused_with_the_name_given(labels):
    with pytest.raises(PSFHInputError, match="my map"):
        check_label_map(labels, "my map")


def test_values_other_than_0_1_2_are_named():
    with pytest.raises(PSFHInputError, match=r"label values \[3, 255\]"):
        check_label_map(np.array([[0, 3], [255, 1]], np.uint8))


def test_largest_components_keeps_one_8_connected_blob_per_structure():
    labels = np.zeros((20, 20), np.uint8)
    labels[1:4, 1:4] = PS           # 9 px
    labels[4, 4] = PS               # touches the first diagonally: the same 8-connected blob
    labels[10:12, 10:12] = PS       # 4 px island: dropped
    labels[14:20, 0:6] = FH         # 36 px
    labels[0, 19] = FH              # 1 px island: dropped
    kept = largest_components(labels)
    assert structure_areas(kept) == {"pubic_symphysis": 10, "fetal_head": 36}
    assert kept[4, 4] == PS and kept[10, 10] == 0 and kept[0, 19] == 0
    assert structure_areas(largest_components(np.zeros((5, 5), np.uint8))) == {"pubic_symphysis": 0, "fetal_head": 0}


def test_equal_blobs_keep_the_first_in_raster_order():
    labels = np.zeros((6, 6), np.uint8)
    labels[0, 4] = labels[5, 0] = PS
    kept = largest_components(labels)
    assert kept[0, 4] == PS and kept[5, 0] == 0
