"""``segbench feature-norms [RUN_DIR ...] [--config FILE.yaml [overrides]] [--modules ...]``: the
scale (mean L2 norm) of a network's features, layer by layer.

ParseNet's observation (section 3.3): the features of different layers differ in scale, often by
orders of magnitude, so a naive concatenation is dominated by the largest. This tool measures it
on our networks: the mean over positions and images of the L2 norm (over channels) of each
tapped layer's features, as a markdown table and a bar plot on a log scale.

Tapped layers: every output of ``net.backbone`` when the backbone names them
(``feature_names``: ``pool1 .. pool5, fc7`` for VGG16), plus the output of each module named by
``--modules`` (dotted names inside the network, e.g. ``pool6`` for ParseNet's global feature or
``norms.fc7`` for a normalised one).

Images: the first ``--images`` of ``--split``, without augmentation. A trained run is
measured in eval mode (batch norm with its running statistics). A fresh network's running
statistics are still the initial ones, so by default its batch-norm layers use the batch's own
statistics, as in the first training step (``--bn`` overrides either choice). Dropout is off.
A network pads an image to a multiple of its stride (CamVid's 360 rows: 384 for FCN), so a map's
stride is read against the padded size the backbone saw, and the positions of the padding (past
``ceil(image / stride)``) are left out of the means.
``--out DIR`` writes ``feature-norms.{md,json,png}``; the rest of the command line is shared by
every tool (:mod:`segbench.analysis.tool`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from segbench.analysis.loading import LoadedModel, sample_images
from segbench.analysis.tool import Common, Tool
from segbench.errors import ConfigError
from segbench.tables import markdown_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class LayerNorm:
    """The feature norms of one tapped layer."""

    name: str
    channels: int
    size: tuple[int, int]
    stride: float
    mean: float
    std: float


@contextmanager
def batch_norm_mode(net: nn.Module, mode: Literal["running", "batch"]) -> Iterator[None]:
    """Eval mode, with batch-norm layers in training mode (batch statistics) if ``mode`` is
    ``"batch"``; restores the modules' modes and running statistics afterwards."""
    was = {m: m.training for m in net.modules()}
    saved = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "batches" in k}
    net.eval()
    if mode == "batch":
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    try:
        yield
    finally:
        for m, training in was.items():
            m.training = training
        if saved:
            net.load_state_dict(saved, strict=False)


def _as_maps(name: str, value: object) -> list[tuple[str, Tensor]]:
    if isinstance(value, Tensor):
        return [(name, value)]
    if isinstance(value, list | tuple):
        return [(f"{name}[{i}]", v) for i, v in enumerate(value) if isinstance(v, Tensor)]
    if isinstance(value, dict):
        return [(f"{name}[{k}]", v) for k, v in value.items() if isinstance(v, Tensor)]
    return []


def feature_norms(
    net: nn.Module,
    images: Tensor,
    *,
    modules: Sequence[str] = (),
    bn: Literal["running", "batch"] = "running",
    batch_size: int = 8,
) -> list[LayerNorm]:
    """Mean and std over positions (and images) of the channel-wise L2 norm of each tapped
    layer: the backbone's named outputs, then ``modules`` in the given order."""
    norms: dict[str, list[Tensor]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    strides: dict[str, float] = {}
    image = (int(images.shape[-2]), int(images.shape[-1]))
    # The size the backbone sees: the networks pad the image to a multiple of their stride
    # (bottom and right, segbench.models.base.pad_to_multiple), so a map's stride is that size
    # over the map's, and the rows and columns past ceil(image / stride) are the padding's.
    seen: list[tuple[int, int]] = [image]

    def record(name: str, value: object) -> None:
        for key, t in _as_maps(name, value):
            if t.dim() < 2:
                continue
            if t.dim() >= 4 and tuple(t.shape[-2:]) != image:
                stride = seen[0][0] / t.shape[-2]
                rows, cols = (
                    min(n, math.ceil(i * n / s))
                    for n, i, s in zip(t.shape[-2:], image, seen[0], strict=True)
                )
                t = t[..., :rows, :cols]
            else:
                stride = 1.0 if t.dim() >= 4 else float(image[0])
            strides.setdefault(key, stride)
            shapes.setdefault(key, tuple(t.shape))
            norms.setdefault(key, []).append(t.detach().float().norm(dim=1).flatten())

    hooks = []
    backbone = getattr(net, "backbone", None)
    names = getattr(backbone, "feature_names", None)
    if backbone is not None and names is not None:

        def backbone_hook(_m: nn.Module, _i: object, out: Sequence[Tensor]) -> None:
            for n, t in zip(names, out, strict=True):
                record(n, t)

        def backbone_input(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
            seen[0] = (int(args[0].shape[-2]), int(args[0].shape[-1]))

        hooks.append(backbone.register_forward_pre_hook(backbone_input))
        hooks.append(backbone.register_forward_hook(backbone_hook))
    named = dict(net.named_modules())
    for name in modules:
        if name not in named:
            raise ConfigError(f"no module {name!r} in {type(net).__name__}")
        hooks.append(named[name].register_forward_hook(lambda _m, _i, out, n=name: record(n, out)))
    if not hooks:
        raise ConfigError(
            f"{type(net).__name__} has no named backbone features (no submodule "
            "net.backbone is a segbench.models.backbones.base.Backbone): give --modules"
        )
    try:
        with batch_norm_mode(net, bn), torch.no_grad():
            for start in range(0, len(images), batch_size):
                net(images[start : start + batch_size])
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for key, values in norms.items():
        shape = shapes[key]
        size = (shape[2], shape[3]) if len(shape) >= 4 else (1, 1)
        flat = torch.cat(values)
        rows.append(
            LayerNorm(
                name=key,
                channels=shape[1],
                size=size,
                stride=strides[key],
                mean=float(flat.mean()),
                std=float(flat.std()) if flat.numel() > 1 else 0.0,
            )
        )
    return rows


@dataclass
class FeatureNorms:
    """The feature norms of one model's tapped layers."""

    title: str
    layers: list[LayerNorm]

    def markdown(self) -> str:
        smallest = min((r.mean for r in self.layers if r.mean > 0), default=1.0)
        lines = [
            f"Feature norms: {self.title}",
            "",
        ]
        header = ["layer", "channels", "map", "stride", "mean L2 norm", "std", "x smallest"]
        rows = [
            [
                r.name,
                r.channels,
                f"{r.size[0]}x{r.size[1]}",
                "global" if r.size == (1, 1) else f"{r.stride:g}",
                f"{r.mean:.4g}",
                f"{r.std:.3g}",
                f"{r.mean / smallest:.3g}",
            ]
            for r in self.layers
        ]
        return "\n".join(lines) + "\n" + markdown_table(header, rows)

    def to_json(self) -> dict:
        return {"title": self.title, "layers": [asdict(r) for r in self.layers]}

    def summary(self) -> dict[str, float]:
        """Each layer's mean norm, and the largest over the smallest (``--record``)."""
        out = {f"feature_norms/{r.name}": r.mean for r in self.layers}
        positive = [r.mean for r in self.layers if r.mean > 0]
        if positive:
            out["feature_norms/max_over_min"] = max(positive) / min(positive)
        return out

    def plot(self, fig: Figure) -> None:
        """A bar per layer, on a log scale."""
        fig.set_size_inches(1.0 * len(self.layers) + 2.5, 3.5)
        ax = fig.subplots()
        x = list(range(len(self.layers)))
        means = [max(r.mean, 1e-12) for r in self.layers]
        ax.bar(x, means, color="#4c72b0")
        ax.set_yscale("log")
        # plain numbers (0.5, 2, 300), not 5 x 10^-1; minor ones only where a decade is short
        plain = _plain_log_formatter()
        ax.yaxis.set_major_formatter(plain())
        ax.yaxis.set_minor_formatter(plain(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
        top, low = max(means, default=1.0), min(means, default=1.0)
        decades = max(math.log10(top / low), 1.0)
        ax.set_ylim(top=top * 10 ** (0.15 * decades))  # room for the value above the highest bar
        ax.set_xticks(x, [r.name for r in self.layers], rotation=30, ha="right")
        ax.set_ylabel("mean L2 norm over channels")
        ax.set_title(self.title, fontsize=9)
        for i, m in enumerate(means):
            ax.text(i, m, f"{m:.3g}" if m < 1000 else f"{m:,.0f}", ha="center", va="bottom",
                    fontsize=8)  # fmt: skip


def _plain_log_formatter() -> type:
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):
        """The ticks :class:`LogFormatter` labels, written as plain numbers (0.01, 3, 2000)."""

        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:g}" if super().__call__(x, pos) else ""

    return Plain


@dataclass
class Options:
    """Options of ``segbench feature-norms``.

    Args:
        modules: dotted names of further modules to tap (e.g. pool6, norms.fc7)
        images: images to average over
        batch_size: images per forward pass
        bn: batch-norm statistics: auto = running for a trained run, batch for a fresh network
    """

    modules: list[str] = field(default_factory=list)
    images: int = 16
    batch_size: int = 8
    bn: Literal["auto", "running", "batch"] = "auto"


class FeatureNormsTool(Tool[Options, FeatureNorms]):
    name = "feature-norms"
    test_options = ("--images", "2")

    def measure(self, model: LoadedModel, options: Options, common: Common) -> FeatureNorms:
        net = model.net
        bn = options.bn if options.bn != "auto" else ("running" if model.trained else "batch")
        images = sample_images(model.datamodule, options.images, common.split)
        rows = feature_norms(
            net, images, modules=options.modules, bn=bn, batch_size=options.batch_size
        )
        title = f"{model.name}; {len(images)} {common.split} images"
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
            title += f"; batch norm: {bn} statistics"
        return FeatureNorms(title, rows)


TOOL = FeatureNormsTool(__doc__)


def main(argv: list[str]) -> None:
    TOOL.main(argv)
