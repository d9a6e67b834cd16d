"""The Python API: a trained run as a function from images to label maps.

::

    import segbench

    model = segbench.load("runs/quickstart/quickstart")         # the run's best checkpoint
    result = model.predict("street.png")                       # a path, PIL image, array, tensor
    result.labels                                              # H x W class indices (numpy)
    model.class_names[result.labels[0, 0]]                     # the class of the top-left pixel
    result.overlay().save("street_overlay.png")                # the image in the class colours
    results = model.predict([image_a, image_b], probs=True)    # a list in, a list out

:func:`load` reads the run's config and checkpoint (:func:`segbench.analysis.loading.load_model`);
the :class:`Segmenter` it returns predicts exactly as ``segbench predict --images`` does: the
data module's evaluation transform (its normalisation and ``scale``), images of one size batched
together as the command batches them, the task's ``predict_step`` (the run's test protocol:
whole image, sliding window or multi-scale + flip, resized back to the image's own size) under
the run's ``trainer.precision`` (the autocast the command's trainer would use). So the labels
equal the command's (a test checks it), and a notebook never assembles network, normalisation,
classes and protocol by hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from PIL import Image
from torch import Tensor

from segbench.analysis.loading import load_model
from segbench.data.base import SegmentationDataModule
from segbench.data.files import batches_by_size, image_tensor, prepare_image, read_image
from segbench.data.transforms import eval_transform
from segbench.errors import DataError
from segbench.numerics import resolve_precision
from segbench.rundir import RunDir
from segbench.task import SegmentationTask
from segbench.visualize import colourise, overlay

__all__ = ["ImageInput", "Prediction", "Segmenter", "load"]

#: What :meth:`Segmenter.predict` accepts as one image: a file path, a PIL image (read as a file
#: is: EXIF orientation, 16-bit grey scaled), an
#: ``H x W x 3`` uint8 array, or a ``3 x H x W`` tensor (uint8, or float in [0, 1]).
ImageInput = str | Path | Image.Image | np.ndarray | Tensor


@dataclass
class Prediction:
    """One image's prediction.

    Attributes:
        labels: ``H x W`` class indices (int64) at the image's own size.
        image: the image as read, ``H x W x 3`` uint8.
        probs: ``K x H x W`` float32 class probabilities (``predict(..., probs=True)``), else
            ``None``.
        class_names: the run's class names (``labels`` index them).
        palette: the run's class colours (RGB).
    """

    labels: np.ndarray
    image: np.ndarray
    probs: np.ndarray | None
    class_names: list[str]
    palette: list[tuple[int, int, int]]

    def overlay(self, alpha: float = 0.5, legend: bool = True) -> Image.Image:
        """The image blended with the class colours, with a legend of the classes present (the
        same picture as ``segbench predict``'s ``<name>_overlay.png``)."""
        return overlay(self.image, self.labels, self.palette, self.class_names, alpha=alpha,
                       legend=legend)  # fmt: skip

    def colours(self) -> np.ndarray:
        """The label map in the class colours, ``H x W x 3`` uint8."""
        return colourise(self.labels, self.palette)

    def share(self) -> dict[str, float]:
        """Each predicted class's share of the image's pixels, largest first."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        order = np.argsort(-counts, kind="stable")
        total = int(counts.sum())
        return {self.class_names[i]: int(counts[i]) / total for i in order if counts[i] > 0}


def as_uint8_image(image: ImageInput) -> Tensor:
    """One image input as ``uint8 3 x H x W`` RGB (what ``segbench predict`` reads a file as)."""
    if isinstance(image, str | Path):
        if Path(image).expanduser().is_dir():
            # One path in, one Prediction out: a folder's images are a list, which says their
            # order (reading it gave "Is a directory").
            raise DataError(
                f"{image}: a folder, not an image; give its images as a list, as segbench "
                f"predict --images {image} takes them (recursively, sorted): "
                f"model.predict(find_images([{str(image)!r}])), with "
                "from segbench.data.files import find_images"
            )
        return read_image(Path(image))
    if isinstance(image, Image.Image):
        return image_tensor(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(
                f"an array image must be H x W x 3 uint8 (RGB), got {image.shape} {image.dtype}"
            )
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()  # a copy
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise DataError(
                f"a tensor image must be 3 x H x W (uint8, or float in [0, 1]), got "
                f"{tuple(image.shape)}"
            )
        if image.dtype == torch.uint8:
            return image.cpu()
        if image.is_floating_point():
            low, high = float(image.min()), float(image.max())
            if low < 0 or high > 1:
                raise DataError(
                    f"a float tensor image must hold values in [0, 1], got [{low:.3g}, "
                    f"{high:.3g}]: divide a 0-255 image by 255"
                )
            return (image.detach().cpu() * 255).round().to(torch.uint8)
        raise DataError(f"a tensor image must be uint8 or float, got {image.dtype}")
    raise DataError(
        f"cannot predict a {type(image).__name__}: give a path, a PIL image, an H x W x 3 uint8 "
        "array or a 3 x H x W tensor"
    )


class Segmenter:
    """A trained segbench network with everything its predictions need (from :func:`load`).

    Attributes:
        task: the :class:`~segbench.task.SegmentationTask` (its ``net`` in eval mode).
        datamodule: the run's data module (normalisation, scale, classes, palette).
        class_names: the class names, indexed by label.
        palette: the class colours (RGB).
        run_dir: the run directory it was loaded from.
        checkpoint: the checkpoint file.
        precision: the numerics it predicts under (the run's ``trainer.precision`` resolved for
            ``device``, as ``segbench predict`` would).
    """

    def __init__(
        self,
        task: SegmentationTask,
        datamodule: SegmentationDataModule,
        *,
        run_dir: Path | None = None,
        checkpoint: Path | None = None,
        precision: str = "32-true",
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.task = task.to(self.device).eval()
        self.datamodule = datamodule
        self.class_names = list(datamodule.class_names)
        self.palette = [tuple(int(v) for v in c) for c in datamodule.colours()]
        self.run_dir, self.checkpoint = run_dir, checkpoint
        self.precision = str(precision)
        self.transform = eval_transform(
            mean=datamodule.mean, std=datamodule.std, scale=datamodule.scale
        )

    def __repr__(self) -> str:
        return (
            f"Segmenter({type(self.task.net).__name__}, {len(self.class_names)} classes, "
            f"{self.checkpoint or 'fresh'}, {self.precision} on {self.device})"
        )

    @contextlib.contextmanager
    def _numerics(self) -> Iterator[None]:
        """The autocast ``segbench predict``'s trainer runs its predict step under."""
        if self.precision in ("bf16-mixed", "16-mixed"):
            plugin = MixedPrecision(self.precision, device=self.device.type)  # type: ignore[arg-type]
            with plugin.forward_context():
                yield
        else:
            yield

    @overload
    def predict(self, images: ImageInput, *, probs: bool = False) -> Prediction: ...

    @overload
    def predict(
        self, images: list[ImageInput] | tuple[ImageInput, ...], *, probs: bool = False
    ) -> list[Prediction]: ...

    def predict(
        self,
        images: ImageInput | list[ImageInput] | tuple[ImageInput, ...],
        *,
        probs: bool = False,
    ) -> Prediction | list[Prediction]:
        """Label maps of one image or a list of them, at each image's own size.

        Args:
            images: a path, PIL image, ``H x W x 3`` uint8 array or ``3 x H x W`` tensor, or a
                list of them (sizes may differ).
            probs: also return each image's class probabilities (``K x H x W`` float32).

        Returns:
            A :class:`Prediction` for one image, a list of them for a list.
        """
        inputs: list[ImageInput] = list(images) if isinstance(images, list | tuple) else [images]
        single = not isinstance(images, list | tuple)
        originals = [as_uint8_image(image) for image in inputs]
        sizes = [(int(o.shape[1]), int(o.shape[2])) for o in originals]
        results: list[Prediction | None] = [None] * len(originals)
        for batch in batches_by_size(sizes, self.datamodule.val_batch_size):
            original = torch.stack([originals[i] for i in batch])
            image = torch.stack([prepare_image(originals[i], self.transform) for i in batch])
            out = self._predict_batch({"image": image, "original": original})
            for j, i in enumerate(batch):
                results[i] = Prediction(
                    labels=out["pred"][j].cpu().numpy().astype(np.int64),
                    image=originals[i].permute(1, 2, 0).numpy(),
                    probs=out["log_probs"][j].float().exp().cpu().numpy() if probs else None,
                    class_names=self.class_names,
                    palette=self.palette,  # type: ignore[arg-type]
                )
        done = [r for r in results if r is not None]
        return done[0] if single else done

    def _predict_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode(), self._numerics():
            return self.task.predict_step(batch, 0)

    def overlay(self, image: ImageInput, alpha: float = 0.5) -> Image.Image:
        """Predict ``image`` and draw it blended with its labels' colours, with a legend."""
        return self.predict(image).overlay(alpha=alpha)


def load(
    run_dir: str | Path, ckpt: str = "best", *, device: str | torch.device = "cpu"
) -> Segmenter:
    """A trained run, ready to predict: ``segbench.load("runs/quickstart/quickstart")``.

    Args:
        run_dir: the run directory (``<run.root>/<group>/<name>``, holding ``config.yaml``).
        ckpt: ``best`` or ``last`` (the run's checkpoints), or a path to a ``.ckpt`` file.
        device: where the network runs (``"cpu"``, ``"cuda"``, ...).
    """
    loaded = load_model([str(run_dir)], ckpt=ckpt)
    # The weights are in memory and nothing is written into the run: a notebook holding the
    # model does not keep the run from a `fit --run.overwrite` (RunDir.reader) until it exits.
    if (claim := RunDir.given(run_dir).reader()) is not None:
        claim.release(remove=True)
    trainer = loaded.config.get("trainer") or {}
    precision = resolve_precision(trainer.get("precision") or "32-true", torch.device(device).type)
    return Segmenter(
        loaded.task,
        loaded.datamodule,
        run_dir=loaded.run_dir,
        checkpoint=loaded.checkpoint,
        precision=str(precision),
        device=device,
    )
