"""Segmentation architectures: one file per paper, all following :mod:`segbench.models.base`."""

from segbench.models.base import SegmentationModel
from segbench.models.drn import DRN, DRNClassifier
from segbench.models.dupsampling import DUpsampling
from segbench.models.fcn import FCN
from segbench.models.gald import GALD
from segbench.models.parsenet import ParseNet

__all__ = [
    "DRN",
    "FCN",
    "GALD",
    "DRNClassifier",
    "DUpsampling",
    "ParseNet",
    "SegmentationModel",
]
