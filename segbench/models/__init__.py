"""Segmentation architectures: one file per paper, all following :mod:`segbench.models.base`."""

from segbench.models.base import SegmentationModel
from segbench.models.fcn import FCN
from segbench.models.gald import GALD

__all__ = ["FCN", "GALD", "SegmentationModel"]
