"""psfh.render.overlay: label overlay, AoP construction, disagreement heat map, keys."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from psfh.core.errors import PSFHInputError
from psfh.io.images import as_uint8, load_image, load_label_map
from psfh.measure.aop import AoPMeasurement, measure_aop
from psfh.measure.hsd import MISSES_HEAD, HSDMeasurement, measure_hsd
from psfh.render.overlay import (
    CONSTRUCTION_COLOUR,
    FH_COLOUR,
    HSD_COLOUR,
    PS_COLOUR,
    add_colour_bar,
    add_legend,
    arc_points,
    disagreement_heatmap,
    display_scale,
    draw_aop,
    draw_hsd,
    heat_colours,
    label_boundaries,
    overlay_labels,
    render_disagreement,
    render_segmentation,
    scale_point,
    upscale,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def scene():
    """A 120 x 160 gray image; PS: a slanted bar at the top left; FH: a disk below right of it."""
    image = np.full((120, 160), 60, np.uint8)
    labels = np.zeros((120, 160), np.uint8)
    rows, cols = np.mgrid[:120, :160]
    labels[(np.abs((rows - 20) - 0.3 * (cols - 30)) < 3) & (cols > 20) & (cols < 70)] = 1
    labels[(rows - 75) ** 2 + (cols - 95) ** 2 < 30 ** 2] = 2
    return image, labels


def near(rgb: np.ndarray, point, colour, radius: int = 2) -> bool:
    """Whether a pixel of ``colour`` lies within ``radius`` of ``point`` (x, y)."""
    x, y = int(round(point[0])), int(round(point[1]))
    window = rgb[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
    return bool((window == np.asarray(colour, np.uint8)).all(axis=-1).any())


def test_label_boundaries_are_the_outline_of_each_class():
    labels = np.zeros((10, 10), np.uint8)
    labels[2:6, 2:6] = 1
    edge = label_boundaries(labels)
    assert edge[2, 2:6].all() and edge[5, 2:6].all() and edge[2:6, 2].all()
    assert not edge[3:5, 3:5].any()  # interior
    assert not edge[labels == 0].any()  # background is never outlined


def test_overlay_colours_labels_keeps_background_and_input(scene):
    image, labels = scene
    before = image.copy()
    rgb = overlay_labels(image, labels)
    assert rgb.shape == (120, 160, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(image, before)  # input untouched
    background = labels == 0
    np.testing.assert_array_equal(rgb[background], np.repeat(image[background][:, None], 3, axis=1))
    edges = label_boundaries(labels)
    assert (rgb[edges & (labels == 1)] == PS_COLOUR).all()
    assert (rgb[edges & (labels == 2)] == FH_COLOUR).all()
    # The fill is a blend: between the gray and the class colour, not either of them.
    inside = rgb[75, 95].astype(int)
    assert inside.tolist() != list(FH_COLOUR) and inside.tolist() != [60, 60, 60]
    assert all(min(60, c) <= v <= max(60, c) for v, c in zip(inside, FH_COLOUR))


def test_overlay_refuses_mismatched_or_non_uint8_input(scene):
    image, labels = scene
    with pytest.raises(PSFHInputError, match="label_map has shape"):
        overlay_labels(image, labels[:-1])
    with pytest.raises(PSFHInputError, match="uint8"):
        overlay_labels(image.astype(np.float32), labels)


def test_arc_goes_the_short_way_at_its_radius():
    points = np.array(arc_points((10.0, 10.0), (20.0, 10.0), (10.0, 0.0), radius=5.0))
    np.testing.assert_allclose(np.hypot(points[:, 0] - 10, points[:, 1] - 10), 5.0)
    np.testing.assert_allclose(points[0], (15, 10), atol=1e-9)
    np.testing.assert_allclose(points[-1], (10, 5), atol=1e-9)
    # Quarter circle (90 deg), not the three-quarter one: every point is in the upper-right quadrant.
    assert (points[:, 0] >= 10 - 1e-9).all() and (points[:, 1] <= 10 + 1e-9).all()


def test_draw_aop_draws_the_construction(scene):
    image, labels = scene
    aop = measure_aop(labels)
    assert aop.measured
    rgb = overlay_labels(image, labels)
    before = rgb.copy()
    drawn = draw_aop(rgb, aop)
    np.testing.assert_array_equal(rgb, before)
    for point in (aop.ps_superior, aop.ps_inferior, aop.tangent_point):
        assert near(drawn, point, CONSTRUCTION_COLOUR)
    middle = np.add(aop.ps_superior, aop.ps_inferior) / 2  # on the PS axis
    assert near(drawn, middle, CONSTRUCTION_COLOUR)
    halfway = np.add(aop.ps_inferior, aop.tangent_point) / 2  # on the tangent line
    assert near(drawn, halfway, CONSTRUCTION_COLOUR)


def test_draw_aop_scales_points_to_an_enlarged_picture(scene):
    image, labels = scene
    aop = measure_aop(labels)
    drawn = draw_aop(upscale(overlay_labels(image, labels), 3), aop, scale=3)
    assert drawn.shape == (360, 480, 3)
    for point in (aop.ps_superior, aop.ps_inferior, aop.tangent_point):
        assert near(drawn, scale_point(point, 3), CONSTRUCTION_COLOUR)


def test_draw_aop_without_an_angle_draws_only_what_was_found():
    rgb = np.full((50, 50, 3), 90, np.uint8)
    np.testing.assert_array_equal(draw_aop(rgb, AoPMeasurement(None, "no fetal head found")), rgb)
    axis_only = AoPMeasurement(None, "the symphysis' inferior end lies inside the fetal head",
                               ps_superior=(10.0, 10.0), ps_inferior=(30.0, 20.0))
    drawn = draw_aop(rgb, axis_only)
    assert near(drawn, (20, 15), CONSTRUCTION_COLOUR)
    assert not near(drawn, (40, 40), CONSTRUCTION_COLOUR, radius=8)


def test_scale_point_maps_pixel_centres():
    assert scale_point((0.0, 0.0), 2) == (0.5, 0.5)  # pixel 0 becomes pixels 0..1, centre 0.5
    assert scale_point((3.0, 1.0), 1) == (3.0, 1.0)


def test_display_scale_enlarges_small_images_only_up_to_the_cap():
    assert display_scale(256, 256) == 2
    assert display_scale(600, 800) == 1
    assert display_scale(100, 1500) == 1  # 5x would make it 7500 wide


def test_heat_colours_run_dark_to_bright_and_clip():
    colours = heat_colours(np.linspace(0, 1, 11)).astype(float)
    luminance = colours @ [0.299, 0.587, 0.114]
    assert (np.diff(luminance) > 0).all()
    np.testing.assert_array_equal(heat_colours(np.array([-1.0, 2.0, np.nan])), heat_colours(np.array([0, 1, 0])))


def test_heatmap_alone_and_on_the_image():
    disagreement = np.zeros((20, 30))
    disagreement[5:10, 5:10] = 0.5
    alone = disagreement_heatmap(disagreement)
    assert alone.shape == (20, 30, 3) and alone.dtype == np.uint8
    image = np.full((20, 30), 100, np.uint8)
    on_image = disagreement_heatmap(disagreement, image)
    assert (on_image[0, 0] == 100).all()  # agreement: the plain image shows through
    assert not (on_image[7, 7] == 100).all()
    with pytest.raises(PSFHInputError):
        disagreement_heatmap(np.zeros((2, 3, 4)))
    with pytest.raises(PSFHInputError):
        disagreement_heatmap(disagreement, image[:-1])


def test_keys_append_below_and_keep_the_picture():
    rgb = np.random.default_rng(0).integers(0, 255, (64, 300, 3), dtype=np.uint8)
    for keyed in (add_legend(rgb), add_colour_bar(rgb)):
        assert keyed.shape[1] == 300 and keyed.shape[0] > 64
        np.testing.assert_array_equal(keyed[:64], rgb)
    narrow = add_legend(rgb[:, :120])  # wraps onto more rows rather than cutting names off
    assert narrow.shape[0] > add_legend(rgb).shape[0]


def test_render_example_with_its_ground_truth():
    path = sorted((EXAMPLES / "image_mha").glob("*.mha"))[0]
    image = as_uint8(load_image(path))
    labels = load_label_map(EXAMPLES / "label_mha" / path.name)
    aop = measure_aop(labels)
    picture = render_segmentation(image, labels, aop)
    assert picture.shape[1] == 512 and picture.shape[0] > 512 and picture.dtype == np.uint8
    assert near(picture, scale_point(aop.tangent_point, 2), CONSTRUCTION_COLOUR)
    heat = render_disagreement(image, np.zeros(image.shape, np.float32))
    assert heat.shape[1] == 512
    # No disagreement: the heat map's picture part is the enlarged image itself.
    np.testing.assert_array_equal(heat[:512, :, 0], upscale(image, 2))
    assert math.isfinite(aop.angle_deg)


# ------------------------------------------------------------------------------------- HSD


@pytest.fixture
def hsd_scene():
    """A 200 x 220 gray image; PS: a vertical bar (x 100..104, y 50..110); FH: a disk to its lower
    right, so that the HSD runs along row 110 from (102, 110) to (121.5, 110)."""
    image = np.full((200, 220), 60, np.uint8)
    labels = np.zeros((200, 220), np.uint8)
    rows, cols = np.mgrid[:200, :220]
    labels[(cols - 160) ** 2 + (rows - 120) ** 2 <= 40 ** 2] = 2
    labels[50:111, 100:105] = 1
    return image, labels


def test_draw_hsd_draws_the_line_between_apex_and_skull(hsd_scene):
    image, labels = hsd_scene
    hsd = measure_hsd(labels)
    assert hsd.measured
    rgb = overlay_labels(image, labels)
    before = rgb.copy()
    drawn = draw_hsd(rgb, hsd)
    np.testing.assert_array_equal(rgb, before)  # input untouched
    for t in (0.25, 0.5, 0.75):  # along the line the pixels change, and the HSD colour is there
        point = np.add(hsd.apex, t * np.subtract(hsd.skull_point, hsd.apex))
        x, y = np.rint(point).astype(int)
        assert (drawn[y, x] != before[y, x]).any()
        assert near(drawn, point, HSD_COLOUR, radius=1) and not near(before, point, HSD_COLOUR, radius=1)
    for point in (hsd.apex, hsd.skull_point):
        assert near(drawn, point, HSD_COLOUR)
    assert hsd.skull_point == pytest.approx((121.5, 110.0))
    np.testing.assert_array_equal(drawn[:90], rgb[:90])  # far from the line, nothing changed
    np.testing.assert_array_equal(drawn[130:], rgb[130:])


def test_draw_hsd_writes_the_distance_only_in_mm(hsd_scene):
    image, labels = hsd_scene
    rgb = overlay_labels(image, labels)
    assert measure_hsd(labels).measured
    in_px = draw_hsd(rgb, measure_hsd(labels))
    in_mm = draw_hsd(rgb, measure_hsd(labels, spacing_mm=(0.2, 0.2)))
    unlabelled = draw_hsd(rgb, measure_hsd(labels, spacing_mm=(0.2, 0.2)), label=False)
    np.testing.assert_array_equal(in_px, unlabelled)  # no mm: only the line
    assert (in_mm != unlabelled).any(axis=-1).sum() > 20  # the text's pixels


def test_a_short_hsds_label_keeps_clear_of_the_apex(hsd_scene):
    # An HSD of 3 px would put its label on the AoP's arc and angle label around the apex: the
    # text's centre lies at least a fifth of the picture past the apex.
    image, _ = hsd_scene
    rgb = overlay_labels(image, np.zeros_like(image))
    short = HSDMeasurement(3.0, distance_mm=0.6, apex=(100.0, 110.0), skull_point=(103.0, 110.0))
    text = (draw_hsd(rgb, short) != draw_hsd(rgb, short, label=False)).any(axis=-1)
    cols = np.nonzero(text)[1]
    assert len(cols) > 20 and cols.min() > 100 + min(rgb.shape[:2]) / 5 - 10  # 107 before the fix


def test_draw_hsd_without_a_distance_draws_nothing():
    rgb = np.full((50, 50, 3), 90, np.uint8)
    missed = HSDMeasurement(None, reason=MISSES_HEAD, apex=(10.0, 10.0))
    np.testing.assert_array_equal(draw_hsd(rgb, missed), rgb)


def test_render_segmentation_with_hsd_adds_the_line_and_a_legend_entry():
    path = sorted((EXAMPLES / "image_mha").glob("*.mha"))[0]
    image = as_uint8(load_image(path))
    labels = load_label_map(EXAMPLES / "label_mha" / path.name)
    aop = measure_aop(labels)
    hsd = measure_hsd(labels, spacing_mm=(0.2, 0.2))
    plain = render_segmentation(image, labels, aop)
    np.testing.assert_array_equal(render_segmentation(image, labels, aop, hsd=None), plain)
    with_hsd = render_segmentation(image, labels, aop, hsd=hsd)
    halfway = np.add(hsd.apex, hsd.skull_point) / 2
    assert near(with_hsd, scale_point(halfway, 2), HSD_COLOUR)
    assert not near(plain, scale_point(halfway, 2), HSD_COLOUR)
    assert near(with_hsd, scale_point(aop.tangent_point, 2), CONSTRUCTION_COLOUR)  # the AoP stays
    legend = with_hsd[512:]
    assert (legend == HSD_COLOUR).all(axis=-1).any()  # its swatch
    assert not (plain[512:] == HSD_COLOUR).all(axis=-1).any()
