"""Pictures of label maps: class colours, overlays with a legend, the confusion matrix.

Used by the callbacks (validation examples, ``segbench predict``'s overlays, the confusion
matrix of ``segbench validate`` / ``test``), by the analysis tools and by the notebooks, so a
figure looks the same wherever it is drawn. Figure functions draw on a matplotlib ``Figure`` (or
return one built without pyplot) and never choose a backend.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from segbench.data.base import SegmentationDataModule

#: Colours void (labels past the palette) may take, in order of preference: the first that is
#: :data:`VOID_DISTANCE` from every class colour (dark grey would pass for the synthetic scenes'
#: black birds and CamVid's dark olive pedestrians).
VOID_COLOURS = ((40, 40, 40), (255, 0, 255), (0, 255, 255), (255, 255, 0))
VOID_DISTANCE = 80.0


def denormalise(images: Tensor, dm: SegmentationDataModule) -> Tensor:
    """Normalised images (``N x 3 x H x W``) back to RGB in [0, 1] for display."""
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    return (images.float().cpu() * std + mean).clamp(0, 1)


def to_uint8(images: Tensor) -> Tensor:
    """RGB in [0, 1] -> uint8 (``N x 3 x H x W``)."""
    return (images * 255).round().byte()


def void_colour(palette: Sequence[tuple[int, int, int]]) -> tuple[int, int, int]:
    """The colour void is drawn in beside ``palette``: the first of :data:`VOID_COLOURS` at
    least :data:`VOID_DISTANCE` (RGB, Euclidean) from every class colour, else the farthest."""
    if not palette:
        return VOID_COLOURS[0]
    classes = np.asarray(palette, np.float64)

    def nearest(colour: tuple[int, int, int]) -> float:
        return float(np.linalg.norm(classes - np.asarray(colour, np.float64), axis=1).min())

    for colour in VOID_COLOURS:
        if nearest(colour) >= VOID_DISTANCE:
            return colour
    return max(VOID_COLOURS, key=nearest)


def colourise(labels: np.ndarray, palette: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """``H x W`` labels -> ``H x W x 3`` uint8 colours; labels past the palette (void) take
    :func:`void_colour`."""
    lut = np.full((256, 3), void_colour(palette), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[np.clip(labels, 0, 255).astype(np.int64)]


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    palette: Sequence[tuple[int, int, int]],
    names: Sequence[str],
    *,
    alpha: float = 0.5,
    legend: bool = True,
) -> Image.Image:
    """The image (``H x W x 3`` uint8) blended with its labels' colours (``alpha`` of the
    colour), with a legend of the classes present, largest first, to the right.

    The picture keeps the image's own size; the legend adds a column (and rows, if it has more
    classes than the image is tall).
    """
    blended = np.empty(image.shape, np.uint8)
    step = max(1, 2**20 // max(1, image.shape[1]))  # ~1 M pixels at a time: a large image's
    for top in range(0, image.shape[0], step):  # float copies would hold ~16 bytes a pixel
        rows = slice(top, top + step)
        blend = (1 - alpha) * image[rows].astype(np.float32) + alpha * colourise(
            labels[rows], palette
        )
        blended[rows] = blend.round().clip(0, 255).astype(np.uint8)
    picture = Image.fromarray(blended)
    if not legend:
        return picture
    counts = np.bincount(labels.ravel().clip(0, len(names)), minlength=len(names) + 1)
    present = [int(c) for c in np.argsort(-counts[: len(names)], kind="stable") if counts[c] > 0]
    font = ImageFont.load_default()
    row, box = 14, 10
    total = counts.sum() or 1
    texts = {c: f"{names[c]} {100 * counts[c] / total:.0f}%" for c in present}
    width = 8 + box + 6 + max((int(font.getlength(t)) for t in texts.values()), default=0) + 8
    height = max(image.shape[0], 6 + row * len(present))
    canvas = Image.new("RGB", (image.shape[1] + width, height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = image.shape[1] + 8
    for i, c in enumerate(present):
        y = 4 + i * row
        draw.rectangle([x, y, x + box, y + box], fill=tuple(palette[c]), outline=(0, 0, 0))
        draw.text((x + box + 6, y - 1), texts[c], fill=(0, 0, 0), font=font)
    return canvas


def confusion_figure(confusion: np.ndarray, names: Sequence[str], title: str = "") -> Figure:
    """The confusion matrix (rows: true class, columns: predicted), each row normalised to the
    class's pixels, with the class names on both axes."""
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, np.float64)
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    k = len(names)
    fig = Figure(figsize=(1.0 + 0.45 * k, 0.8 + 0.4 * k))
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            if share[i, j] >= 0.005:
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color=colour)  # fmt: skip
    ax.set_title(title or "share of each true class's pixels", fontsize=9)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the true class's pixels (row sums to 1)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return fig


def figure_writer(fig: Figure, fmt: str = "png") -> Callable[[BinaryIO], object]:
    """A ``write(file)`` that saves ``fig`` as ``fmt``, for :func:`segbench.rundir.atomic_write`
    and :func:`segbench.rundir.atomic_write_files`."""
    return lambda f: fig.savefig(f, format=fmt, dpi=120, bbox_inches="tight")


def drawing_writer(
    draw: Callable[[Figure], None], figsize: tuple[float, float], fmt: str = "png"
) -> Callable[[BinaryIO], object]:
    """A ``write(file)`` that draws a figure of its own (no pyplot state, no backend switch) and
    saves it: the drawing happens while the file is written, before it replaces anything."""
    from matplotlib.figure import Figure

    def write(f: BinaryIO) -> None:
        fig = Figure(figsize=figsize)
        draw(fig)
        figure_writer(fig, fmt)(f)

    return write


def saved_writer(fig: Figure, fmt: str = "png") -> Callable[[BinaryIO], object]:
    """A ``write(file)`` of ``fig`` saved now, into memory (:func:`figure_writer` saves when it
    writes): for a figure drawn inside a style or rc context that is gone when the file is
    written, or a figure closed before then."""
    buffer = io.BytesIO()
    figure_writer(fig, fmt)(buffer)
    data = buffer.getvalue()
    return lambda f: f.write(data)


#: The error map's colours: a correct pixel, a wrong one, a void one (not scored).
ERROR_COLOURS = {"correct": (225, 225, 225), "wrong": (215, 25, 28), "void": (40, 40, 40)}


def error_map(pred: np.ndarray, target: np.ndarray, ignore_index: int) -> np.ndarray:
    """``H x W x 3``: wrong pixels red, correct ones light grey, void ones dark grey."""
    out = np.empty((*target.shape, 3), np.uint8)
    out[...] = ERROR_COLOURS["correct"]
    out[pred != target] = ERROR_COLOURS["wrong"]
    out[target == ignore_index] = ERROR_COLOURS["void"]
    return out


def val_examples_figure(
    images: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    palette: Sequence[tuple[int, int, int]],
    names: Sequence[str],
    *,
    ignore_index: int = 255,
    row_labels: Sequence[str] | None = None,
    title: str = "",
    panel: int = 200,
) -> Image.Image:
    """Validation examples, one per row, in four labelled columns: the image, the ground truth,
    the prediction and the error map (wrong pixels red), each row named (``row_labels``) with its
    pixel accuracy, and a legend of every class's colour below.

    ``images`` are ``H x W x 3`` uint8 pictures, ``targets`` and ``preds`` their ``H x W``
    label maps. Each panel is ``panel`` pixels wide (label maps scaled without smoothing). Drawn
    with Pillow, in milliseconds: it is drawn at every validation.
    """
    font = ImageFont.load_default(size=13)
    small = ImageFont.load_default(size=11)
    gap, left, top = 6, 96, 24 + (22 if title else 0)
    columns = ("image", "ground truth", "prediction", "errors (red: wrong)")
    rows: list[list[Image.Image]] = []
    labels: list[str] = []
    for r, (image, target, pred) in enumerate(zip(images, targets, preds, strict=True)):
        h, w = target.shape
        size = (panel, max(1, round(panel * h / w)))
        pictures = (
            Image.fromarray(image).resize(size, Image.Resampling.BILINEAR),
            *(
                Image.fromarray(a).resize(size, Image.Resampling.NEAREST)
                for a in (
                    colourise(target, palette),
                    colourise(pred, palette),
                    error_map(pred, target, ignore_index),
                )
            ),
        )
        rows.append(list(pictures))
        valid = target != ignore_index
        acc = float((pred == target)[valid].mean()) if valid.any() else float("nan")
        name = row_labels[r] if row_labels else f"#{r}"
        labels.append(f"{name}\npixel acc {acc:.2f}")
    legend = [
        *((n, tuple(palette[i])) for i, n in enumerate(names)),
        ("void", void_colour(palette)),
    ]
    per_row = max(1, (4 * (panel + gap)) // 130)
    legend_rows = -(-len(legend) // per_row)
    height = top + sum(row[0].height + gap for row in rows) + 10 + 18 * legend_rows
    canvas = Image.new("RGB", (left + 4 * (panel + gap), height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((canvas.width // 2, 4), title, fill=(0, 0, 0), font=font, anchor="ma")
    for c, column in enumerate(columns):
        x = left + c * (panel + gap) + panel // 2
        draw.text((x, top - 18), column, fill=(0, 0, 0), font=font, anchor="ma")
    y = top
    for row, label in zip(rows, labels, strict=True):
        for c, picture in enumerate(row):
            x = left + c * (panel + gap)
            canvas.paste(picture, (x, y))
            draw.rectangle([x - 1, y - 1, x + picture.width, y + picture.height], outline=(0, 0, 0))
        draw.multiline_text((6, y + row[0].height // 2), label, fill=(0, 0, 0), font=small,
                            anchor="lm")  # fmt: skip
        y += row[0].height + gap
    y += 6
    for i, (name, colour) in enumerate(legend):
        x = left + (i % per_row) * 130
        yy = y + (i // per_row) * 18
        draw.rectangle([x, yy + 2, x + 12, yy + 14], fill=colour, outline=(0, 0, 0))
        draw.text((x + 18, yy + 1), name, fill=(0, 0, 0), font=small)
    return canvas


def figure_to_array(fig: Figure, dpi: int = 100) -> np.ndarray:
    """The figure rendered to ``H x W x 3`` uint8 (for the loggers' image panels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
