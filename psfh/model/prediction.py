"""Prediction: what :meth:`psfh.model.psfh_model.PSFHModel.predict` returns for one image.

The label map, the ensemble's probabilities and agreement, the AoP and HSD measured on the label
map, the quality check, and the tables and report every output (CSV, JSON, demo) is made from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from psfh.core.labels import structure_areas
from psfh.measure.aop import AoPMeasurement
from psfh.measure.hsd import HSDMeasurement
from psfh.measure.quality import QualityCheck


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
        backend: what ran the encoder and the fold decoders ("torch", "onnxruntime", "openvino").
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

    @property
    def trusted(self) -> bool:
        """False when the quality checks failed ("check this result")."""
        return self.quality is None or self.quality.trusted

    @property
    def aop_deg(self) -> float | None:
        """The AoP to report: the measured angle, or None when it is not measured or withheld."""
        return self.aop.angle_deg if self.trusted else None

    @property
    def check_text(self) -> str:
        """The quality check in a table cell: "ok", or "check this result: " and the reasons."""
        return "ok" if self.trusted else "check this result: " + "; ".join(self.quality.reasons)

    def table_cells(self) -> dict:
        """The cells every per-image table shares (psfh.batch.predict's aop.csv, psfh.batch.cine's frames.csv):
        reported and measured AoP, the check, the HSD, areas and the ensemble's agreement."""
        fold_angles = [angle for angle in self.fold_aop_deg.values() if angle is not None]
        areas = structure_areas(self.label_map)
        return {
            "aop_deg": self.aop_deg,
            "aop_reason": self.aop.reason or (None if self.trusted else "withheld: check this result"),
            "check": self.check_text,
            "aop_deg_measured": self.aop.angle_deg,
            "hsd_mm": self.hsd_mm,
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
        return self.hsd.distance_mm if self.hsd is not None and self.trusted else None

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
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
        }
