"""Prediction: what :meth:`psfh.model.psfh_model.PSFHModel.predict` returns for one image.

The label map, the ensemble's probabilities and agreement, the AoP and HSD measured on the label
map, the quality check, and the tables and report every output (CSV, JSON, demo) is made from;
:meth:`Prediction.adjusted` re-measures them from a user's own points (:mod:`psfh.model.calipers`),
:meth:`Prediction.from_label_map` makes one of a label map without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from psfh.core.errors import PSFHInputError
from psfh.core.labels import LABEL_VALUES, check_label_map, structure_areas
from psfh.measure import quality as checks
from psfh.measure.aop import AoPMeasurement, measure_aop
from psfh.measure.hsd import HSDMeasurement, check_spacing, measure_hsd
from psfh.measure.quality import QualityCheck
from psfh.model import calipers


def check_text(quality: QualityCheck | None) -> str:
    """A quality check in a table cell: "ok", or "check this result: " and the reasons."""
    return "ok" if quality is None or quality.trusted else "check this result: " + "; ".join(quality.reasons)


def reported_values(aop: AoPMeasurement, hsd: HSDMeasurement | None, quality: QualityCheck | None) -> dict:
    """What a result reports of its measurements: the AoP (None when withheld by the check or not
    measured), the measured AoP, the check in words and the HSD in mm (withheld with the AoP).
    One definition for a :class:`Prediction` and a clip's frame (:mod:`psfh.batch.cine`)."""
    trusted = quality is None or quality.trusted
    return {
        "aop_deg": aop.angle_deg if trusted else None,
        "aop_deg_measured": aop.angle_deg,
        "check": check_text(quality),
        "hsd_mm": hsd.distance_mm if hsd is not None and trusted else None,
    }


@dataclass
class Prediction:
    """The result of :meth:`PSFHModel.predict` for one image of H x W pixels.

    Attributes:
        label_map: H x W uint8, 0 background, 1 pubic symphysis, 2 fetal head.
        probabilities: 3 x H x W float32 ensemble class probabilities.
        disagreement: H x W float32 in [0, 1], fraction of ensemble members that disagree with the label.
        aop: the angle of progression measured on ``label_map`` (with its construction).
        fold_aop_deg: the AoP of each fold's own (TTA-averaged) prediction, {fold: degrees or None
            where not measurable}: the spread across folds.
        view_aop_deg: the AoP of each fold's prediction on each TTA view, {fold: [identity, flip]}
            (degrees, None where not measurable): how much the model agrees with itself; empty
            without the flip view.
        hsd: the head-symphysis distance measured on ``label_map`` (:mod:`psfh.measure.hsd`), in mm
            when ``spacing_mm`` is known.
        spacing_mm: (row, col) mm per pixel of the input, None when unknown.
        folds, tta: what the ensemble used.
        timings: seconds spent per step.
        name: the input's name (file name without extension), when known.
        corrected: the structures a user re-segmented with a box prompt, {class name: the box
            (x0, y0, x1, y1) in image pixels}; empty for the model's own result.
        quality: the checks of :mod:`psfh.measure.quality` on the input and this label map; when they
            fail, ``aop_deg`` is None (the AoP is withheld) and the reasons say why.
        backend: what ran the encoder and the fold decoders ("torch", "onnxruntime", "openvino";
            "none" for :meth:`from_label_map`).
        adjusted_by_user: the points of the AoP construction a user placed (:meth:`adjusted`),
            {"ps_inferior" / "ps_superior" / "tangent_point": (x, y) in image pixels}; empty for the
            model's own construction.
    """

    label_map: np.ndarray
    probabilities: np.ndarray
    disagreement: np.ndarray
    aop: AoPMeasurement
    fold_aop_deg: dict[str, float | None]
    folds: list[str]
    tta: bool
    timings: dict[str, float] = field(default_factory=dict)
    name: str | None = None
    corrected: dict[str, list[float]] = field(default_factory=dict)
    quality: QualityCheck | None = None
    view_aop_deg: dict[str, list[float | None]] = field(default_factory=dict)
    hsd: HSDMeasurement | None = None
    spacing_mm: tuple[float, float] | None = None
    backend: str = "torch"
    adjusted_by_user: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def trusted(self) -> bool:
        """False when the quality checks failed ("check this result")."""
        return self.quality is None or self.quality.trusted

    @property
    def aop_deg(self) -> float | None:
        """The AoP to report: the measured angle, or None when it is not measured or withheld."""
        return reported_values(self.aop, self.hsd, self.quality)["aop_deg"]

    @property
    def check_text(self) -> str:
        """The quality check in a table cell: "ok", or "check this result: " and the reasons."""
        return check_text(self.quality)

    def adjusted(self, ps_ends=None, tangent_point=None, *, ps_inferior=None, ps_superior=None) -> "Prediction":
        """This result with its AoP re-measured from a user's points, like an ultrasound machine's
        calipers (:mod:`psfh.model.calipers`); no model runs (milliseconds).

        Any of the construction's three points may be given; the others stay as they are here (the
        model's, or placed by an earlier adjustment): the PS ends those of the label map's PS, the
        tangent point the far tangent from the inferior end to the label map's head.

        Args:
            ps_ends: the symphysis' two ends ``((x, y), (x, y))`` in image pixels, in either order
                (the one nearer the head is the inferior end, the AoP's apex).
            tangent_point: ``(x, y)``, where the tangent from the inferior end touches the skull:
                on or outside the head outline's far side.
            ps_inferior, ps_superior: ``(x, y)``, one end alone (not with ``ps_ends``).

        Returns:
            A new Prediction: the same label map, probabilities and per-fold AoPs; ``aop`` (its
            construction, drawn by :mod:`psfh.render.overlay`), ``hsd``, ``quality`` (judged again for
            what the points now decide) and the report follow the points, and ``adjusted_by_user``
            holds every point placed so far.

        Raises:
            PSFHInputError: naming the point and the problem (outside the image, the inferior end
                inside the head, a tangent point inside the head or not on its far side, ...).
        """
        result = calipers.adjust(self.label_map, self.quality, self.spacing_mm, self.adjusted_by_user,
                                 ps_ends=ps_ends, tangent_point=tangent_point, ps_inferior=ps_inferior,
                                 ps_superior=ps_superior)
        return replace(self, aop=result.aop, hsd=result.hsd, quality=result.quality, adjusted_by_user=result.moved,
                       timings={**self.timings, "adjustment": result.seconds})

    @classmethod
    def from_label_map(cls, label_map, image: np.ndarray | None = None, name: str | None = None,
                       spacing_mm: tuple[float, float] | None = None) -> "Prediction":
        """A result made of a label map alone (an earlier result's, or a hand-made one), no model:
        to measure it and adjust its points (:meth:`adjusted`).

        Args:
            label_map: H x W, 0 background, 1 PS, 2 FH.
            image: the H x W uint8 frame it belongs to: the image and anatomy checks of
                :mod:`psfh.measure.quality` run on it (the model's self-agreement checks need the
                model's run). None: no quality check.
            name: the input's name. spacing_mm: (row, col) mm per pixel, for the HSD in mm.

        Returns:
            A Prediction with no ensemble: ``folds`` empty, ``backend`` "none", the label map's
            own one-hot ``probabilities`` and zero ``disagreement``.
        """
        labels = check_label_map(label_map)
        if image is not None and np.asarray(image).shape[:2] != labels.shape:
            raise PSFHInputError(f"label_map is {labels.shape[1]} x {labels.shape[0]} pixels; the image is "
                                 f"{np.asarray(image).shape[1]} x {np.asarray(image).shape[0]}: they must match")
        if spacing_mm is not None:
            check_spacing(spacing_mm)
            spacing_mm = tuple(float(v) for v in spacing_mm)
        aop = measure_aop(labels)
        probabilities = np.stack([labels == value for value in LABEL_VALUES]).astype(np.float32)
        return cls(label_map=labels, probabilities=probabilities, disagreement=np.zeros(labels.shape, np.float32),
                   aop=aop, fold_aop_deg={}, folds=[], tta=False, name=name,
                   quality=None if image is None else checks.check(np.asarray(image), labels, aop=aop),
                   hsd=measure_hsd(labels, spacing_mm), spacing_mm=spacing_mm, backend="none")

    def table_cells(self) -> dict:
        """The cells every per-image table shares (psfh.batch.predict's aop.csv, psfh.batch.cine's frames.csv):
        reported and measured AoP, the check, the HSD, areas and the ensemble's agreement."""
        fold_angles = [angle for angle in self.fold_aop_deg.values() if angle is not None]
        areas = structure_areas(self.label_map)
        reported = reported_values(self.aop, self.hsd, self.quality)
        return {
            "aop_deg": reported["aop_deg"],
            "aop_reason": self.aop.reason or (None if self.trusted else "withheld: check this result"),
            "check": reported["check"],
            "aop_deg_measured": reported["aop_deg_measured"],
            "hsd_mm": reported["hsd_mm"],
            "hsd_px": self.hsd.distance_px if self.hsd is not None else None,
            "pixel_spacing_mm": None if self.spacing_mm is None else " x ".join(f"{v:g}" for v in self.spacing_mm),
            "ps_area_px": areas["pubic_symphysis"],
            "fh_area_px": areas["fetal_head"],
            "mean_disagreement": float(self.disagreement.mean()),
            "fold_aop_min": min(fold_angles, default=None),
            "fold_aop_max": max(fold_angles, default=None),
            "flip_aop_gap": self.quality.measures.get("flip_aop_gap") if self.quality else None,
            "stability_gap": self.quality.measures.get("stability_gap") if self.quality else None,
        }

    @property
    def hsd_mm(self) -> float | None:
        """The HSD in mm to report: None without a spacing, without an HSD, or when withheld."""
        return reported_values(self.aop, self.hsd, self.quality)["hsd_mm"]

    def report(self) -> dict:
        """A JSON-able summary: AoP and its construction, per-fold AoPs, areas, timings."""
        areas = structure_areas(self.label_map)
        return {
            "name": self.name,
            "image_size": list(self.label_map.shape),
            "aop": self.aop.to_dict(),
            "aop_deg": self.aop_deg,
            "quality": None if self.quality is None else self.quality.to_dict(),
            "hsd": None if self.hsd is None else self.hsd.to_dict(),
            "hsd_mm": self.hsd_mm,
            "pixel_spacing_mm": None if self.spacing_mm is None else list(self.spacing_mm),
            "fold_aop_deg": dict(self.fold_aop_deg),
            "view_aop_deg": {fold: list(angles) for fold, angles in self.view_aop_deg.items()},
            "area_pixels": areas,
            "mean_disagreement": float(self.disagreement.mean()),
            "folds": list(self.folds),
            "tta": self.tta,
            "backend": self.backend,
            "corrected_by_user": {name: [round(v, 1) for v in box] for name, box in self.corrected.items()},
            "adjusted_by_user": {name: [round(v, 1) for v in point] for name, point in self.adjusted_by_user.items()},
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
        }
