"""Data modules: every one yields ``{"image", "mask", "name"}`` batches and declares its classes."""

from segbench.data.ade20k import ADE20K
from segbench.data.base import SegmentationDataModule
from segbench.data.camvid import CamVid
from segbench.data.cityscapes import Cityscapes
from segbench.data.folder import FolderSegmentation
from segbench.data.pascal_context import PascalContext
from segbench.data.synthetic import SyntheticSegmentation
from segbench.data.transforms import Augment
from segbench.data.voc import PascalVOC

__all__ = [
    "ADE20K",
    "Augment",
    "CamVid",
    "Cityscapes",
    "FolderSegmentation",
    "PascalContext",
    "PascalVOC",
    "SegmentationDataModule",
    "SyntheticSegmentation",
]
