"""GloResNet: preterm brain-injury prediction from T2w MRI (research use only, not a medical device).

Public API (imported lazily so that ``import GloResNetLib`` stays cheap and torch-free):
``load_bundle``, ``preprocess``, ``PreprocessConfig``, ``predict``, ``predict_file``, ``read_volume``,
``write_volume``, ``GloResNetError``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_bundle": "bundle",
    "save_bundle": "bundle",
    "Bundle": "bundle",
    "preprocess": "preprocessing",
    "PreprocessConfig": "preprocessing",
    "predict": "inference",
    "predict_file": "inference",
    "PredictionResult": "inference",
    "read_volume": "io",
    "write_volume": "io",
    "GloResNetError": "errors",
    "InputError": "errors",
    "BundleError": "errors",
    "DatasetError": "errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
