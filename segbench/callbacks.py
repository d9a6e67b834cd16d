"""Callbacks that make a run readable without W&B: the metrics file and the validation figure.

* :class:`RunFiles` keeps ``<run_dir>/metrics.json`` up to date: the resolved config (flat, one
  key per switch), the last and the best validation metrics, the test metrics, the parameter count,
  the training throughput and the time of the last validation and test (``eval_timing``: what an
  evaluation protocol costs). ``segbench report`` builds its tables from these files.
* :class:`SegmentationVisualizer` draws a few validation images with their ground truth and
  prediction into ``<run_dir>/val_examples.png`` and, when a W&B logger is present, logs them as
  mask overlays together with a per-class IoU table.
* :class:`PredictionWriter` saves ``segbench predict``'s label maps as palette PNGs.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

METRICS_FILE = "metrics.json"


def _floats(metrics: dict[str, Any], prefix: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k, v in sorted(metrics.items()):
        if k.startswith(prefix):
            f = float(v)
            out[k] = None if math.isnan(f) else f
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so a run killed mid-write leaves the previous file intact."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


class RunFiles(Callback):
    """Maintain ``metrics.json`` in the run directory (global rank 0 only).

    Args:
        run_dir: the run directory.
        config: the flat resolved config to record with the results.
    """

    def __init__(self, run_dir: str | Path, config: dict[str, Any] | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.data: dict[str, Any] = {}
        if self.path.is_file():  # a resumed run keeps what it had
            self.data = json.loads(self.path.read_text())
        if config is not None:
            self.data["config"] = config
        self._train_time, self._train_images, self._tick, self._fit_start = 0.0, 0, 0.0, 0.0
        self._eval_start, self._eval_images = 0.0, 0

    def _write(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, self.data)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.data["params"] = {
            "total": sum(p.numel() for p in pl_module.parameters()),
            "trainable": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
        }
        # A resumed run adds to the throughput totals of the runs before it.
        timing = self.data.get("timing", {})
        self._train_images = timing.get("train_images", 0)
        self._train_time = timing.get("train_seconds", 0.0)
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._tick = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Time from one batch's end to the next's, loading included; validation (which runs
        # after the epoch's last batch) is excluded because each epoch restarts the clock.
        now = time.perf_counter()
        self._train_time += now - self._tick
        self._tick = now
        self._train_images += int(batch["image"].shape[0]) * trainer.world_size

    # -- evaluation time: wall-clock of the epoch (loading included), this process's images ---
    def _eval_begin(self) -> None:
        self._eval_start, self._eval_images = time.perf_counter(), 0

    def _eval_count(self, batch: Any) -> None:
        self._eval_images += int(batch["image"].shape[0])

    def _eval_timing(self, stage: str) -> None:
        seconds = time.perf_counter() - self._eval_start
        self.data.setdefault("eval_timing", {})[stage] = {
            "seconds": seconds,
            "images": self._eval_images,
            "images_per_s": self._eval_images / seconds if seconds > 0 else None,
        }

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_begin()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_count(batch)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_begin()

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_count(batch)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        val = _floats(trainer.callback_metrics, "val/")
        if not val:
            return
        self._eval_timing("val")
        val["epoch"] = trainer.current_epoch
        val["step"] = trainer.global_step
        self.data["val"] = val
        best = self.data.get("best_val")
        if best is None or (val.get("val/mIoU") or 0.0) > (best.get("val/mIoU") or 0.0):
            self.data["best_val"] = dict(val)
        if trainer.state.fn == "fit":
            self._update_timing()
        self._write(trainer)

    def _update_timing(self) -> None:
        if self._train_time > 0:
            self.data["timing"] = {
                "train_images": self._train_images,
                "train_seconds": self._train_time,
                "train_images_per_s": self._train_images / self._train_time,
            }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update_timing()
        self.data.setdefault("timing", {})["fit_seconds"] = time.perf_counter() - self._fit_start
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "best_model_path", ""):
            self.data["best_checkpoint"] = ckpt.best_model_path
        self.data["completed_epochs"] = trainer.current_epoch
        self.data["global_step"] = trainer.global_step
        self._write(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_timing("test")
        self.data["test"] = _floats(trainer.callback_metrics, "test/")
        self.data["test_checkpoint"] = str(trainer.ckpt_path) if trainer.ckpt_path else None
        self._write(trainer)


def colourise(labels: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    """``H x W`` labels -> ``H x W x 3`` uint8 colours; labels past the palette (void) are grey."""
    lut = np.full((256, 3), 40, np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[np.clip(labels, 0, 255).astype(np.int64)]


class SegmentationVisualizer(Callback):
    """Validation examples: ``val_examples.png`` in the run directory and W&B mask overlays.

    Args:
        run_dir: the run directory.
        num_images: how many images of the first validation batch to show.
    """

    def __init__(self, run_dir: str | Path, num_images: int = 4) -> None:
        self.run_dir = Path(run_dir)
        self.num_images = num_images
        self._examples: dict[str, Tensor] | None = None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self.num_images <= 0 or not isinstance(outputs, dict) or "pred" not in outputs:
            return
        n = self.num_images
        self._examples = {
            "image": batch["image"][:n].detach().float().cpu(),
            "mask": batch["mask"][:n].cpu(),
            "pred": outputs["pred"][:n].cpu(),
        }

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._examples is None or not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        ex, self._examples = self._examples, None
        mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
        std = torch.tensor(dm.std).view(1, 3, 1, 1)
        images = ((ex["image"] * std + mean).clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).numpy()
        palette = dm.colours()
        rows = [
            np.concatenate(
                [img, colourise(m.numpy(), palette), colourise(p.numpy(), palette)], axis=1
            )
            for img, m, p in zip(images, ex["mask"], ex["pred"], strict=True)
        ]
        grid = np.concatenate(rows, axis=0)
        self._save_png(grid)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, images, ex, dm, trainer)

    def _save_png(self, grid: np.ndarray) -> None:
        from PIL import Image

        self.run_dir.mkdir(parents=True, exist_ok=True)
        scale = max(1, 512 // grid.shape[1])
        img = Image.fromarray(grid)
        if scale > 1:
            img = img.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
        img.save(self.run_dir / "val_examples.png")

    def _log_wandb(
        self,
        logger: WandbLogger,
        images: np.ndarray,
        ex: dict[str, Tensor],
        dm: Any,
        trainer: L.Trainer,
    ) -> None:
        import wandb

        labels = {i: name for i, name in enumerate(dm.class_names)}
        labels[dm.ignore_index] = "void"
        overlays = [
            wandb.Image(
                img,
                masks={
                    "ground_truth": {
                        "mask_data": m.numpy().astype(np.int32),
                        "class_labels": labels,
                    },
                    "predictions": {
                        "mask_data": p.numpy().astype(np.int32),
                        "class_labels": labels,
                    },
                },
            )
            for img, m, p in zip(images, ex["mask"], ex["pred"], strict=True)
        ]
        metrics = trainer.callback_metrics
        rows = [
            [name, float(metrics.get(f"val/IoU/{name}", float("nan")))] for name in dm.class_names
        ]
        logger.experiment.log(
            {
                "val/examples": overlays,
                "val/per_class_IoU": wandb.Table(columns=["class", "IoU"], data=rows),
                "trainer/global_step": trainer.global_step,
            }
        )


class PredictionWriter(BasePredictionWriter):
    """Write each predicted label map to ``<out_dir>/<name>.png`` (palette PNG: the pixel values
    are class indices, the palette gives the data set's colours).

    Args:
        out_dir: the folder of the PNGs.
    """

    def __init__(self, out_dir: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)

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

        self.out_dir.mkdir(parents=True, exist_ok=True)
        flat_palette = [c for rgb in trainer.datamodule.colours() for c in rgb]
        names = prediction.get("name") or [
            f"{batch_idx}_{i}" for i in range(len(prediction["pred"]))
        ]
        for name, pred in zip(names, prediction["pred"], strict=True):
            img = Image.fromarray(pred.to(torch.uint8).cpu().numpy(), mode="P")
            img.putpalette(flat_palette)
            img.save(self.out_dir / f"{name}.png")
