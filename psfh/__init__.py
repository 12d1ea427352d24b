"""psfh: pubic symphysis and fetal head segmentation with LoRA-adapted SAM, and the angle of progression.

    from psfh import PSFHModel
    model = PSFHModel.from_pretrained()        # the embedded package
    result = model.predict("scan.mha")         # label map, probabilities, AoP, fold disagreement
"""

__version__ = "0.2.0"

_LAZY = {
    "PSFHModel": "psfh.model.psfh_model",
    "Prediction": "psfh.model.prediction",
    "ImageEmbeddings": "psfh.model.psfh_model",
    "measure_aop": "psfh.measure.aop",
    "AoPMeasurement": "psfh.measure.aop",
    "PSFHInputError": "psfh.core.errors",
    "PackageConfig": "psfh.model.package",
}

__all__ = list(_LAZY)


def __getattr__(name):
    # Lazy imports keep `import psfh` (and the CLIs' --help) fast: torch loads only when needed.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'psfh' has no attribute {name!r}")
