"""Cityscapes, fine annotations, the 19 evaluation classes (Cordts et al., CVPR 2016).

Layout under ``root`` (``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``
unpacked side by side; torchvision's ``Cityscapes`` root)::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png      2048 x 1024
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        0..33

2,975 train / 500 val / 1,525 test images. The file lists come from torchvision's
``datasets.Cityscapes`` (mode ``fine``, target ``semantic``), sorted; the labelIds -> trainIds
table, the class names and colours from its ``Cityscapes.classes`` (cityscapesScripts'
``labels.py``): the 19 classes with a trainId keep it, every other labelId (unlabeled, ego
vehicle, parking, rail track, guard rail, caravan, trailer, ...) becomes void (255), as in the
official evaluation. Alternatively ``labels: labelTrainIds`` reads the
``*_gtFine_labelTrainIds.png`` files that cityscapesScripts' ``createTrainIdLabelImgs`` writes.

The test split's labels are not public (its gtFine maps are placeholders), so the test stage reads
``val`` by default; ``test_split: test`` is for ``segbench predict`` (server submissions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision.transforms import v2

from segbench.data.base import SegmentationDataModule, Split
from segbench.data.files import ImageMaskPairs, check_pairs, resolve_root
from segbench.data.transforms import Augment
from segbench.errors import MissingFileError

ENV_VAR = "SEGBENCH_CITYSCAPES"

#: The 19 evaluation classes, in trainId order, with their official colours.
_TRAIN_CLASSES = sorted(
    (c for c in tvd.Cityscapes.classes if 0 <= c.train_id < 255), key=lambda c: c.train_id
)
#: labelId -> trainId (255: void) for every labelId 0..33.
LABEL_TO_TRAIN_ID = {
    c.id: (c.train_id if 0 <= c.train_id < 255 else 255)
    for c in tvd.Cityscapes.classes
    if c.id >= 0
}

#: Random scale 0.5-2, 768 x 768 crops, flips (the papers use 713-896 crops on 2048 x 1024).
CITYSCAPES_AUGMENT = Augment(scale_range=(0.5, 2.0), crop_size=(768, 768), flip=True)


def cityscapes_pairs(
    root: Path, split: str, labels: Literal["labelIds", "labelTrainIds"]
) -> list[tuple[Path, Path]]:
    """The sorted ``(image, label)`` files of one split, checked to exist."""
    expected = [root / "leftImg8bit" / split, root / "gtFine" / split]
    missing = [str(p) for p in expected if not p.is_dir()]
    if missing:
        raise MissingFileError(
            f"Cityscapes: expected the folders {expected[0]} and {expected[1]} (unpack "
            f"leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into {root}); missing: "
            f"{', '.join(missing)}"
        )
    ds = tvd.Cityscapes(str(root), split=split, mode="fine", target_type="semantic")
    pairs = sorted(
        (Path(image), Path(targets[0]))
        for image, targets in zip(ds.images, ds.targets, strict=True)
        if image.endswith("_leftImg8bit.png")
    )
    if labels == "labelTrainIds":
        pairs = [(i, m.with_name(m.name.replace("_labelIds", "_labelTrainIds"))) for i, m in pairs]
    return check_pairs(pairs, f"Cityscapes {split}")


class Cityscapes(SegmentationDataModule):
    """Cityscapes fine, 19 classes (trainIds), void 255.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``; ``None`` reads
            ``$SEGBENCH_CITYSCAPES``.
        labels: ``labelIds``: read ``*_gtFine_labelIds.png`` and map them to trainIds here;
            ``labelTrainIds``: read the ``*_gtFine_labelTrainIds.png`` files made by
            cityscapesScripts (values 0..18 and 255).
        test_split: the split the test and predict stages read (``val``: test labels are not
            public; ``test`` for predictions to submit).
        scale: resize every image and label map by this factor first (0.5: 1024 x 512); keep 1
            to score at full resolution.
        batch_size: training batch size per process.
        val_batch_size: evaluation batch size per process (default: ``batch_size``; all images
            are 2048 x 1024).
        num_workers: loader worker processes.
        augment: training augmentation (default: scale 0.5-2, 768 x 768 crops, flip).
        cache: keep each image and label map decoded in ``$SEGBENCH_CACHE/decoded/`` the
            first time it is read, and read that copy afterwards (about 15x faster than decoding
            a PNG; as much disk as the pixels: ~0.7 MB a 480 x 360 frame). Bit-identical samples.
    """

    class_names = tuple(c.name for c in _TRAIN_CLASSES)
    palette = tuple(c.color for c in _TRAIN_CLASSES)

    def __init__(
        self,
        *,
        root: str | None = None,
        labels: Literal["labelIds", "labelTrainIds"] = "labelIds",
        test_split: Literal["val", "test"] = "val",
        scale: float = 1.0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        augment: Augment | None = CITYSCAPES_AUGMENT,
        cache: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            augment=augment,
            cache=cache,
        )
        self.root, self.labels, self.test_split = root, labels, test_split
        self.scale = scale

    def build_dataset(self, split: Split, transform: v2.Transform) -> Dataset:
        root = resolve_root(self.root, ENV_VAR, "Cityscapes")
        name = self.test_split if split == "test" else split
        return ImageMaskPairs(
            cityscapes_pairs(root, name, self.labels),
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            transform=transform,
            cache_dir=self.decoded_cache(),
            label_map=LABEL_TO_TRAIN_ID if self.labels == "labelIds" else None,
        )
