"""Your own data: a folder of images, a folder of masks, and one list of names per split.

Layout under ``root`` (names configurable)::

    images/<name><image_suffix>     RGB images
    masks/<name><mask_suffix>       label maps: class indices in a single-channel or palette
                                    PNG, or RGB colours listed in palette
    train.txt val.txt test.txt      one <name> per line (in split_dir, default root)

PASCAL VOC's own tree fits it: ``image_dir: JPEGImages``, ``mask_dir: SegmentationClass``,
``split_dir: ImageSets/Segmentation`` (palette PNGs hold class indices, 255 is void).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset
from torchvision.transforms import v2

from segbench.data.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationDataModule,
    Split,
    check_class_names,
)
from segbench.data.files import ImageMaskPairs
from segbench.data.transforms import Augment
from segbench.errors import ConfigError, DataError, MissingFileError


class FolderSegmentation(SegmentationDataModule):
    """A generic image-folder + mask-folder data set with split lists.

    Args:
        root: the data set folder.
        num_classes: K.
        class_names: names of the K classes (default: "0" ... "K-1").
        palette: RGB colour per class. Given, masks may be RGB-coded with these colours; it is
            also the colour map of overlays.
        ignore_index: mask value of void pixels.
        image_dir: folder of images under ``root``.
        mask_dir: folder of masks under ``root``.
        split_dir: folder of the split lists ``<split>.txt`` under ``root``.
        image_suffix: file suffix of images.
        mask_suffix: file suffix of masks.
        mean: RGB mean used to normalise images (0..1 scale; default ImageNet's).
        std: RGB standard deviation used to normalise images.
        batch_size: training batch size per process.
        val_batch_size: evaluation batch size per process (default: ``batch_size``).
        num_workers: loader worker processes.
        augment: training augmentation (``None``: none).
        cache: keep each image and label map decoded in ``$SEGBENCH_CACHE/decoded/`` the
            first time it is read, and read that copy afterwards (about 15x faster than decoding
            a PNG; as much disk as the pixels: ~0.7 MB a 480 x 360 frame). Bit-identical samples.
    """

    def __init__(
        self,
        *,
        root: str,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        palette: Sequence[tuple[int, int, int]] | None = None,
        ignore_index: int = 255,
        image_dir: str = "images",
        mask_dir: str = "masks",
        split_dir: str = "",
        image_suffix: str = ".jpg",
        mask_suffix: str = ".png",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        augment: Augment | None = None,
        cache: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            augment=augment,
            cache=cache,
        )
        self.root = Path(root).expanduser()
        if num_classes < 1:
            raise ConfigError(f"data.init_args.num_classes must be at least 1, got {num_classes}")
        self.class_names = check_class_names(
            class_names or [str(i) for i in range(num_classes)], num_classes, "FolderSegmentation"
        )
        if palette is not None and len(palette) != num_classes:
            raise ConfigError(
                f"FolderSegmentation: {len(palette)} palette colours for num_classes={num_classes}"
            )
        self.palette = tuple((r, g, b) for r, g, b in palette) if palette else ()
        self.ignore_index = ignore_index
        self.image_dir, self.mask_dir, self.split_dir = image_dir, mask_dir, split_dir
        self.image_suffix, self.mask_suffix = image_suffix, mask_suffix
        self.mean, self.std = (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])

    def pairs(self, split: Split) -> list[tuple[Path, Path]]:
        """The ``(image, mask)`` paths listed in ``<split_dir>/<split>.txt``, checked to exist."""
        if not self.root.is_dir():
            raise MissingFileError(f"data root {self.root} is not a directory")
        listing = self.root / self.split_dir / f"{split}.txt"
        if not listing.is_file():
            raise MissingFileError(f"split list not found: {listing}")
        pairs = []
        for n, line in enumerate(listing.read_text().splitlines(), 1):
            name = line.strip()
            if not name:
                continue
            img = self.root / self.image_dir / f"{name}{self.image_suffix}"
            mask = self.root / self.mask_dir / f"{name}{self.mask_suffix}"
            for path in (img, mask):
                if not path.is_file():
                    raise MissingFileError(f"{listing}:{n}: no such file {path}")
            pairs.append((img, mask))
        if not pairs:
            raise DataError(f"{listing} lists no images")
        return pairs

    def build_dataset(self, split: Split, transform: v2.Transform) -> Dataset:
        return ImageMaskPairs(
            self.pairs(split),
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            transform=transform,
            cache_dir=self.decoded_cache(),
            palette=self.palette or None,
        )
