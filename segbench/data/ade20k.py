"""ADE20K in the SceneParsing layout (MIT Scene Parsing Benchmark, Zhou et al., CVPR 2017).

Layout under ``root`` (``ADEChallengeData2016.zip`` unpacked; ``root`` may also be its parent)::

    ADEChallengeData2016/
        images/training/ADE_train_00000001.jpg ...         20,210 images
        images/validation/ADE_val_00000001.jpg ...         2,000 images
        annotations/training/ADE_train_00000001.png ...    8-bit label maps: 0 "other", 1..150
        annotations/validation/ADE_val_00000001.png ...

150 classes. Label 0 marks pixels outside the 150 classes ("other objects") and is not scored by
the benchmark; every model reduces it to void ("reduce zero label"): label ``v`` becomes ``v - 1``
and 0 becomes ``ignore_index`` (255). Class names (the short names of ``objectInfo150``) and
colours are mmsegmentation's (``mmseg/datasets/ade.py``). There is no torchvision class for
ADE20K; the image list is the sorted ``*.jpg`` of the split's folder, each with the PNG of the
same name.

The test images (``release_test``) have no public labels, so the test stage reads ``validation``.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision.transforms import v2

from segbench.data.base import SegmentationDataModule, Split
from segbench.data.files import ImageMaskPairs, check_pairs, resolve_root
from segbench.data.transforms import Augment
from segbench.errors import DataError, MissingFileError

ENV_VAR = "SEGBENCH_ADE20K"
FOLDERS = {"train": "training", "val": "validation", "test": "validation"}

# fmt: off
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)
# fmt: on

#: Label v -> v - 1, 0 ("other") -> void.
REDUCE_ZERO_LABEL = {0: 255, **{v: v - 1 for v in range(1, 151)}}

#: Random scale 0.5-2, 512 x 512 crops, flips (mmsegmentation's and PSPNet's ADE20K recipe
#: crops 512 or 473; mmsegmentation first resizes to a 512 short side, which ``scale`` does not).
ADE20K_AUGMENT = Augment(scale_range=(0.5, 2.0), crop_size=(512, 512), flip=True)


def ade20k_dir(root: Path) -> Path:
    """``ADEChallengeData2016``, given it or its parent."""
    if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    return root


def ade20k_pairs(root: Path, folder: str) -> list[tuple[Path, Path]]:
    """The sorted ``(image, label)`` files of ``images/<folder>``, checked to exist."""
    images, labels = root / "images" / folder, root / "annotations" / folder
    missing = [str(p) for p in (images, labels) if not p.is_dir()]
    if missing:
        raise MissingFileError(
            f"ADE20K: expected {images} (JPEG images) and {labels} (PNG label maps), the layout "
            f"of ADEChallengeData2016.zip; missing: {', '.join(missing)}"
        )
    pairs = [(p, labels / f"{p.stem}.png") for p in sorted(images.glob("*.jpg"))]
    if not pairs:
        raise DataError(f"ADE20K: no .jpg images in {images}")
    return check_pairs(pairs, f"ADE20K {folder}")


class ADE20K(SegmentationDataModule):
    """ADE20K SceneParsing, 150 classes, label 0 ("other") -> void 255.

    Args:
        root: the ``ADEChallengeData2016`` folder (or its parent); ``None`` reads
            ``$SEGBENCH_ADE20K``.
        scale: resize every image and label map by this factor first (CPU-scale runs); keep 1
            to score at the labels' own resolution.
        batch_size: training batch size per process.
        val_batch_size: evaluation batch size per process; 1 by default because the images
            differ in size.
        num_workers: loader worker processes.
        augment: training augmentation (default: scale 0.5-2, 512 x 512 crops, flip).
        cache: keep each image and label map decoded in ``$SEGBENCH_CACHE/decoded/`` the
            first time it is read, and read that copy afterwards (about 15x faster than decoding
            a PNG; as much disk as the pixels: ~0.7 MB a 480 x 360 frame). Bit-identical samples.
    """

    class_names = ADE20K_CLASSES
    palette = ADE20K_PALETTE

    def __init__(
        self,
        *,
        root: str | None = None,
        scale: float = 1.0,
        batch_size: int = 16,
        val_batch_size: int | None = 1,
        num_workers: int = 4,
        augment: Augment | None = ADE20K_AUGMENT,
        cache: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            augment=augment,
            cache=cache,
        )
        self.root = root
        self.scale = scale

    def build_dataset(self, split: Split, transform: v2.Transform) -> Dataset:
        root = ade20k_dir(resolve_root(self.root, ENV_VAR, "ADE20K"))
        return ImageMaskPairs(
            ade20k_pairs(root, FOLDERS[split]),
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            transform=transform,
            cache_dir=self.decoded_cache(),
            label_map=REDUCE_ZERO_LABEL,
        )
