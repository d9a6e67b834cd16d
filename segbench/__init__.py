"""segbench: reproduce and extend five classic semantic segmentation papers in one harness.

``segbench.load(run_dir)`` returns a trained run ready to predict
(:class:`segbench.deploy.api.Segmenter`). It is imported on first use, so that ``import
segbench`` (and the command line's start) does not load torch and Lightning until needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Prediction", "Segmenter", "__version__", "load"]

if TYPE_CHECKING:
    from segbench.deploy.api import Prediction, Segmenter, load


def __getattr__(name: str) -> Any:
    if name in ("load", "Segmenter", "Prediction"):
        return getattr(importlib.import_module("segbench.deploy.api"), name)
    raise AttributeError(f"module 'segbench' has no attribute {name!r}")
