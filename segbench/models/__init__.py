"""Segmentation architectures: one file per paper, all following :mod:`segbench.models.base`.

Every :class:`SegmentationModel` subclass defined in a module here is exported by its class name
(``segbench.models.FCN`` in a config's ``class_path``): :func:`architectures` finds them.
"""

from segbench.models.base import SegmentationModel, architectures
from segbench.models.drn import DRNClassifier

globals().update(architectures())

__all__ = ["DRNClassifier", "SegmentationModel", "architectures", *architectures()]
