"""``segbench ld-masks [RUN_DIR ...] [--config FILE.yaml [overrides]] [--out DIR]``.

GALD's local distribution masks (the paper's mask visualisation): for a few images of ``--split``,
the mask ``M`` of a few channels of the LD module, over the input. GALD's claim is that the mask
damps the inside of large uniform regions (where the globally aggregated features are already
right) and keeps small patterns and boundaries (where they are over-smoothed); with the code's
module ``M`` lies in ``[0.5, 1)``, so the figure's colour scale is fixed to that range.

Prints the tables; ``--out DIR`` writes them (``ld-masks.md``) and:

* ``ld-masks.png``: one row per image: the image, its ground truth, then the masks of the
  ``--channels`` channels whose mask varies most over the images (or ``--channel_ids``),
  bilinearly upsampled and blended over the image;
* ``ld-masks.json``: the mean of ``M`` over all channels for the
  pixels of each ground-truth class, over ``--stats_images`` images, and the mean
  inside regions versus near their boundaries (pixels within ``--boundary`` pixels of another
  label): the figure's claim as numbers; and, under ``mask_ablation``, the mIoU and per-class
  IoU over ``--ablation_images`` images with ``M`` as trained, with ``M`` replaced by
  its mean over positions (per image and channel: no spatial selectivity left), and with ``M``
  replaced by its mean over the images too (a constant per-channel gain). If mIoU holds without
  the spatial variation, LD's gain does not come from weighting small patterns against large ones.
  ``--record`` also stores these mIoUs and their differences (``ld_mask/spatial_mIoU_gain``: as
  trained minus averaged over positions; ``ld_mask/input_mIoU_gain``: as trained minus constant)
  in the run's ``metrics.json``, for ``segbench report --metrics`` (see
  :meth:`segbench.rundir.RunDir.record`).

A run directory is loaded with its checkpoint ``--ckpt``; ``--config`` builds a fresh
(untrained) network, which checks the plumbing but says nothing about GALD. The command line is
shared by every tool (:mod:`segbench.analysis.tool`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segbench.analysis.loading import LoadedModel, denormalise
from segbench.analysis.tool import Common, Tool
from segbench.errors import ConfigError
from segbench.metrics import SegmentationMetrics
from segbench.models.layers.global_context import LocalDistribution
from segbench.tables import markdown_table
from segbench.visualize import colourise

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("segbench")


#: How :func:`replaced_mask` changes ``M``: ``trained`` leaves it, ``spatial_mean`` averages it
#: over positions (per image and channel), ``constant`` sets it to a given per-channel value.
MaskReplacement = Literal["trained", "spatial_mean", "constant"]


def ld_module(net: torch.nn.Module) -> LocalDistribution:
    """The (first) LD module of ``net``."""
    modules = [m for m in net.modules() if isinstance(m, LocalDistribution)]
    if not modules:
        raise ConfigError(
            f"{type(net).__name__} has no local distribution module (GALD with ld: true has one)"
        )
    return modules[0]


def ld_masks(net: torch.nn.Module, images: Tensor) -> Tensor:
    """The mask ``M`` of the (first) LD module of ``net`` for ``images``: ``N x C x h x w``."""
    masks: list[Tensor] = []
    handle = ld_module(net).register_forward_hook(
        lambda module, inputs, output: masks.append(module.mask(inputs[0]))
    )
    try:
        was_training = net.training
        net.eval()
        with torch.no_grad():
            net(images)
        net.train(was_training)
    finally:
        handle.remove()
    return masks[0]


@contextmanager
def replaced_mask(
    module: LocalDistribution, how: MaskReplacement, constant: Tensor | None = None
) -> Iterator[None]:
    """Within the block, ``module`` outputs ``x + x * M'`` with ``M'`` from ``M`` as ``how`` says.

    ``constant`` (``C`` values) is the mask for ``how="constant"``.
    """
    if how == "constant" and constant is None:
        raise ValueError("how='constant' needs the per-channel constant")

    def hook(mod: LocalDistribution, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        x = inputs[0]
        if how == "trained":
            return output
        if how == "spatial_mean":
            m = mod.mask(x).mean((2, 3), keepdim=True)
        else:
            m = constant.to(x).view(1, -1, 1, 1)  # type: ignore[union-attr]
        return x + x * m

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def mask_ablation(
    net: torch.nn.Module,
    images: Tensor,
    labels: Tensor,
    class_names: list[str],
    ignore_index: int,
    batch_size: int = 16,
) -> dict[str, dict[str, float]]:
    """mIoU and per-class IoU of ``net`` on ``images`` with the LD mask as trained, averaged
    over positions, and fixed to its mean over ``images`` (see :func:`replaced_mask`)."""
    module = ld_module(net)
    batches = [slice(i, i + batch_size) for i in range(0, len(images), batch_size)]

    def evaluate() -> dict[str, float]:
        metric = SegmentationMetrics(len(class_names), ignore_index, class_names)
        with torch.no_grad():
            for b in batches:
                metric.update(net(images[b])["out"], labels[b])
        return {
            k: float(v) for k, v in metric.compute().items() if k == "mIoU" or k.startswith("IoU/")
        }

    was_training = net.training
    net.eval()
    # The pass with M as trained also sums, per channel, each image's mean of M: the constant.
    sums: list[Tensor] = []
    handle = module.register_forward_hook(
        lambda mod, inputs, output: sums.append(mod.mask(inputs[0]).mean((2, 3)).sum(0))
    )
    try:
        results = {"trained": evaluate()}
    finally:
        handle.remove()
    constant = torch.stack(sums).sum(0) / len(images)
    for how in ("spatial_mean", "constant"):
        with replaced_mask(module, how, constant):
            results[how] = evaluate()
    net.train(was_training)
    return results


def boundary_mask(labels: Tensor, width: int) -> Tensor:
    """``N x H x W`` bool: pixels within ``width`` pixels (Chebyshev) of a different label."""
    lab = labels.float().unsqueeze(1)
    k = 2 * width + 1
    hi = F.max_pool2d(lab, k, stride=1, padding=width)
    lo = -F.max_pool2d(-lab, k, stride=1, padding=width)
    return (hi != lo).squeeze(1)


def class_statistics(
    masks: Tensor, labels: Tensor, class_names: list[str], ignore_index: int, boundary: int
) -> dict[str, dict[str, float | int | None]]:
    """Mean of ``M`` (over channels) per ground-truth class, overall, inside and at boundaries."""
    m = F.interpolate(masks, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    m = m.mean(1)  # N x H x W: mean over channels
    edge = boundary_mask(labels, boundary)
    stats: dict[str, dict[str, float | int | None]] = {}
    for k, name in enumerate(class_names):
        sel = labels == k
        inner, edges = sel & ~edge, sel & edge
        stats[name] = {
            "pixels": int(sel.sum()),
            "mean": float(m[sel].mean()) if sel.any() else None,
            "interior": float(m[inner].mean()) if inner.any() else None,
            "boundary": float(m[edges].mean()) if edges.any() else None,
        }
    valid = labels != ignore_index
    stats["all"] = {"pixels": int(valid.sum()), "mean": float(m[valid].mean())}
    return stats


def draw(
    images: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray,
    channels: list[int],
    palette: list[tuple[int, int, int]],
    fig: Figure,
) -> None:
    """Rows: image, ground truth, and each channel's mask blended over the image."""
    n, cols = len(images), 2 + len(channels)
    fig.set_size_inches(2.2 * cols, 2.2 * n)
    axes = fig.subplots(n, cols, squeeze=False)
    shown = None
    for i in range(n):
        axes[i, 0].imshow(images[i])
        axes[i, 1].imshow(colourise(labels[i], palette))
        for j, c in enumerate(channels):
            axes[i, 2 + j].imshow(images[i].mean(-1), cmap="gray", vmin=0, vmax=255)
            shown = axes[i, 2 + j].imshow(masks[i, c], cmap="jet", vmin=0.5, vmax=1.0, alpha=0.6)
    for j, title in enumerate(["image", "ground truth", *(f"M, channel {c}" for c in channels)]):
        axes[0, j].set_title(title, fontsize=8)
    for ax in axes.flat:  # no ticks or frame, but room for the row's name
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for i in range(n):
        axes[i, 0].set_ylabel(f"image {i}", fontsize=8)
    fig.suptitle(
        "GALD's local-distribution masks M, each channel over the image in grey", fontsize=9
    )
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes, fraction=0.02, pad=0.01)
        bar.set_label("LD mask M", fontsize=8)
        bar.ax.tick_params(labelsize=7)


def markdown(stats: dict[str, dict[str, float | int | None]]) -> str:
    def fmt(v: float | int | None) -> str:
        return "–" if v is None else f"{v:.4f}" if isinstance(v, float) else f"{v:,}"

    rows = [
        [name, fmt(s["pixels"]), fmt(s["mean"]), fmt(s.get("interior")), fmt(s.get("boundary"))]
        for name, s in stats.items()
    ]
    return markdown_table(["class", "pixels", "mean M", "interior", "boundary"], rows)


def recorded(ablation: dict[str, dict[str, float]]) -> dict[str, float]:
    """The mask ablation's values for a run's ``metrics.json`` (``--record``)."""
    miou = {how: metrics["mIoU"] for how, metrics in ablation.items()}
    return {
        **{f"ld_mask/mIoU_{how}": v for how, v in miou.items()},
        "ld_mask/spatial_mIoU_gain": miou["trained"] - miou["spatial_mean"],
        "ld_mask/input_mIoU_gain": miou["trained"] - miou["constant"],
    }


def ablation_markdown(ablation: dict[str, dict[str, float]], images: int) -> str:
    """The mask ablation as a table: mIoU and per-class IoU (%), one row per mask."""
    names = {
        "trained": "M as trained",
        "spatial_mean": "M averaged over positions",
        "constant": "M a constant per channel",
    }
    keys = list(next(iter(ablation.values())))
    head = ["mask", *(k.removeprefix("IoU/") for k in keys)]
    rows = [[names[how], *(f"{100 * m[k]:.2f}" for k in keys)] for how, m in ablation.items()]
    return f"Mask ablation over {images} images (IoU, %):\n\n" + markdown_table(head, rows)


@dataclass
class LDMasks:
    """GALD's LD masks of one model: per-class statistics, the mask ablation, the figure."""

    channels: list[int]
    images: int
    boundary: int
    classes: dict[str, dict[str, float | int | None]]
    ablation_images: int
    mask_ablation: dict[str, dict[str, float]]
    # The figure: images (uint8 RGB), labels, upsampled masks, the label palette.
    rgb: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    masks: np.ndarray = field(repr=False)
    palette: list[tuple[int, int, int]] = field(repr=False)

    def markdown(self) -> str:
        text = markdown(self.classes)
        if self.mask_ablation:
            text += "\n" + ablation_markdown(self.mask_ablation, self.ablation_images)
        return text

    def to_json(self) -> dict:
        return {
            "channels": self.channels,
            "images": self.images,
            "boundary": self.boundary,
            "classes": self.classes,
            "ablation_images": self.ablation_images,
            "mask_ablation": self.mask_ablation,
        }

    def summary(self) -> dict[str, float]:
        return recorded(self.mask_ablation) if self.mask_ablation else {}

    def plot(self, fig: Figure) -> None:
        draw(self.rgb, self.labels, self.masks, self.channels, self.palette, fig)


@dataclass
class Options:
    """Options of ``segbench ld-masks``.

    Args:
        images: images in the figure
        channels: mask channels in the figure (those that vary most over the images)
        channel_ids: these channels instead
        stats_images: images for the per-class table
        boundary: boundary width in pixels
        ablation_images: images for the mask ablation (0: skip it)
    """

    images: int = 4
    channels: int = 4
    channel_ids: list[int] | None = None
    stats_images: int = 50
    boundary: int = 2
    ablation_images: int = 200


class LDMasksTool(Tool[Options, LDMasks]):
    name = "ld-masks"
    record_prefix = "ld_mask"
    test_options = (
        "--images",
        "1",
        "--channels",
        "2",
        "--stats_images",
        "2",
        "--ablation_images",
        "2",
    )

    def not_applicable(self, net: torch.nn.Module) -> str | None:
        if not any(isinstance(m, LocalDistribution) for m in net.modules()):
            return "it has no local distribution module (GALD with ld: true has one)"
        return None

    def measure(self, model: LoadedModel, options: Options, common: Common) -> LDMasks:
        if common.record and options.ablation_images <= 0:
            raise ConfigError("ld-masks --record stores the mask ablation: --ablation_images > 0")
        task, dm = model.task, model.datamodule
        dataset = dm.unaugmented(common.split)
        count = max(options.images, options.stats_images, options.ablation_images)
        samples = [dataset[i] for i in range(min(count, len(dataset)))]  # type: ignore[arg-type]
        images = torch.stack([s["image"] for s in samples])
        labels = torch.stack([s["mask"] for s in samples])
        n_stats = min(options.stats_images, len(samples))
        n_ablation = min(options.ablation_images, len(samples))
        n = min(options.images, len(samples))
        masks = ld_masks(task.net, images[: max(n, n_stats)])

        class_names = list(task.class_names)
        stats = class_statistics(
            masks[:n_stats], labels[:n_stats], class_names, task.ignore_index, options.boundary
        )
        if options.channel_ids:
            channels = list(options.channel_ids)
        else:
            # The channels whose mask varies most across positions of the shown images.
            spread = masks[:n].flatten(2).std(-1).mean(0)
            channels = spread.argsort(descending=True)[: options.channels].tolist()
        up = F.interpolate(masks[:n], size=images.shape[-2:], mode="bilinear", align_corners=False)
        rgb = (denormalise(images[:n], dm) * 255).byte().permute(0, 2, 3, 1).numpy()
        ablation = (
            mask_ablation(
                task.net, images[:n_ablation], labels[:n_ablation], class_names, task.ignore_index
            )
            if n_ablation > 0
            else {}
        )
        log.info("LD masks: channels %s in the figure", channels)
        return LDMasks(
            channels=channels,
            images=n_stats,
            boundary=options.boundary,
            classes=stats,
            ablation_images=n_ablation,
            mask_ablation=ablation,
            rgb=rgb,
            labels=labels[:n].numpy(),
            masks=up.numpy(),
            palette=dm.colours(),
        )


TOOL = LDMasksTool(__doc__)


def main(argv: list[str]) -> None:
    TOOL.main(argv)
