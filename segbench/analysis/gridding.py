"""``segbench gridding``: how much gridding a backbone's activations show, level by level.

Gridding (DRN, Yu et al. CVPR 2017, section 4 and figure 3): a convolution dilated by ``d``
sums inputs ``d`` apart, so neighbouring outputs see disjoint inputs; when the input has more
high-frequency content than that sampling, the output takes the pattern of the ``d``-lattice.
Two measures, both per level of any segbench backbone (its ``feature_names`` and ``strides``):

* **Impulse lattice coherence** (the paper's figure 3, made a number): the response of each
  level to a single active input pixel on a zero (mean-colour) image, ``R(u) = ||F(x + a
  delta) - F(x)||_2`` over channels. A response that lies on one coset of the period-``p``
  lattice (the gridded response of stacked ``p``-dilated convolutions) has a spectrum that
  repeats with period ``1/p``: ``|R^(g)| = R^(0)`` at every frequency ``g`` that is a multiple
  of ``1/p``; a smooth response has ``|R^(g)| ~ 0`` there. The score is the mean of
  ``|R^(g)| / R^(0)`` over the ``p^2 - 1`` non-zero lattice frequencies, in percent (0: no
  lattice structure, 100: all of the response on one lattice coset; for a non-negative map
  ``|R^(g)| <= R^(0)``), averaged over impulse positions at the phases of the output stride.
  ``p`` should be the least common multiple of the dilations (4 for DRN: it covers 2 and 4).
  A response narrower than ``p`` pixels also scores high (a lone pixel lies on every lattice),
  so read early, strided levels with that in mind.
* **Spectral share of activations**: the share of a level's (per-channel mean-removed) power
  spectrum on real images that sits at those lattice frequencies, in percent. It also counts
  periodic image content (the synthetic scenes have 2-6 px textures), so it compares models on
  the same images, not levels or data sets.

Models (run directories, or a config for a fresh one), checkpoint, ``--split``, ``--out DIR`` and
``--record`` are shared by every tool (:mod:`segbench.analysis.tool`). Output: a markdown table
of the scores per level, a row per model; ``--out DIR`` writes ``gridding.{md,json}``, one figure
per model (activation norms of the first images and the impulse response per level) and, for
several models, ``gridding.png`` with all of them; ``--record`` stores the scores in each run so
that ``segbench report --metrics gridding/impulse`` shows them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from segbench.analysis.loading import LoadedModel, sample_images
from segbench.analysis.tool import Common, Tool
from segbench.errors import ConfigError
from segbench.models.backbones.base import Backbone
from segbench.tables import markdown_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("segbench")


# -- the measures -------------------------------------------------------------------------------
def lattice_mask(size: tuple[int, int], period: int) -> Tensor:
    """Boolean ``h x w`` mask of the FFT bins at non-zero multiples of ``1/period`` per axis
    (rounded to the nearest bin where ``period`` does not divide the size)."""
    h, w = size
    ys = {round(k * h / period) % h for k in range(period)}
    xs = {round(k * w / period) % w for k in range(period)}
    mask = torch.zeros(h, w, dtype=torch.bool)
    for y in ys:
        for x in xs:
            mask[y, x] = True
    mask[0, 0] = False
    return mask


def lattice_coherence(response: Tensor, period: int) -> Tensor:
    """Mean ``|R^(g)| / R^(0)`` over the non-zero lattice frequencies ``g`` of period ``period``,
    in percent, for non-negative maps ``R`` (``... x h x w``)."""
    spectrum = torch.fft.fft2(response.double()).abs()
    mask = lattice_mask((response.shape[-2], response.shape[-1]), period).to(response.device)
    if not mask.any():
        return torch.zeros(response.shape[:-2], dtype=torch.float64)
    dc = spectrum[..., 0, 0].clamp_min(torch.finfo(torch.float64).tiny)
    return 100.0 * spectrum[..., mask].mean(-1) / dc


def spectral_share(features: Tensor, period: int) -> Tensor:
    """Share (percent) of the per-channel mean-removed power of ``N x C x h x w`` features at the
    non-zero lattice frequencies of period ``period``, one value per image."""
    x = features.double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().square().sum(1)  # N x h x w
    mask = lattice_mask((x.shape[-2], x.shape[-1]), period).to(x.device)
    total = power.sum(dim=(-2, -1)).clamp_min(torch.finfo(torch.float64).tiny)
    # A part of a sum: at most the whole (a 1x1 level is all lattice), not 100 + rounding.
    return (100.0 * power[..., mask].sum(-1) / total).clamp(0.0, 100.0)


def find_backbone(net: nn.Module) -> Backbone:
    """The module whose ``forward`` returns the feature list described by ``feature_names`` and
    ``strides`` (a :class:`~segbench.models.backbones.base.Backbone`): ``net.backbone`` by
    convention, else the first such submodule."""
    candidates = [getattr(net, "backbone", None), *net.modules()]
    for m in candidates:
        if isinstance(m, Backbone):
            return m
    raise ConfigError(
        f"{type(net).__name__} has no backbone: no submodule is a "
        "segbench.models.backbones.base.Backbone (which says its levels' names and strides). An "
        "architecture's trunk is one (docs/how-to/add-architecture.md)"
    )


def impulse_positions(size: tuple[int, int], stride: int) -> list[tuple[int, int]]:
    """Pixels near the centre at the four phases ``{0, stride/2}^2`` of the output stride."""
    h, w = size
    cy, cx = (h // 2) - (h // 2) % stride, (w // 2) - (w // 2) % stride
    offsets = sorted({0, stride // 2})
    return [(cy + dy, cx + dx) for dy in offsets for dx in offsets]


@torch.no_grad()
def impulse_responses(
    backbone: nn.Module,
    size: tuple[int, int],
    position: tuple[int, int],
    amplitude: float = 1.0,
) -> list[Tensor]:
    """Per level, the ``h x w`` map ``||F(x + a delta_p) - F(x)||_2`` over channels, ``x`` = 0."""
    device = next(backbone.parameters()).device
    base = torch.zeros(1, 3, *size, device=device)
    pulse = base.clone()
    pulse[..., position[0], position[1]] = amplitude
    f0, f1 = backbone(base), backbone(pulse)
    return [(b - a).square().sum(1).sqrt()[0].cpu() for a, b in zip(f0, f1, strict=True)]


@dataclass
class GriddingResult:
    """Scores of one model: per level, impulse lattice coherence and spectral share (percent)."""

    name: str
    levels: list[str]
    strides: list[int]
    period: int
    impulse: list[float]
    impulse_p2: list[float]
    activation: list[float]
    # Figures: the impulse response and the activation norms of the images, per level.
    responses: list[Tensor] = field(default_factory=list, repr=False)
    activations: list[Tensor] = field(default_factory=list, repr=False)
    images: Tensor | None = field(default=None, repr=False)

    def summary(self) -> dict[str, float]:
        """The values recorded in a run's ``metrics.json`` under ``"analysis"``."""
        out = {
            "gridding/impulse": self.impulse[-1],
            "gridding/impulse_p2": self.impulse_p2[-1],
            "gridding/activation": self.activation[-1],
            "gridding/period": float(self.period),
        }
        for name, imp, act in zip(self.levels, self.impulse, self.activation, strict=True):
            out[f"gridding/impulse/{name}"] = imp
            out[f"gridding/activation/{name}"] = act
        return {k: v for k, v in out.items() if not math.isnan(v)}

    def markdown(self) -> str:
        return markdown([self])

    def to_json(self) -> dict:
        return {
            "levels": self.levels,
            "strides": self.strides,
            "period": self.period,
            "impulse": self.impulse,
            "impulse_p2": self.impulse_p2,
            "activation": [None if math.isnan(v) else v for v in self.activation],
        }

    def plot(self, fig: Figure) -> None:
        draw([self], fig, max_images=0 if self.images is None else len(self.images))


@torch.no_grad()
def measure(
    net: nn.Module,
    *,
    name: str,
    images: Tensor | None = None,
    input_size: tuple[int, int] = (256, 256),
    period: int = 4,
    amplitude: float = 1.0,
) -> GriddingResult:
    """Both measures for every level of ``net``'s backbone, in eval mode.

    Args:
        net: a segmentation network (or a backbone).
        name: label of the model in tables and figures.
        images: ``N x 3 x H x W`` normalised images for the activation measure (optional).
        input_size: size of the impulse image.
        period: lattice period ``p`` (the least common multiple of the dilations).
        amplitude: value of the active pixel (normalised units) on the zero image.
    """
    backbone = find_backbone(net)
    was_training = backbone.training
    backbone.eval()
    levels = list(backbone.feature_names)
    stride = max(backbone.strides)
    per_position = [
        impulse_responses(backbone, input_size, pos, amplitude)
        for pos in impulse_positions(input_size, stride)
    ]
    impulse = [
        float(torch.stack([lattice_coherence(r[i], period) for r in per_position]).mean())
        for i in range(len(levels))
    ]
    impulse_p2 = [
        float(torch.stack([lattice_coherence(r[i], 2) for r in per_position]).mean())
        for i in range(len(levels))
    ]
    activation = [float("nan")] * len(levels)
    activations: list[Tensor] = []
    if images is not None:
        device = next(backbone.parameters()).device
        feats = backbone(images.to(device))
        activation = [float(spectral_share(f, period).mean()) for f in feats]
        activations = [f.square().sum(1).sqrt().cpu() for f in feats]
    backbone.train(was_training)
    return GriddingResult(
        name=name,
        levels=levels,
        strides=list(backbone.strides),
        period=period,
        impulse=impulse,
        impulse_p2=impulse_p2,
        activation=activation,
        responses=per_position[0],
        activations=activations,
        images=images,
    )


# -- tables and figures -------------------------------------------------------------------------
def level_columns(results: list[GriddingResult]) -> list[str]:
    """Every level of the models, ordered by stride, then by first appearance."""
    order: dict[str, tuple[int, int]] = {}
    for r in results:
        for name, stride in zip(r.levels, r.strides, strict=True):
            order.setdefault(name, (stride, len(order)))
    return sorted(order, key=order.__getitem__)


def markdown(results: list[GriddingResult]) -> str:
    """One table per measure: a row per model, a column per level."""
    lines: list[str] = []
    for title, attr in (
        ("impulse lattice coherence (%), period {p}", "impulse"),
        ("impulse lattice coherence (%), period 2", "impulse_p2"),
        ("spectral share of activations at the lattice frequencies (%), period {p}", "activation"),
    ):
        levels = level_columns(results)
        lines.append(f"**{title.format(p=results[0].period)}**\n")
        rows = []
        for r in results:
            values = dict(zip(r.levels, getattr(r, attr), strict=True))
            rows.append(
                [
                    r.name,
                    *(
                        f"{values[lv]:.2f}" if lv in values and not math.isnan(values[lv]) else "–"
                        for lv in levels
                    ),
                ]
            )
        lines.append(markdown_table(["model", *levels], rows))
    return "\n".join(lines)


def crop_to_support(response: Tensor, fraction: float = 0.01, margin: int = 2) -> Tensor:
    """The box around the pixels above ``fraction`` of the maximum, plus ``margin``, at least
    9 x 9 (for display: a small response is lost in a large map)."""
    h, w = response.shape[-2:]
    ys, xs = torch.nonzero(response > fraction * response.max(), as_tuple=True)
    if len(ys) == 0:
        return response
    cy, cx = (int(ys.min()) + int(ys.max())) // 2, (int(xs.min()) + int(xs.max())) // 2
    half = max(
        4,
        (int(ys.max()) - int(ys.min())) // 2 + margin,
        (int(xs.max()) - int(xs.min())) // 2 + margin,
    )
    return response[
        max(0, cy - half) : min(h, cy + half + 1), max(0, cx - half) : min(w, cx + half + 1)
    ]


def _show(ax, image, title: str) -> None:
    ax.imshow(image, cmap="magma", interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def draw(results: list[GriddingResult], fig: Figure, max_images: int = 1) -> None:
    """Per model: a row of activation norms per image, then a row of impulse responses
    (square root, to show the weak off-lattice response; cropped to their support), one column
    per level."""
    rows: list[tuple[GriddingResult, str, int]] = []
    for r in results:
        n_img = 0 if r.images is None else min(max_images, r.images.shape[0])
        rows += [(r, "activation", i) for i in range(n_img)]
        rows.append((r, "impulse", 0))
    cols = 1 + max(len(r.levels) for r in results)
    fig.set_size_inches(1.6 * cols, 1.7 * len(rows))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for row, (r, kind, i) in zip(axes, rows, strict=True):
        for ax in row:
            ax.axis("off")
        row[0].axis("on")
        if kind == "activation" and r.images is not None:
            img = r.images[i].permute(1, 2, 0)
            img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-8)
            row[0].imshow(img.numpy())
            row[0].set_title(f"{r.name}\nimage {i}", fontsize=7)
            row[0].set_xticks([])
            row[0].set_yticks([])
            for j, level in enumerate(r.levels):
                row[j + 1].axis("on")
                _show(row[j + 1], r.activations[j][i].numpy(), f"{level} /{r.strides[j]}")
        else:
            row[0].axis("off")
            row[0].text(0.5, 0.5, f"{r.name}\nimpulse", ha="center", va="center", fontsize=7)
            for j, level in enumerate(r.levels):
                row[j + 1].axis("on")
                _show(
                    row[j + 1],
                    crop_to_support(r.responses[j]).sqrt().numpy(),
                    f"{level}: {r.impulse[j]:.1f}%",
                )
    fig.suptitle(
        f"gridding: activation norms and impulse responses (lattice coherence, period "
        f"{results[0].period}, in each impulse panel's title)\neach panel on its own colour "
        "scale, dark its minimum to bright its maximum; impulse responses square-rooted",
        fontsize=8,
    )


# -- the command --------------------------------------------------------------------------------
@dataclass
class Options:
    """Options of ``segbench gridding``.

    Args:
        period: lattice period p: the least common multiple of the dilations
        input_size: size (H, W) of the impulse image
        images: images for the activation measure (0: skip it)
        amplitude: value of the active pixel (normalised units)
    """

    period: int = 4
    input_size: tuple[int, int] = (256, 256)
    images: int = 2
    amplitude: float = 1.0


class Gridding(Tool[Options, GriddingResult]):
    name = "gridding"
    test_options = ("--input_size", "[32,32]", "--images", "1")

    def measure(self, model: LoadedModel, options: Options, common: Common) -> GriddingResult:
        images = (
            sample_images(model.datamodule, options.images, common.split)
            if options.images
            else None
        )
        result = measure(
            model.net,
            name=model.label,
            images=images,
            input_size=options.input_size,
            period=options.period,
            amplitude=options.amplitude,
        )
        return result

    def report(self, results: Sequence[tuple[str, GriddingResult]]) -> str:
        return markdown([r for _, r in results])

    def plot_together(self, results: Sequence[tuple[str, GriddingResult]], fig: Figure) -> None:
        draw([r for _, r in results], fig)


TOOL = Gridding(__doc__)


def main(argv: list[str]) -> None:
    TOOL.main(argv)
