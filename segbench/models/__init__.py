"""Segmentation architectures: one file per paper, all following :mod:`segbench.models.base`."""

from segbench.models.base import SegmentationModel
from segbench.models.dupsampling import DUpsampling
from segbench.models.fcn import FCN

__all__ = ["FCN", "DUpsampling", "SegmentationModel"]
