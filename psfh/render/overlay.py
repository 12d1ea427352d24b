"""Pictures of a prediction: the label overlay, the AoP construction, the fold-disagreement map.

The last step of psfh's data flow (label map -> AoP -> overlay), numpy and Pillow only, so the
demo and any report can draw without a plotting library:

    rgb = render_segmentation(image_uint8, prediction.label_map, prediction.aop)
    heat = render_disagreement(image_uint8, prediction.disagreement)

Each piece is a function you can call alone: :func:`overlay_labels` colours PS and FH,
:func:`draw_aop` draws the angle's construction, :func:`draw_hsd` the head-symphysis distance
(optional: ``render_segmentation(..., hsd=measure_hsd(...))``), :func:`disagreement_heatmap` colours the
per-pixel disagreement, :func:`add_legend` and :func:`add_colour_bar` append a key below a
picture. Images are H x W (grayscale) or H x W x 3 (RGB) uint8 arrays; every function returns a
new array and never changes its input.

Points follow :mod:`psfh.measure.aop`: ``(x, y)`` = ``(column, row)`` at pixel centres.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from psfh.core.errors import PSFHInputError
from psfh.core.labels import FH, PS
from psfh.measure.aop import AoPMeasurement
from psfh.measure.hsd import HSDMeasurement

# Okabe-Ito colours: told apart with the common colour-vision deficiencies, and both stand out
# on a grayscale ultrasound frame.
PS_COLOUR = (230, 159, 0)  # orange
FH_COLOUR = (86, 180, 233)  # sky blue
CONSTRUCTION_COLOUR = (255, 236, 61)  # yellow: the lines and the arc of the AoP
HSD_COLOUR = (204, 121, 167)  # Okabe-Ito reddish purple: apart from the AoP's yellow and both labels
SHADOW_COLOUR = (0, 0, 0)  # drawn under every line and letter so they read on bright tissue too
LEGEND_BACKGROUND = (24, 24, 27)
LEGEND_TEXT = (240, 240, 240)

LEGEND_ENTRIES = (
    (PS_COLOUR, "pubic symphysis (PS)"),
    (FH_COLOUR, "fetal head (FH)"),
    (CONSTRUCTION_COLOUR, "AoP construction"),
)
HSD_LEGEND_ENTRY = (HSD_COLOUR, "head-symphysis distance (HSD)")
USER_POINT_COLOUR = (255, 255, 255)  # a ring around a construction point the user placed (calipers)
USER_POINT_LEGEND_ENTRY = (USER_POINT_COLOUR, "point you placed (ringed)")

# Anchors of a perceptually ordered black -> purple -> orange -> pale-yellow map (close to
# matplotlib's "inferno"): dark means agreement, so the eye goes to where the folds disagree.
_HEAT_ANCHORS = np.array([
    (0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99),
    (212, 72, 66), (245, 125, 21), (250, 193, 39), (252, 255, 164),
], dtype=np.float64)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape S) to colours, S x 3 uint8; values outside are clipped."""
    values = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    positions = np.linspace(0.0, 1.0, len(_HEAT_ANCHORS))
    channels = [np.interp(values, positions, _HEAT_ANCHORS[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


# --------------------------------------------------------------------------------- inputs


def as_rgb(image: np.ndarray) -> np.ndarray:
    """H x W or H x W x 3 uint8 -> a new H x W x 3 uint8 array."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise PSFHInputError(f"image must be uint8 (use psfh.io.images.as_uint8), got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.copy()
    raise PSFHInputError(f"image must be H x W or H x W x 3, got shape {image.shape}")


def _check_same_size(image: np.ndarray, other: np.ndarray, what: str) -> None:
    if np.asarray(other).shape != np.asarray(image).shape[:2]:
        raise PSFHInputError(
            f"{what} has shape {np.asarray(other).shape}; expected the image's {np.asarray(image).shape[:2]}"
        )


def display_scale(height: int, width: int, min_side: int = 512, max_side: int = 2048) -> int:
    """Integer factor that brings a small image up to ``min_side`` for display.

    Integer (nearest-neighbour) scaling keeps every label pixel a crisp block, and room for lines
    and text that would cover the anatomy of a 256 x 256 frame. Never above ``max_side``.
    """
    factor = max(1, math.ceil(min_side / max(1, min(height, width))))
    return max(1, min(factor, max_side // max(1, max(height, width))))


def upscale(array: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour integer upscaling of an H x W (x C) array -> (H*f) x (W*f) (x C)."""
    if factor == 1:
        return np.asarray(array).copy()
    return np.repeat(np.repeat(np.asarray(array), factor, axis=0), factor, axis=1)


def scale_point(point: tuple[float, float], factor: float) -> tuple[float, float]:
    """A pixel-centre point of the original image -> the same point in an image ``factor`` times larger."""
    return ((point[0] + 0.5) * factor - 0.5, (point[1] + 0.5) * factor - 0.5)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's bundled font: no system fonts are needed (Spaces images have few).
    return ImageFont.load_default(size=max(8, int(size)))


# --------------------------------------------------------------------------------- drawing


def label_boundaries(label_map: np.ndarray) -> np.ndarray:
    """H x W bool: labelled pixels with a 4-neighbour of another label (the outline of each class)."""
    labels = np.asarray(label_map)
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge & (labels != 0)


def overlay_labels(image: np.ndarray, label_map: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """Colour PS and FH on the image.

    Args:
        image: H x W (or H x W x 3) uint8 ultrasound image.
        label_map: H x W, 0 background, 1 PS, 2 FH.
        alpha: opacity of the fill; the outline is opaque so the boundary stays exact while the
            tissue under the fill stays visible.

    Returns:
        H x W x 3 uint8.
    """
    rgb = as_rgb(image)
    labels = np.asarray(label_map)
    _check_same_size(rgb, labels, "label_map")
    out = rgb.astype(np.float32)
    edges = label_boundaries(labels)
    for value, colour in ((PS, PS_COLOUR), (FH, FH_COLOUR)):
        mask = labels == value
        out[mask] = (1.0 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
        out[mask & edges] = colour
    return np.rint(out).astype(np.uint8)


def _shadowed_line(draw: ImageDraw.ImageDraw, points, width: int, colour) -> None:
    draw.line(points, fill=SHADOW_COLOUR, width=width + 2, joint="curve")
    draw.line(points, fill=colour, width=width, joint="curve")


def _dot(draw: ImageDraw.ImageDraw, point, radius: float, colour) -> None:
    x, y = point
    draw.ellipse((x - radius - 1, y - radius - 1, x + radius + 1, y + radius + 1), fill=SHADOW_COLOUR)
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)


def _unit(vector: np.ndarray) -> np.ndarray | None:
    norm = float(np.linalg.norm(vector))
    return None if norm < 1e-9 else vector / norm


def arc_points(apex, towards_a, towards_b, radius: float, steps: int = 48) -> list[tuple[float, float]]:
    """Points of the circular arc at ``apex`` from the ray to ``towards_a`` to the ray to
    ``towards_b``, the short way round (the AoP is the unsigned angle, at most 180 degrees)."""
    apex = np.asarray(apex, dtype=float)
    start = math.atan2(towards_a[1] - apex[1], towards_a[0] - apex[0])
    end = math.atan2(towards_b[1] - apex[1], towards_b[0] - apex[0])
    sweep = (end - start + math.pi) % (2 * math.pi) - math.pi  # in [-pi, pi): the short way
    return [(apex[0] + radius * math.cos(start + sweep * t / steps),
             apex[1] + radius * math.sin(start + sweep * t / steps)) for t in range(steps + 1)]


def draw_aop(rgb: np.ndarray, aop: AoPMeasurement, scale: float = 1.0, label: bool = True,
             user_points: tuple[str, ...] | frozenset | set = ()) -> np.ndarray:
    """Draw the AoP construction: the PS long axis between its two ends, the line from the
    inferior end (the apex) through the tangent point on the head, the angle's arc and its value.

    Args:
        rgb: H x W x 3 (or H x W) uint8 picture, possibly ``scale`` times the size of the label
            map the AoP was measured on.
        aop: the measurement; points are in label-map pixels. When it has no angle, whatever
            points it has (the PS axis) are drawn and nothing else.
        scale: size of ``rgb`` over the size of the label map.
        label: write the angle's value beside the arc.
        user_points: the construction's points a user placed ("ps_inferior", "ps_superior",
            "tangent_point"; :mod:`psfh.model.calipers`): each gets a white ring, so a reader sees
            which points are the model's and which a person's.

    Returns:
        A new H x W x 3 uint8 array.
    """
    picture = Image.fromarray(as_rgb(rgb))
    draw = ImageDraw.Draw(picture)
    size = min(picture.size)
    width = max(2, round(size / 220))
    radius = max(2.0, width * 1.3)

    superior = aop.ps_superior and scale_point(aop.ps_superior, scale)
    inferior = aop.ps_inferior and scale_point(aop.ps_inferior, scale)
    tangent = aop.tangent_point and scale_point(aop.tangent_point, scale)

    if superior and inferior:
        _shadowed_line(draw, [superior, inferior], width, CONSTRUCTION_COLOUR)
    if inferior and tangent and aop.measured:
        apex = np.asarray(inferior)
        towards = np.asarray(tangent) - apex
        # Go on past the tangent point: the line is a tangent to the skull, not a chord to it.
        end = apex + 1.25 * towards
        _shadowed_line(draw, [inferior, tuple(end)], width, CONSTRUCTION_COLOUR)

        axis_length = float(np.linalg.norm(np.asarray(superior) - apex))
        arc_radius = max(3.0 * width, 0.3 * min(axis_length, float(np.linalg.norm(towards))))
        _shadowed_line(draw, arc_points(inferior, superior, tangent, arc_radius), width, CONSTRUCTION_COLOUR)
        _dot(draw, tangent, radius, CONSTRUCTION_COLOUR)
        if label:
            _draw_angle_label(draw, picture.size, apex, np.asarray(superior), np.asarray(tangent),
                              arc_radius, f"{aop.angle_deg:.1f}\N{DEGREE SIGN}", size)
    for point in (superior, inferior):
        if point:
            _dot(draw, point, radius, CONSTRUCTION_COLOUR)
    placed = {"ps_superior": superior, "ps_inferior": inferior, "tangent_point": tangent}
    for name in user_points:
        if placed.get(name):
            _ring(draw, placed[name], 2.6 * radius, max(1, width // 2 + 1), USER_POINT_COLOUR)
    return np.asarray(picture)


def _ring(draw: ImageDraw.ImageDraw, point, radius: float, width: int, colour) -> None:
    x, y = point
    draw.ellipse((x - radius - 1, y - radius - 1, x + radius + 1, y + radius + 1), outline=SHADOW_COLOUR,
                 width=width + 2)
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=colour, width=width)


def draw_hsd(rgb: np.ndarray, hsd: HSDMeasurement, scale: float = 1.0, label: bool = True) -> np.ndarray:
    """Draw the head-symphysis distance: the line from the PS apex to the skull point, a dot at
    each end, and (``label``) the distance in mm just past the skull point when the spacing was
    known.

    Args:
        rgb: H x W x 3 (or H x W) uint8 picture, possibly ``scale`` times the size of the label
            map the HSD was measured on.
        hsd: the measurement; points are in label-map pixels. When it has no distance nothing
            is drawn.
        scale: size of ``rgb`` over the size of the label map.
        label: write the distance; only a distance in mm is written, since a pixel count of a
            resampled frame would read as a clinical number it is not.

    Returns:
        A new H x W x 3 uint8 array.
    """
    picture = Image.fromarray(as_rgb(rgb))
    if not hsd.measured:
        return np.asarray(picture)
    draw = ImageDraw.Draw(picture)
    size = min(picture.size)
    width = max(2, round(size / 220))
    apex, skull = scale_point(hsd.apex, scale), scale_point(hsd.skull_point, scale)
    _shadowed_line(draw, [apex, skull], width, HSD_COLOUR)
    for point in (apex, skull):
        _dot(draw, point, max(2.0, width * 1.3), HSD_COLOUR)
    if label and hsd.distance_mm is not None:
        _draw_line_label(draw, picture.size, np.asarray(apex), np.asarray(skull),
                         f"HSD {hsd.distance_mm:.1f} mm", size)
    return np.asarray(picture)


def _draw_line_label(draw, picture_size, start, end, text, size) -> None:
    """Text just past the end of a line, on its extension (at least a fifth of the picture from
    its start), kept inside the picture.

    Past the skull point the text lies on the head's plain fill; beside the HSD line it would
    cross the AoP's tangent or its angle label, which lie on both sides of it.
    """
    along = _unit(end - start)
    if along is None:  # a zero-length line: put the text just below its point
        along = np.array([0.0, 1.0])
    font = _font(size / 20)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, anchor="mm", stroke_width=2)
    half_w, half_h = (right - left) / 2, (bottom - top) / 2
    # Centre the text so far along the line that its box (its extent along the line is
    # |ax| half_w + |ay| half_h) clears the end dot.
    reach = abs(along[0]) * half_w + abs(along[1]) * half_h
    # A short line would put the text on the AoP's arc and angle label around the line's start
    # (the apex): keep its centre at least a fifth of the picture from there.
    distance = max(float(np.linalg.norm(end - start)) + reach + size / 60, size / 5 + reach)
    anchor = start + along * distance
    x = float(np.clip(anchor[0], half_w + 2, picture_size[0] - half_w - 2))
    y = float(np.clip(anchor[1], half_h + 2, picture_size[1] - half_h - 2))
    draw.text((x, y), text, font=font, anchor="mm", fill=HSD_COLOUR, stroke_width=2, stroke_fill=SHADOW_COLOUR)


def _draw_angle_label(draw, picture_size, apex, superior, tangent, arc_radius, text, size) -> None:
    """The angle's value just outside the arc, on its bisector, kept inside the picture."""
    a, b = _unit(superior - apex), _unit(tangent - apex)
    if a is None or b is None:
        return
    bisector = _unit(a + b)
    if bisector is None:  # a straight angle: the bisector is perpendicular to the axis
        bisector = np.array([-a[1], a[0]])
    font = _font(size / 16)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, anchor="mm", stroke_width=2)
    half_w, half_h = (right - left) / 2, (bottom - top) / 2
    # Centre the text so far out along the bisector that its box (its extent along the
    # bisector is |bx| half_w + |by| half_h) clears the arc.
    reach = abs(bisector[0]) * half_w + abs(bisector[1]) * half_h
    anchor = apex + bisector * (arc_radius + reach + size / 100)
    x = float(np.clip(anchor[0], half_w + 2, picture_size[0] - half_w - 2))
    y = float(np.clip(anchor[1], half_h + 2, picture_size[1] - half_h - 2))
    draw.text((x, y), text, font=font, anchor="mm", fill=CONSTRUCTION_COLOUR,
              stroke_width=2, stroke_fill=SHADOW_COLOUR)


def disagreement_heatmap(disagreement: np.ndarray, image: np.ndarray | None = None,
                         max_alpha: float = 0.85) -> np.ndarray:
    """Colour the per-pixel fold disagreement.

    Args:
        disagreement: H x W floats in [0, 1] (the fraction of ensemble members that disagree
            with the ensemble's label).
        image: optional H x W (x 3) uint8 image to draw the heat on. Then the heat's opacity grows
            with the disagreement, so where the folds agree you see the plain image, and where
            they disagree the colour.
        max_alpha: opacity where the disagreement is 0.5 or more.

    Returns:
        H x W x 3 uint8.
    """
    values = np.asarray(disagreement, dtype=np.float64)
    if values.ndim != 2:
        raise PSFHInputError(f"disagreement must be H x W, got shape {values.shape}")
    colours = heat_colours(values)
    if image is None:
        return colours
    rgb = as_rgb(image)
    _check_same_size(rgb, values, "disagreement")
    # Half the members disagreeing is already the most uncertain a pixel can usefully be.
    alpha = (max_alpha * np.clip(np.nan_to_num(values) * 2.0, 0.0, 1.0))[..., None]
    return np.rint((1.0 - alpha) * rgb + alpha * colours).astype(np.uint8)


# --------------------------------------------------------------------------------- keys


def _strip(width: int, height: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    strip = Image.new("RGB", (width, height), LEGEND_BACKGROUND)
    return strip, ImageDraw.Draw(strip)


def add_legend(rgb: np.ndarray, entries=LEGEND_ENTRIES) -> np.ndarray:
    """Append a key below the picture: a colour swatch and a name per entry.

    Args:
        rgb: H x W x 3 uint8.
        entries: ``(colour, name)`` pairs.

    Returns:
        (H + h) x W x 3 uint8; the key is h pixels high and wraps onto more rows when narrow.
    """
    rgb = as_rgb(rgb)
    width = rgb.shape[1]
    font = _font(max(11, width / 34))
    swatch = int(font.size * 0.9) if hasattr(font, "size") else 12
    gap = swatch
    # Lay the entries out left to right, wrapping when the next one would not fit.
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows, row, x = [], [], gap
    for colour, name in entries:
        item = swatch + gap // 2 + int(measure.textlength(name, font=font))
        if row and x + item > width - gap:
            rows.append(row)
            row, x = [], gap
        row.append((x, colour, name))
        x += item + 2 * gap
    rows.append(row)
    line = swatch + gap
    strip, draw = _strip(width, line * len(rows) + gap)
    for r, items in enumerate(rows):
        y = gap + r * line
        for x, colour, name in items:
            draw.rectangle((x, y, x + swatch, y + swatch), fill=colour, outline=LEGEND_TEXT)
            draw.text((x + swatch + gap // 2, y + swatch / 2), name, font=font, fill=LEGEND_TEXT, anchor="lm")
    return np.concatenate([rgb, np.asarray(strip)], axis=0)


def add_colour_bar(rgb: np.ndarray, low: str = "0: folds agree", high: str = "folds disagree") -> np.ndarray:
    """Append the heat map's colour bar (0 to 1, left to right) with its meaning below the picture.

    Returns (H + h) x W x 3 uint8.
    """
    rgb = as_rgb(rgb)
    width = rgb.shape[1]
    font = _font(max(11, width / 34))
    margin = max(8, width // 40)
    bar_height = max(8, width // 40)
    text_height = int(font.size * 1.4) if hasattr(font, "size") else 14
    strip, draw = _strip(width, margin + bar_height + text_height + margin)
    ramp = heat_colours(np.linspace(0.0, 1.0, width - 2 * margin))
    strip.paste(Image.fromarray(np.repeat(ramp[None], bar_height, axis=0)), (margin, margin))
    y = margin + bar_height + text_height / 2 + 2
    draw.text((margin, y), low, font=font, fill=LEGEND_TEXT, anchor="lm")
    draw.text((width // 2, y), "0.5", font=font, fill=LEGEND_TEXT, anchor="mm")
    draw.text((width - margin, y), f"1: {high}", font=font, fill=LEGEND_TEXT, anchor="rm")
    return np.concatenate([rgb, np.asarray(strip)], axis=0)


# --------------------------------------------------------------------------------- pictures


def render_segmentation(image: np.ndarray, label_map: np.ndarray, aop: AoPMeasurement | None,
                        min_side: int = 512, boxes: dict | None = None,
                        pending: tuple[float, float] | None = None,
                        hsd: HSDMeasurement | None = None, user_points=()) -> np.ndarray:
    """The demo's main picture: the image, enlarged for display when small, with PS and FH
    coloured, the AoP construction drawn and a legend below. Returns an RGB uint8 array.

    ``hsd``, when given and measured, is drawn too (:func:`draw_hsd`) and gets a legend entry.
    ``boxes`` ({label value: (x0, y0, x1, y1)} in image pixels) are the user's correction boxes,
    drawn as outlines in their structure's colour; ``pending`` is a first corner (or first PS end)
    clicked, (x, y). ``user_points``: the AoP construction's points a user placed (names, as in
    :func:`draw_aop`), ringed and given a legend entry.
    The picture is ``display_scale(H, W)`` times the image (image pixel = display pixel / scale).
    """
    _check_same_size(np.asarray(image), label_map, "label_map")
    factor = display_scale(*np.asarray(image).shape[:2], min_side=min_side)
    rgb = overlay_labels(upscale(image, factor), upscale(label_map, factor))
    entries = LEGEND_ENTRIES
    if hsd is not None and hsd.measured:
        # Under the AoP construction: the two share the apex, and the AoP's dot marks it.
        rgb = draw_hsd(rgb, hsd, scale=factor)
        entries = LEGEND_ENTRIES + (HSD_LEGEND_ENTRY,)
    if aop is not None:
        rgb = draw_aop(rgb, aop, scale=factor, user_points=tuple(user_points))
        if user_points:
            entries = entries + (USER_POINT_LEGEND_ENTRY,)
    if boxes or pending:
        rgb = draw_boxes(rgb, boxes or {}, pending, scale=factor)
    return add_legend(rgb, entries)


def draw_boxes(rgb: np.ndarray, boxes: dict, pending: tuple[float, float] | None = None,
               scale: float = 1.0) -> np.ndarray:
    """Outline correction boxes ({label value: (x0, y0, x1, y1)} in image pixels) and mark a
    pending first corner on an H x W x 3 picture drawn at ``scale``."""
    picture = Image.fromarray(rgb)
    draw = ImageDraw.Draw(picture)
    colours = {PS: PS_COLOUR, FH: FH_COLOUR}
    for value, (x0, y0, x1, y1) in boxes.items():
        corners = [(x0 + 0.5) * scale, (y0 + 0.5) * scale, (x1 + 0.5) * scale, (y1 + 0.5) * scale]
        draw.rectangle(corners, outline=(0, 0, 0), width=4)
        draw.rectangle(corners, outline=colours.get(value, (255, 255, 255)), width=2)
    if pending is not None:
        _dot(draw, scale_point(pending, scale), max(3.0, scale * 2), (255, 255, 255))
    return np.asarray(picture)


def render_disagreement(image: np.ndarray, disagreement: np.ndarray, min_side: int = 512) -> np.ndarray:
    """The fold-disagreement heat map on the image, enlarged like :func:`render_segmentation`,
    with its colour bar below. Returns an RGB uint8 array."""
    _check_same_size(np.asarray(image), disagreement, "disagreement")
    factor = display_scale(*np.asarray(image).shape[:2], min_side=min_side)
    heat = disagreement_heatmap(upscale(disagreement, factor), upscale(image, factor))
    return add_colour_bar(heat)
