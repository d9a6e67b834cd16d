"""PASCAL VOC 2012 segmentation, with SBD's extra annotations as the usual "train_aug" set.

PASCAL VOC 2012 (Everingham et al., IJCV 2010), read through torchvision's ``VOCSegmentation``
(the official ``VOCtrainval_11-May-2012.tar`` layout)::

    <root>/VOCdevkit/VOC2012/
        JPEGImages/<name>.jpg
        SegmentationClass/<name>.png        palette PNGs: 0 background, 1..20 the classes,
                                            255 void (object borders, difficult regions)
        ImageSets/Segmentation/train.txt    1,464 names
                               val.txt      1,449 names
                               trainval.txt 2,913 names

``root`` may also point at ``VOCdevkit`` or at ``VOCdevkit/VOC2012`` itself.

SBD, the Semantic Boundaries Dataset (Hariharan et al., ICCV 2011; ``benchmark.tgz``),
torchvision's ``SBDataset`` layout, i.e. ``benchmark_RELEASE/dataset`` (``sbd_root`` may also
point at ``benchmark_RELEASE``)::

    <sbd_root>/
        img/<name>.jpg
        cls/<name>.mat          MATLAB files, GTcls.Segmentation: 0 background, 1..20, no void
        train.txt val.txt       8,498 / 2,857 names
        cls_png/<name>.png      written once by segbench convert-sbd <sbd_root> (needs scipy)

Splits (``train_split``, ``val_split``, ``test_split``):

* ``train``, ``val``, ``trainval``: VOC's lists and labels.
* ``train_aug``: the 10,582 images that DeepLab and its successors train on:
  (SBD train ∪ SBD val ∪ VOC train) − VOC val. An image in VOC train keeps VOC's own label (finer,
  with void borders); the others take SBD's converted label. This is mmsegmentation's choice too
  (``SegmentationClass`` for ``train.txt`` + ``SegmentationClassAug`` for ``aug.txt``). Images
  come from VOC's ``JPEGImages`` (SBD's images are VOC2011 images, all in VOC2012), from SBD's
  ``img/`` if one is missing there. The list is computed from the four list files each time (it
  is cheap), so there is no generated list to go stale.
* ``sbd_train``, ``sbd_val``: SBD's lists with SBD's images and labels (FCN trains on
  ``sbd_train``, 8,498 images).
* any other name: ``ImageSets/Segmentation/<name>.txt`` with VOC's labels, e.g. FCN's
  ``seg11valid`` (736 VOC2011 val images not in SBD train; copy the list from the FCN repository).

VOC2012's test labels are not public, so the test stage reads ``val`` by default.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision.transforms import v2

from segbench.data.base import SegmentationDataModule, Split, default_palette
from segbench.data.files import ImageMaskPairs, check_pairs, read_names, resolve_root
from segbench.data.transforms import Augment
from segbench.errors import MissingFileError

log = logging.getLogger(__name__)

VOC_ENV = "SEGBENCH_VOC"
SBD_ENV = "SEGBENCH_SBD"
#: Where ``segbench convert-sbd`` writes SBD's labels as PNGs, under the SBD root.
SBD_PNG_DIR = "cls_png"
#: The lists torchvision's VOCSegmentation reads.
VOC_SPLITS = ("train", "val", "trainval")
SBD_SPLITS = {"sbd_train": "train", "sbd_val": "val"}

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

#: DeepLab's recipe: random scale 0.5-2, 512 x 512 crops (padded with void), flips.
VOC_AUGMENT = Augment(scale_range=(0.5, 2.0), crop_size=(512, 512), flip=True)


def voc_devkit_parent(root: Path) -> Path:
    """The folder holding ``VOCdevkit/VOC2012`` (torchvision's root), from any of the three."""
    if root.name == "VOC2012" and root.parent.name == "VOCdevkit":
        root = root.parent.parent
    elif root.name == "VOCdevkit":
        root = root.parent
    voc = root / "VOCdevkit" / "VOC2012"
    expected = ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation")
    missing = [d for d in expected if not (voc / d).is_dir()]
    if missing:
        raise MissingFileError(
            f"PASCAL VOC: expected {voc} with {', '.join(expected)} (the layout of "
            f"VOCtrainval_11-May-2012.tar); missing: {', '.join(missing)}"
        )
    return root


def sbd_dataset_dir(root: Path) -> Path:
    """SBD's ``dataset`` folder (SBDataset's root), given it or ``benchmark_RELEASE``."""
    if not (root / "cls").is_dir() and (root / "dataset" / "cls").is_dir():
        root = root / "dataset"
    missing = [d for d in ("img", "cls", "train.txt", "val.txt") if not (root / d).exists()]
    if missing:
        raise MissingFileError(
            f"SBD: expected {root} to hold img/, cls/, train.txt and val.txt (the "
            f"benchmark_RELEASE/dataset folder of benchmark.tgz); missing: {', '.join(missing)}"
        )
    return root


class PascalVOC(SegmentationDataModule):
    """PASCAL VOC 2012, 21 classes (background + 20), void 255; ``train_aug`` with SBD.

    Args:
        root: the folder holding ``VOCdevkit/VOC2012`` (or either of those two folders);
            ``None`` reads ``$SEGBENCH_VOC``.
        sbd_root: SBD's ``benchmark_RELEASE/dataset`` folder, with ``cls_png/`` written by
            ``segbench convert-sbd``; ``None`` reads ``$SEGBENCH_SBD``. Only the ``train_aug``
            and ``sbd_*`` splits read it.
        train_split: the training list: ``train_aug`` (10,582 images, VOC + SBD), ``train``
            (VOC's 1,464), ``trainval``, ``sbd_train`` (FCN's 8,498), ``sbd_val``, or the name of
            a list in ``ImageSets/Segmentation``.
        val_split: the validation list (same choices; ``val``: VOC2012 val, 1,449 images).
        test_split: the list the test and predict stages read (VOC2012 test labels are not
            public, so ``val`` by default).
        sbd_mask_dir: folder of SBD's PNG labels under ``sbd_root``.
        scale: resize every image and label map by this factor first (CPU-scale runs); keep 1
            to score at the labels' own resolution.
        batch_size: training batch size per process.
        val_batch_size: evaluation batch size per process; 1 by default because VOC's images
            differ in size (whole-image evaluation cannot stack them).
        num_workers: loader worker processes.
        augment: training augmentation (default: scale 0.5-2, 512 x 512 crops, flip).
        cache: keep each image and label map decoded in ``$SEGBENCH_CACHE/decoded/`` the
            first time it is read, and read that copy afterwards (about 15x faster than decoding
            a PNG; as much disk as the pixels: ~0.7 MB a 480 x 360 frame). Bit-identical samples.
    """

    class_names = VOC_CLASSES
    palette = tuple(default_palette(21))

    def __init__(
        self,
        *,
        root: str | None = None,
        sbd_root: str | None = None,
        train_split: str = "train_aug",
        val_split: str = "val",
        test_split: str = "val",
        sbd_mask_dir: str = SBD_PNG_DIR,
        scale: float = 1.0,
        batch_size: int = 16,
        val_batch_size: int | None = 1,
        num_workers: int = 4,
        augment: Augment | None = VOC_AUGMENT,
        cache: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            augment=augment,
            cache=cache,
        )
        self.root, self.sbd_root = root, sbd_root
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.sbd_mask_dir = sbd_mask_dir
        self.scale = scale

    # -- the lists ------------------------------------------------------------------------------
    def _voc(self) -> Path:
        return voc_devkit_parent(resolve_root(self.root, VOC_ENV, "PASCAL VOC"))

    def _sbd(self) -> Path:
        return sbd_dataset_dir(resolve_root(self.sbd_root, SBD_ENV, "SBD"))

    def _sbd_hint(self, sbd: Path) -> str:
        return (
            f"SBD's labels are read as PNGs from {sbd / self.sbd_mask_dir}: convert the .mat "
            f"files once with `segbench convert-sbd {shlex.quote(str(sbd))}` (needs scipy)."
        )

    def voc_pairs(self, name: str) -> list[tuple[Path, Path]]:
        """``(image, label)`` of a VOC list (torchvision's VOCSegmentation for its three)."""
        parent = self._voc()
        listing = parent / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / f"{name}.txt"
        if not listing.is_file():
            raise MissingFileError(f"PASCAL VOC: split list not found: {listing}")
        if name in VOC_SPLITS:
            voc = tvd.VOCSegmentation(str(parent), year="2012", image_set=name)
            return [(Path(i), Path(m)) for i, m in zip(voc.images, voc.masks, strict=True)]
        base = parent / "VOCdevkit" / "VOC2012"
        names = read_names(listing, "PASCAL VOC")
        return [
            (base / "JPEGImages" / f"{n}.jpg", base / "SegmentationClass" / f"{n}.png")
            for n in names
        ]

    def train_aug_pairs(self) -> list[tuple[Path, Path]]:
        """(SBD train ∪ SBD val ∪ VOC train) − VOC val; VOC's label where VOC has one."""
        voc_train = {i.stem: (i, m) for i, m in self.voc_pairs("train")}
        voc_val = {i.stem for i, _ in self.voc_pairs("val")}
        sbd = self._sbd()
        sbd_names = set(read_names(sbd / "train.txt", "SBD"))
        sbd_names |= set(read_names(sbd / "val.txt", "SBD"))
        jpegs = self._voc() / "VOCdevkit" / "VOC2012" / "JPEGImages"
        pairs = []
        for n in sorted((sbd_names | set(voc_train)) - voc_val):
            if n in voc_train:
                pairs.append(voc_train[n])
                continue
            image = jpegs / f"{n}.jpg"
            if not image.is_file():
                image = sbd / "img" / f"{n}.jpg"
            pairs.append((image, sbd / self.sbd_mask_dir / f"{n}.png"))
        log.info(
            "PASCAL VOC train_aug: %d images (%d with VOC labels, %d with SBD labels)",
            len(pairs),
            len(set(voc_train) - voc_val),
            len(pairs) - len(set(voc_train) - voc_val),
        )
        return check_pairs(pairs, "PASCAL VOC train_aug", self._sbd_hint(sbd))

    def pairs(self, name: str) -> list[tuple[Path, Path]]:
        """The checked ``(image, label)`` files of a split name (see the module docstring)."""
        if name == "train_aug":
            return self.train_aug_pairs()
        if name in SBD_SPLITS:
            sbd = self._sbd()
            names = read_names(sbd / f"{SBD_SPLITS[name]}.txt", "SBD")
            pairs = [
                (sbd / "img" / f"{n}.jpg", sbd / self.sbd_mask_dir / f"{n}.png") for n in names
            ]
            return check_pairs(pairs, f"SBD {name}", self._sbd_hint(sbd))
        return check_pairs(self.voc_pairs(name), f"PASCAL VOC {name}")

    def build_dataset(self, split: Split, transform: v2.Transform) -> Dataset:
        return ImageMaskPairs(
            self.pairs(self.splits[split]),
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            transform=transform,
            cache_dir=self.decoded_cache(),
        )
