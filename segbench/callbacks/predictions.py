"""``segbench predict``'s files: :class:`PredictionWriter` saves each image's label map as a
palette PNG, with its overlay (by default) and its class probabilities (when asked).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from segbench.callbacks.records import datamodule_of
from segbench.data.files import OUTPUT_SUFFIXES
from segbench.errors import DataError
from segbench.rundir import atomic_write_files
from segbench.visualize import denormalise, overlay, to_uint8

log = logging.getLogger("segbench")


#: The files :class:`PredictionWriter` writes per image: ``<name>`` and these.
LABEL_MAP, OVERLAY, PROBS = OUTPUT_SUFFIXES


class PredictionWriter(BasePredictionWriter):
    """Write ``segbench predict``'s results, per image, into ``out_dir``:

    * ``<name>.png``: the label map at the image's own size, a palette PNG (pixel values are
      class indices, the palette gives the data set's colours);
    * ``<name>_overlay.png``: the image blended with the class colours, with a legend of the
      classes present (``overlays``);
    * ``<name>_probs.npy``: the class probabilities, float16 ``K x H x W`` (``save_probs``).

    An image that could not be read is reported and skipped; the end says how many images were
    written, in how long, and which were skipped. No file is written twice in one prediction
    (:func:`segbench.data.files.output_names` makes the names distinct as files; a data set whose
    test split names two images alike is refused, naming the file, rather than overwriting it).

    Args:
        out_dir: the folder of the files.
        overlays: also write the overlays.
        save_probs: also write the probabilities.
    """

    def __init__(self, out_dir: str | Path, *, overlays: bool = True, save_probs: bool = False):
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.overlays, self.save_probs = overlays, save_probs
        self.written = 0
        self.skipped: list[tuple[str, str]] = []
        self._start = 0.0
        self._files: set[Path] = set()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.written, self.skipped, self._start = 0, [], time.perf_counter()
        self._files = set()

    def _path(self, name: str, suffix: str) -> Path:
        """The file ``<name><suffix>``, claimed for this prediction: one written already (two
        images of one name) is an error rather than overwritten."""
        path = self.out_dir / f"{name}{suffix}"
        if path in self._files:
            raise DataError(
                f"segbench predict: {path} would be written twice: two images are named "
                f"{name!r} (rename one, or predict them into separate --out folders)"
            )
        self._files.add(path)
        return path

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        from PIL import Image

        for path, message in batch.get("errors") or []:
            log.warning("skipped %s: %s", path, message)
            self.skipped.append((path, message))
        if prediction["pred"] is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        dm = datamodule_of(trainer)
        palette = dm.colours()
        flat_palette = [c for rgb in palette for c in rgb]
        names = prediction.get("name") or [
            f"{batch_idx}_{i}" for i in range(len(prediction["pred"]))
        ]
        preds = prediction["pred"].to(torch.uint8).cpu().numpy()
        originals = batch.get("original")
        if self.overlays and originals is None:  # the test split: the image as normalised
            originals = to_uint8(denormalise(batch["image"], dm))
        for i, (name, pred) in enumerate(zip(names, preds, strict=True)):
            img = Image.fromarray(pred, mode="P")
            img.putpalette(flat_palette)
            # An image's files as one version (rundir.atomic_write_files): a killed prediction
            # leaves whole files or none, never a truncated PNG under its real name, and never
            # an earlier prediction's overlay or probabilities beside this label map (those
            # this prediction does not write are removed with it).
            label_map, overlay_file, probs_file = (
                self._path(name, kind) for kind in (LABEL_MAP, OVERLAY, PROBS)
            )
            writes: dict[Path, Callable[[BinaryIO], object] | None] = {
                label_map: partial(img.save, format="PNG"),
                overlay_file: None,
                probs_file: None,
            }
            if self.overlays:
                image = originals[i].cpu().permute(1, 2, 0).numpy()
                picture = overlay(image, pred, palette, list(dm.class_names))
                writes[overlay_file] = partial(picture.save, format="PNG")
            if self.save_probs:
                if prediction.get("probs") is not None:  # tiled: kept as float16
                    probs = prediction["probs"][i].numpy()
                else:
                    probs = prediction["log_probs"][i].float().exp().to(torch.float16).cpu().numpy()
                writes[probs_file] = partial(np.save, arr=probs)
            atomic_write_files(writes)
            self.written += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        per_image = f" ({seconds / self.written:.3f} s per image)" if self.written else ""
        log.info(
            "predicted %d image(s) in %.1f s%s into %s",
            self.written,
            seconds,
            per_image,
            self.out_dir,
        )
        skipped = [
            *getattr(getattr(trainer, "datamodule", None), "skipped_images", []),
            *self.skipped,
        ]
        if skipped:
            log.warning(
                "skipped %d image(s), each named above with why (unreadable, or over "
                "--max_megapixels): %s",
                len(skipped),
                ", ".join(p for p, _ in skipped),
            )
