"""Data modules: every one yields ``{"image", "mask", "name"}`` batches and declares its classes."""

from segbench.data.base import SegmentationDataModule
from segbench.data.camvid import CamVid
from segbench.data.folder import FolderSegmentation
from segbench.data.synthetic import SyntheticSegmentation
from segbench.data.transforms import Augment

__all__ = [
    "Augment",
    "CamVid",
    "FolderSegmentation",
    "SegmentationDataModule",
    "SyntheticSegmentation",
]
