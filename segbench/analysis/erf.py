"""``segbench erf [RUN_DIR ...] [--config FILE.yaml [overrides]] [options]``: empirical vs
theoretical receptive field of one output unit, for any segbench model.

**Empirical** (ParseNet section 3.1's experiment): slide a ``--patch`` x ``--patch`` window over
the image with step ``--stride``, replace the window by Gaussian noise (``--noise`` times the
data's standard deviation: the images are normalised, so 1.0 is image-like contrast), and record
how much the chosen unit's output changes: the L2 norm of the change of its logit vector
(``--measure score``), or whether its predicted class flips (``--measure prediction``). Each
pixel's heat is the mean change over the windows that cover it, the ``--draws`` noise draws and
the ``--images`` validation images. The empirical field is the set of pixels whose heat is at
least ``--threshold`` times the maximum; its size is reported as an area (and the side of the
square of that area) and a bounding box.

**Theoretical**: the set of input pixels the unit depends on at all, read from the support of
the gradient of the unit with respect to the input. The gradient of the trained network would
underestimate it (ReLUs that happen to be off, max-pooling that routes the gradient to one input
of each window, zero-initialised classifiers), so it is taken on a structural copy: every
parameter set to a positive value (scaled by ``1/fan-in``), batch-norm statistics reset, max
pooling replaced by average pooling of the same geometry, in double precision, on positive
random inputs. Then no unit is ever off and nothing cancels, and the support is exactly the
pixels connected to the unit through the network's graph: for a conv/pool stack it is the
analytic field (the test suite checks a small stack against the textbook recurrence and VGG16's
fc7 against its well-known 404 pixels); for a network with global pooling it is the whole image.
This is generic (it needs no description of the layers) and exact, where an analytic
computation would have to know every architecture's wiring. Two numbers come out: the support
inside the image (what the unit can see of this image), and its unclipped extent on a larger
``--canvas`` with the unit at the centre (``global`` if it reaches the canvas's border).

``--layer`` measures a module's output instead of the logits (a dotted module name such as
``backbone.fc7``; the unit's pixel maps to the cell at the same relative position), e.g. for a
fresh network whose zero-initialised classifier makes the logits constant.

Prints a markdown table; ``--out DIR`` writes it to ``erf.md`` with ``erf.json`` and ``erf.png``
(the first image with the unit, and the heat map with the empirical field's outline and the
theoretical support's bounding box). Models, checkpoint, split, output and ``--record``: see
:mod:`segbench.analysis.tool`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn
from tqdm import tqdm  # type: ignore[import-untyped]

from segbench.analysis.loading import LoadedModel, denormalise, sample_images
from segbench.analysis.tool import Common, Tool
from segbench.errors import ConfigError, listed
from segbench.numerics import usable_device
from segbench.tables import markdown_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Measure = Literal["score", "prediction"]


# -- reading one unit
def unit_reader(net: nn.Module, layer: str = "out") -> Callable[[Tensor, tuple[int, int]], Tensor]:
    """A function ``(images N x 3 x H x W, (y, x)) -> N x C``: the output vector of the unit at
    pixel ``(y, x)``, from the logits (``layer="out"``) or from a module's output map (the cell at
    the same relative position)."""
    if layer == "out":

        def read_out(x: Tensor, unit: tuple[int, int]) -> Tensor:
            return net(x)["out"][:, :, unit[0], unit[1]]

        return read_out
    modules = dict(net.named_modules())
    if layer not in modules:
        names = listed([n for n in modules if n and n.count(".") < 2], 30)
        raise ConfigError(f"no module {layer!r} in {type(net).__name__} (it has: out, {names})")

    def read_layer(x: Tensor, unit: tuple[int, int]) -> Tensor:
        captured: list[Tensor] = []
        hook = modules[layer].register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            net(x)
        finally:
            hook.remove()
        if not captured or not isinstance(captured[0], Tensor) or captured[0].dim() != 4:
            raise ConfigError(f"module {layer!r} does not output an N x C x h x w tensor")
        fmap = captured[0]
        h, w = fmap.shape[-2:]
        cy = min(h - 1, unit[0] * h // x.shape[-2])
        cx = min(w - 1, unit[1] * w // x.shape[-1])
        return fmap[:, :, cy, cx]

    return read_layer


# -- theoretical field
def structural_copy(net: nn.Module, seed: int = 0) -> nn.Module:
    """A double-precision copy of ``net`` whose gradient support is its connectivity: positive
    parameters (weights ~ U(0.5, 1.5) / fan-in, vectors ~ U(0.5, 1.5)), batch-norm statistics
    reset, max pooling replaced by average pooling over the same windows, eval mode."""
    net = copy.deepcopy(net).double().eval()
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                if child.dilation not in (1, (1, 1)):
                    raise NotImplementedError("dilated max pooling")
                pool = nn.AvgPool2d(
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    ceil_mode=child.ceil_mode,
                    count_include_pad=True,
                )
                setattr(parent, name, pool)
            elif isinstance(child, nn.AdaptiveMaxPool2d):
                setattr(parent, name, nn.AdaptiveAvgPool2d(child.output_size))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            values = torch.empty(p.shape, dtype=p.dtype).uniform_(0.5, 1.5, generator=g)
            if p.dim() > 1:
                values /= p[0].numel()
            p.copy_(values)
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
    return net


def theoretical_support(
    net: nn.Module,
    size: tuple[int, int],
    unit: tuple[int, int],
    *,
    layer: str = "out",
    draws: int = 2,
    seed: int = 0,
) -> Tensor:
    """``H x W`` boolean mask of the input pixels the unit at ``unit`` depends on."""
    probe = structural_copy(net, seed)
    read = unit_reader(probe, layer)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(draws, 3, *size, generator=g, dtype=torch.float64).add_(0.1)
    x = x.to(_device_of(net)).requires_grad_(True)
    read(x, unit).sum().backward()
    assert x.grad is not None
    return (x.grad.abs().sum((0, 1)) > 0).cpu()


def _device_of(net: nn.Module) -> torch.device:
    """The device of ``net``'s parameters (the CPU for a network without any)."""
    return next((p.device for p in net.parameters()), torch.device("cpu"))


def bbox(mask: Tensor) -> tuple[int, int, int, int] | None:
    """``(top, left, height, width)`` of the ``True`` pixels, ``None`` if there are none."""
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if rows.numel() == 0:
        return None
    top, left = int(rows[0]), int(cols[0])
    return top, left, int(rows[-1]) - top + 1, int(cols[-1]) - left + 1


def unclipped_extent(
    net: nn.Module, canvas: int, *, layer: str = "out", stride: int = 32
) -> tuple[int, int] | None:
    """Height and width of the theoretical field of the unit at the centre of a ``canvas`` x
    ``canvas`` input; ``None`` if it reaches the canvas's border (global, or larger than it)."""
    canvas = max(stride, canvas // stride * stride)
    centre = (canvas // 2, canvas // 2)
    mask = theoretical_support(net, (canvas, canvas), centre, layer=layer, draws=1)
    box = bbox(mask)
    if box is None:
        return (0, 0)
    top, left, h, w = box
    if top == 0 or left == 0 or top + h == canvas or left + w == canvas:
        return None
    return h, w


# -- empirical field
def window_starts(length: int, patch: int, stride: int) -> list[int]:
    """Window positions along one axis, the last one flush with the border."""
    starts = list(range(0, max(1, length - patch + 1), stride))
    if starts[-1] + patch < length:
        starts.append(length - patch)
    return starts


def empirical_heat(
    net: nn.Module,
    images: Tensor,
    unit: tuple[int, int],
    *,
    layer: str = "out",
    patch: int = 8,
    stride: int = 8,
    noise: float = 1.0,
    draws: int = 1,
    measure: Measure = "score",
    batch_size: int = 64,
    seed: int = 0,
) -> Tensor:
    """``H x W`` mean change of the unit when a window covering each pixel is replaced by noise.

    The network runs on its parameters' device; the noise is drawn on the CPU from ``seed``, so
    every device perturbs the same windows with the same values."""
    read = unit_reader(net, layer)
    device = _device_of(net)
    H, W = images.shape[-2:]
    windows = [
        (r, c) for r in window_starts(H, patch, stride) for c in window_starts(W, patch, stride)
    ]
    heat = torch.zeros(H, W, dtype=torch.float64)
    cover = torch.zeros(H, W, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    batches = len(images) * draws * -(-len(windows) // batch_size)
    # A full CamVid frame at the defaults is minutes of forward passes on a CPU: a bar on a
    # terminal (none in a log or a test: disable=None).
    progress = tqdm(total=batches, desc="erf: perturbed windows", unit="batch", disable=None)
    with torch.no_grad(), progress:
        for image in images.to(device):
            clean = read(image[None], unit)[0]
            for _ in range(draws):
                for start in range(0, len(windows), batch_size):
                    chunk = windows[start : start + batch_size]
                    x = image.expand(len(chunk), -1, -1, -1).clone()
                    for i, (r, c) in enumerate(chunk):
                        x[i, :, r : r + patch, c : c + patch] = noise * torch.randn(
                            3, min(patch, H - r), min(patch, W - c), generator=g
                        ).to(device)
                    out = read(x, unit)
                    if measure == "score":
                        change = (out - clean).double().norm(dim=1).cpu()
                    else:
                        change = (out.argmax(1) != clean.argmax()).double().cpu()
                    for i, (r, c) in enumerate(chunk):
                        heat[r : r + patch, c : c + patch] += change[i]
                        cover[r : r + patch, c : c + patch] += 1
                    progress.update(1)
    return heat / cover.clamp(min=1)


# -- the result
@dataclass
class FieldSize:
    """Size of a set of pixels inside the image."""

    area: int
    fraction: float
    side: float
    bbox: tuple[int, int, int, int] | None

    @classmethod
    def of(cls, mask: Tensor) -> FieldSize:
        area = int(mask.sum())
        return cls(area, area / mask.numel(), math.sqrt(area), bbox(mask))

    def box_text(self) -> str:
        return f"{self.bbox[2]}x{self.bbox[3]}" if self.bbox else "–"


@dataclass
class ReceptiveField:
    model: str
    layer: str
    measure: str
    image_size: tuple[int, int]
    unit: tuple[int, int]
    images: int
    patch: int
    stride: int
    threshold: float
    empirical: FieldSize
    #: Pixels with any measurable change (> 1e-3 of the maximum): the dependency seen by noise.
    measurable: FieldSize
    theoretical: FieldSize
    #: Unclipped theoretical extent (height, width) on the canvas; ``None``: global.
    theoretical_extent: tuple[int, int] | None
    canvas: int
    heat: Tensor = field(repr=False)
    support: Tensor = field(repr=False)
    #: The first image (RGB in [0, 1], ``3 x H x W``) for the figure.
    image: Tensor | None = field(default=None, repr=False)

    @property
    def empirical_mask(self) -> Tensor:
        return self.heat >= self.threshold * self.heat.max()

    def extent_text(self) -> str:
        if self.canvas == 0:
            return "not measured"
        if self.theoretical_extent is None:
            return f"global (reaches the border of a {self.canvas}x{self.canvas} canvas)"
        return f"{self.theoretical_extent[0]}x{self.theoretical_extent[1]}"

    def markdown(self) -> str:
        H, W = self.image_size
        e, m, t = self.empirical, self.measurable, self.theoretical
        rows = [
            ("model", self.model),
            ("unit", f"{self.layer} at pixel (y={self.unit[0]}, x={self.unit[1]}) of {H}x{W}"),
            (
                "perturbation",
                f"{self.patch}x{self.patch} noise windows, step {self.stride}, "
                f"{self.images} images, measure: {self.measure}",
            ),
            (
                f"empirical field (heat >= {self.threshold:g} x max)",
                f"{e.area} px = {100 * e.fraction:.1f}% of the image, side {e.side:.0f} px "
                f"(bbox {e.box_text()})",
            ),
            (
                "measurable change (heat > 1e-3 x max)",
                f"{m.area} px = {100 * m.fraction:.1f}% (bbox {m.box_text()})",
            ),
            (
                "theoretical field inside the image",
                f"{t.area} px = {100 * t.fraction:.1f}% (bbox {t.box_text()})",
            ),
            ("theoretical field, unclipped", self.extent_text()),
            ("empirical / theoretical area", f"{e.area / max(t.area, 1):.3f}"),
        ]
        return markdown_table(["", ""], rows)

    def to_json(self) -> dict:
        d = asdict(self)
        for tensor in ("heat", "support", "image"):
            d.pop(tensor)
        d["empirical_over_theoretical"] = self.empirical.area / max(self.theoretical.area, 1)
        return d

    def summary(self) -> dict[str, float]:
        """The field sizes as fractions of the image (``--record``)."""
        return {
            "erf/empirical_fraction": self.empirical.fraction,
            "erf/empirical_side": self.empirical.side,
            "erf/theoretical_fraction": self.theoretical.fraction,
            "erf/empirical_over_theoretical": self.empirical.area / max(self.theoretical.area, 1),
        }

    def plot(self, fig: Figure) -> None:
        """The image with the unit, and the heat map with the empirical field's outline (white)
        and the theoretical support's bounding box (dashed)."""
        from matplotlib.patches import Rectangle

        ax_img, ax_heat = fig.subplots(1, 2)
        y, x = self.unit
        if self.image is not None:
            ax_img.imshow(self.image.permute(1, 2, 0).numpy())
        ax_img.set_title("image (first of the set) and unit", fontsize=9)
        im = ax_heat.imshow(self.heat.numpy(), cmap="inferno")
        ax_heat.contour(self.empirical_mask.numpy().astype(float), levels=[0.5], colors="white")
        if self.theoretical.bbox is not None:
            top, left, h, w = self.theoretical.bbox
            ax_heat.add_patch(
                Rectangle((left - 0.5, top - 0.5), w, h, fill=False, ls="--", ec="cyan", lw=1.5)
            )
        ax_heat.set_title(
            f"{self.model}\nERF {100 * self.empirical.fraction:.1f}% of the image "
            f"(side {self.empirical.side:.0f} px), theoretical "
            f"{100 * self.theoretical.fraction:.0f}% "
            f"(unclipped {self.extent_text().split(' (')[0]})",
            fontsize=8,
        )
        for ax in (ax_img, ax_heat):
            ax.plot([x], [y], marker="+", color="lime", ms=12, mew=2)
            ax.set_xticks([])
            ax.set_yticks([])
        label = f"mean change ({self.measure})"
        # A colour bar as tall as the heat map, beside it: one taking the axes' whole cell
        # (fig.colorbar(ax=...)) rose above a landscape map (CamVid's 360 x 480) into its title.
        cax = ax_heat.inset_axes((1.04, 0.0, 0.045, 1.0))
        fig.colorbar(im, cax=cax, label=label)


def receptive_field(
    net: nn.Module,
    images: Tensor,
    unit: tuple[int, int] | None = None,
    *,
    layer: str = "out",
    patch: int = 8,
    stride: int = 8,
    noise: float = 1.0,
    draws: int = 1,
    measure: Measure = "score",
    threshold: float = 0.1,
    canvas: int = 512,
    batch_size: int = 64,
    seed: int = 0,
    model: str = "",
) -> ReceptiveField:
    """Empirical and theoretical receptive field of one unit (default: the image centre)."""
    if measure == "prediction" and layer != "out":
        raise ConfigError("--measure prediction needs the logits (--layer out)")
    H, W = images.shape[-2:]
    unit = unit or (H // 2, W // 2)
    if not (0 <= unit[0] < H and 0 <= unit[1] < W):
        raise ConfigError(f"unit {unit} is outside the {H}x{W} image")
    was_training = net.training
    net.eval()
    try:
        heat = empirical_heat(
            net,
            images,
            unit,
            layer=layer,
            patch=patch,
            stride=stride,
            noise=noise,
            draws=draws,
            measure=measure,
            batch_size=batch_size,
            seed=seed,
        )
        support = theoretical_support(net, (H, W), unit, layer=layer, seed=seed)
        extent = unclipped_extent(net, canvas, layer=layer) if canvas else None
    finally:
        net.train(was_training)
    if not heat.max() > 0 and measure == "prediction":
        raise ConfigError(
            "no noise window flipped the unit's predicted class: the empirical field is empty "
            "at this unit. Try --measure score, more --images or a larger --noise."
        )
    if not heat.max() > 0:
        raise ConfigError(
            f"the unit's {layer!r} output never changes: the network ignores its input there "
            "(a fresh network's zero-initialised classifier?). Use a trained run, or --layer "
            "with a module of the trunk (e.g. backbone.fc7)."
        )
    return ReceptiveField(
        model=model or type(net).__name__,
        layer=layer,
        measure=measure,
        image_size=(H, W),
        unit=unit,
        images=len(images),
        patch=patch,
        stride=stride,
        threshold=threshold,
        empirical=FieldSize.of(heat >= threshold * heat.max()),
        measurable=FieldSize.of(heat > 1e-3 * heat.max()),
        theoretical=FieldSize.of(support),
        theoretical_extent=extent,
        canvas=canvas,
        heat=heat,
        support=support,
    )


@dataclass
class Options:
    """Options of ``segbench erf``.

    Args:
        unit: the unit's pixel (y, x); default: the centre
        layer: 'out' (the logits) or a dotted module name such as backbone.fc7
        images: images to average over
        patch: side of the noise window (pixels)
        stride: step between windows (pixels)
        noise: noise std in normalised units (1.0: image-like contrast)
        draws: noise draws per window
        measure: the change of the unit's logit vector (score) or of its predicted class
        threshold: the empirical field is heat >= threshold x max
        canvas: side of the canvas for the unclipped theoretical field (0: skip)
        batch_size: perturbed images per forward pass
        seed: seed of the noise and of the structural copy
        device: where the network runs (cpu, cuda, cuda:1, ...); the noise is drawn on the CPU,
            so a field measured on a GPU differs from the CPU's by rounding alone
    """

    unit: tuple[int, int] | None = None
    layer: str = "out"
    images: int = 4
    patch: int = 8
    stride: int = 8
    noise: float = 1.0
    draws: int = 1
    measure: Measure = "score"
    threshold: float = 0.1
    canvas: int = 512
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for key in ("images", "patch", "stride", "draws", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key} must be at least 1, got {getattr(self, key)}")
        usable_device(self.device)


class Erf(Tool[Options, ReceptiveField]):
    name = "erf"
    test_options = ("--images", "1", "--patch", "16", "--stride", "16", "--canvas", "0")
    figsize = (8.5, 4.0)

    def measure(self, model: LoadedModel, options: Options, common: Common) -> ReceptiveField:
        images = sample_images(model.datamodule, options.images, common.split)
        net = model.net.to(options.device)
        rf = receptive_field(
            net,
            images,
            options.unit,
            layer=options.layer,
            patch=options.patch,
            stride=options.stride,
            noise=options.noise,
            draws=options.draws,
            measure=options.measure,
            threshold=options.threshold,
            canvas=options.canvas,
            batch_size=options.batch_size,
            seed=options.seed,
            model=model.name,
        )
        rf.image = denormalise(images[:1], model.datamodule)[0]
        return rf


TOOL = Erf(__doc__)


def main(argv: list[str]) -> None:
    TOOL.main(argv)
