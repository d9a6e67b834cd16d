"""Pictures of the validation: :class:`SegmentationVisualizer` draws ``val_examples.png`` and gives
the loggers that figure, the confusion matrix and the per-class IoU table.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from segbench.callbacks.records import datamodule_of, evaluation_log_step
from segbench.loggers import log_validation_pictures
from segbench.rundir import RunDir, atomic_write
from segbench.visualize import denormalise, to_uint8, val_examples_figure


class SegmentationVisualizer(Callback):
    """After each validation: ``val_examples.png``, and the same pictures in every logger.

    The examples are ``num_images`` images spread evenly over the val split (its first and last
    image and those between), the same ones at every validation, so the figure shows the
    model's progress on fixed scenes. Each is predicted again under the val protocol (a few
    forward passes), drawn in four labelled columns (image, ground truth, prediction, error
    map) with a class legend (:func:`segbench.visualize.val_examples_figure`), and written to
    the run directory. Loggers that show pictures (W&B, TensorBoard, MLflow:
    :func:`segbench.loggers.log_validation_pictures`) get that figure, the confusion matrix and
    the per-class IoU table at the step.

    Args:
        run_dir: the run directory.
        num_images: how many val images to show (0: none).
    """

    def __init__(self, run_dir: str | Path, num_images: int = 4) -> None:
        self.run_dir = Path(run_dir)
        self.num_images = num_images

    @staticmethod
    def picks(size: int, num: int) -> list[int]:
        """``num`` indices spread evenly over ``range(size)``, first and last included."""
        if size <= 0 or num <= 0:
            return []
        return sorted({round(float(i)) for i in np.linspace(0, size - 1, min(num, size))})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.num_images <= 0:
            return
        loader = trainer.val_dataloaders
        dataset = getattr(loader, "dataset", None)
        predict = getattr(pl_module, "predict_log_probs", None)
        if dataset is None or not callable(predict):
            return
        dm = datamodule_of(trainer)
        picks = self.picks(len(dataset), self.num_images)
        images, targets, preds = [], [], []
        was_training = pl_module.training
        pl_module.eval()
        with torch.inference_mode(), trainer.precision_plugin.forward_context():
            for i in picks:
                item = dataset[i]
                mask = item["mask"]
                image = item["image"].unsqueeze(0).to(pl_module.device)
                log_probs = predict(image, "val", tuple(mask.shape[-2:]))
                preds.append(log_probs.argmax(1)[0].cpu().numpy())
                targets.append(mask.cpu().numpy())
                images.append(to_uint8(denormalise(item["image"][None], dm))[0])
        pl_module.train(was_training)
        pictures = [im.permute(1, 2, 0).numpy() for im in images]
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting:
            when = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        else:  # segbench validate: which weights
            when = f"{Path(trainer.ckpt_path).stem} checkpoint" if trainer.ckpt_path else "weights"

        picture = val_examples_figure(
            pictures,
            targets,
            preds,
            dm.colours(),
            list(dm.class_names),
            ignore_index=dm.ignore_index,
            row_labels=[f"val #{i}" for i in picks],
            title=f"{self.run_dir.name}: validation examples ({when})",
        )
        path = RunDir(self.run_dir).file(RunDir.VAL_EXAMPLES)
        atomic_write(path, lambda f: picture.save(f, format="PNG"))
        metrics = getattr(pl_module, "metrics", {})
        confusion = getattr(metrics["val"], "last_confusion", None) if "val" in metrics else None
        # The step Lightning logs this validation's metrics at: during fit, that of the last
        # optimiser step, so a resume's purge (from the checkpoint's step on) keeps them; in
        # segbench validate, the step the fit logged these weights' validation at.
        log_validation_pictures(
            trainer.loggers,
            step=max(trainer.global_step - 1, 0) if fitting else evaluation_log_step(trainer) or 0,
            examples=np.asarray(picture),
            masks=(pictures, targets, preds),
            confusion=confusion,
            class_names=list(dm.class_names),
            ignore_index=dm.ignore_index,
            iou={
                name: float(trainer.callback_metrics.get(f"val/IoU/{name}", float("nan")))
                for name in dm.class_names
            },
        )
