"""PASCAL-Context, the 59 most frequent classes + background (Mottaghi et al., CVPR 2014).

PASCAL-Context labels every pixel of the 10,103 PASCAL VOC 2010 train/val images with 459
categories (400+ used); the papers (ParseNet, DUpsampling, EncNet, ...) train and evaluate on the
59 most frequent plus one "background" class that takes every other pixel: 60 classes, 4,998 train
and 5,105 val images.

Label source supported: class-index PNGs with values 0..59 (0 background, 1..59 the classes in
alphabetical order), i.e. the output of mmsegmentation's converter
``tools/dataset_converters/pascal_context.py`` run on ``trainval_merged.json`` with the Detail API
(``pip install git+https://github.com/zhanghang1989/detail-api``); the converter maps the sorted
Detail category ids of the 59 classes to 1..59 (hence the alphabetical order) and writes the split
lists. Layout under ``root`` (``VOCdevkit/VOC2010`` of ``VOCtrainval_03-May-2010.tar``; ``root``
may also be the folder holding ``VOCdevkit``)::

    VOC2010/
        JPEGImages/<name>.jpg
        SegmentationClassContext/<name>.png       0..59 (8-bit, grey or palette)
        ImageSets/SegmentationContext/train.txt   4,998 names (mmsegmentation's converter: 4,996)
                                      val.txt     5,105 names (5,104)

Colours: the VOC colour map (bit-interleaved), extended to 60 entries.

``background``: ``"class"`` (default, the papers' 60-class protocol: background is a class that
is trained and scored); ``"void"``: the 59-class protocol of some later work (mmsegmentation's
``PascalContextDataset59``): background becomes void and labels shift down by one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset
from torchvision.transforms import v2

from segbench.data.base import SegmentationDataModule, Split, default_palette
from segbench.data.files import ImageMaskPairs, check_pairs, read_names, resolve_root
from segbench.data.transforms import Augment
from segbench.errors import MissingFileError

ENV_VAR = "SEGBENCH_PASCAL_CONTEXT"

PASCAL_CONTEXT_CLASSES = (
    "background",
    "aeroplane",
    "bag",
    "bed",
    "bedclothes",
    "bench",
    "bicycle",
    "bird",
    "boat",
    "book",
    "bottle",
    "building",
    "bus",
    "cabinet",
    "car",
    "cat",
    "ceiling",
    "chair",
    "cloth",
    "computer",
    "cow",
    "cup",
    "curtain",
    "dog",
    "door",
    "fence",
    "floor",
    "flower",
    "food",
    "grass",
    "ground",
    "horse",
    "keyboard",
    "light",
    "motorbike",
    "mountain",
    "mouse",
    "person",
    "plate",
    "platform",
    "pottedplant",
    "road",
    "rock",
    "sheep",
    "shelves",
    "sidewalk",
    "sign",
    "sky",
    "snow",
    "sofa",
    "table",
    "track",
    "train",
    "tree",
    "truck",
    "tvmonitor",
    "wall",
    "water",
    "window",
    "wood",
)

#: Random scale 0.5-2, 480 x 480 crops, flips (EncNet's and mmsegmentation's recipe).
PASCAL_CONTEXT_AUGMENT = Augment(scale_range=(0.5, 2.0), crop_size=(480, 480), flip=True)


def voc2010_dir(root: Path) -> Path:
    """``VOCdevkit/VOC2010``, given it, ``VOCdevkit`` or the folder holding ``VOCdevkit``."""
    for candidate in (root, root / "VOC2010", root / "VOCdevkit" / "VOC2010"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise MissingFileError(
        f"PASCAL-Context: expected {root} (or its VOC2010/ or VOCdevkit/VOC2010/) to hold "
        "JPEGImages/, SegmentationClassContext/ and ImageSets/SegmentationContext/"
    )


class PascalContext(SegmentationDataModule):
    """PASCAL-Context, 59 classes + background (60), as the papers use it.

    Args:
        root: the ``VOCdevkit/VOC2010`` folder (or ``VOCdevkit``, or the folder holding it);
            ``None`` reads ``$SEGBENCH_PASCAL_CONTEXT``.
        background: ``class``: background is class 0 of 60 (the papers' protocol);
            ``void``: background is void and the 59 classes are 0..58.
        mask_dir: folder of the label PNGs under ``root``.
        split_dir: folder of ``train.txt`` and ``val.txt`` under ``root``.
        scale: resize every image and label map by this factor first (CPU-scale runs); keep 1
            to score at the labels' own resolution.
        batch_size: training batch size per process.
        val_batch_size: evaluation batch size per process; 1 by default because the images
            differ in size.
        num_workers: loader worker processes.
        augment: training augmentation (default: scale 0.5-2, 480 x 480 crops, flip).
        cache: keep each image and label map decoded in ``$SEGBENCH_CACHE/decoded/`` the
            first time it is read, and read that copy afterwards (about 15x faster than decoding
            a PNG; as much disk as the pixels: ~0.7 MB a 480 x 360 frame). Bit-identical samples.
    """

    def __init__(
        self,
        *,
        root: str | None = None,
        background: Literal["class", "void"] = "class",
        mask_dir: str = "SegmentationClassContext",
        split_dir: str = "ImageSets/SegmentationContext",
        scale: float = 1.0,
        batch_size: int = 16,
        val_batch_size: int | None = 1,
        num_workers: int = 4,
        augment: Augment | None = PASCAL_CONTEXT_AUGMENT,
        cache: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            augment=augment,
            cache=cache,
        )
        self.root, self.background = root, background
        self.mask_dir, self.split_dir = mask_dir, split_dir
        self.scale = scale
        colours = default_palette(len(PASCAL_CONTEXT_CLASSES))
        first = 1 if background == "void" else 0
        self.class_names = PASCAL_CONTEXT_CLASSES[first:]
        self.palette = tuple(colours[first:])

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        """The checked ``(image, label)`` files of ``train`` or ``val``."""
        root = voc2010_dir(resolve_root(self.root, ENV_VAR, "PASCAL-Context"))
        names = read_names(root / self.split_dir / f"{split}.txt", "PASCAL-Context")
        pairs = [
            (root / "JPEGImages" / f"{n}.jpg", root / self.mask_dir / f"{n}.png") for n in names
        ]
        return check_pairs(pairs, f"PASCAL-Context {split}")

    def build_dataset(self, split: Split, transform: v2.Transform) -> Dataset:
        label_map = None
        if self.background == "void":
            label_map = {0: 255, **{v: v - 1 for v in range(1, len(PASCAL_CONTEXT_CLASSES))}}
        return ImageMaskPairs(
            self.pairs("train" if split == "train" else "val"),
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            transform=transform,
            cache_dir=self.decoded_cache(),
            label_map=label_map,
        )
