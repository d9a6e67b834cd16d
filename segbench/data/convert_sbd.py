"""``segbench convert-sbd SBD_ROOT``: SBD's ``.mat`` class labels to PNGs, once.

SBD (the Semantic Boundaries Dataset, ``benchmark.tgz``) ships its labels as MATLAB files:
``cls/<name>.mat`` holds a struct ``GTcls`` whose ``Segmentation`` field is the class map (uint8,
0 background, 1..20 the VOC classes, no void). This command reads every image of SBD's
``train.txt`` and ``val.txt`` (11,355 images) through torchvision's ``SBDataset`` and writes
``<SBD_ROOT>/cls_png/<name>.png``: a palette PNG with the VOC colour map whose pixel values are
the class indices, which :class:`segbench.data.PascalVOC` reads for its ``train_aug`` and
``sbd_*`` splits. Existing PNGs are kept unless ``--overwrite``.

torchvision reads ``.mat`` files with ``scipy.io.loadmat``; scipy is an optional dependency of
segbench for this one-off conversion (``pip install 'segbench[sbd]'`` or ``pip install scipy``).
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import datasets as tvd

from segbench.data.base import default_palette
from segbench.data.voc import SBD_PNG_DIR, sbd_dataset_dir
from segbench.errors import DataError, UnavailableError
from segbench.options import command_parser
from segbench.rundir import atomic_write

#: SBD's classes: background + the 20 VOC classes.
SBD_NUM_CLASSES = 21


def require_scipy() -> None:
    """Fail with the fix when scipy (torchvision's ``.mat`` reader) is missing."""
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        raise UnavailableError(
            "segbench convert-sbd reads SBD's .mat labels with scipy (through torchvision's "
            "SBDataset), and scipy is not installed: `pip install scipy`, then run it again. "
            "Only this one-off conversion needs scipy."
        ) from None


def voc_palette_png(label: np.ndarray) -> Image.Image:
    """A class-index map as a palette PNG image with the VOC colour map (255: VOC's void)."""
    img = Image.fromarray(label.astype(np.uint8))
    img.putpalette(
        [c for rgb in default_palette(256) for c in rgb]
    )  # an "L" image becomes "P" with its values kept as indices
    return img


def convert_sbd(root: Path, out_dir: Path | None = None, *, overwrite: bool = False) -> int:
    """Write every SBD label of train.txt and val.txt as a PNG; returns how many were written."""
    require_scipy()
    root = sbd_dataset_dir(root)
    out = out_dir or root / SBD_PNG_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for image_set in ("train", "val"):
        sbd = tvd.SBDataset(str(root), image_set=image_set, mode="segmentation")
        for i, mat in enumerate(sbd.masks):
            target = out / f"{Path(mat).stem}.png"
            if target.is_file() and not overwrite:
                continue
            label = np.asarray(sbd[i][1])
            if label.ndim != 2 or label.max(initial=0) >= SBD_NUM_CLASSES:
                raise DataError(
                    f"{mat}: GTcls.Segmentation should be a 2-D map of values 0..20, got shape "
                    f"{label.shape} with values up to {label.max(initial=0)}"
                )
            # Written whole or not at all (rundir.atomic_write): a PNG cut short by a kill was
            # kept by every rerun (existing PNGs are), a label map no reader could open.
            atomic_write(target, partial(voc_palette_png(label).save, format="PNG"))
            written += 1
    return written


def main(argv: list[str]) -> None:
    parser = command_parser("segbench convert-sbd", __doc__ or "")
    parser.add_argument(
        "sbd_root", type=Path, help="SBD's benchmark_RELEASE/dataset folder (or benchmark_RELEASE)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output folder (default: SBD_ROOT/{SBD_PNG_DIR})"
    )
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing PNGs")
    args = parser.parse_args(argv)
    written = convert_sbd(args.sbd_root, args.out, overwrite=args.overwrite)
    out = args.out or sbd_dataset_dir(args.sbd_root) / SBD_PNG_DIR
    sys.stdout.write(f"wrote {written} label PNGs to {out}\n")
