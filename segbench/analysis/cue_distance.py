"""``segbench cue-distance --config FILE.yaml [overrides] [--cues boat=water,sand ...]``: how far
the pixels of a context class lie from the scene's cue that tells them apart.

ParseNet's claim is that global context fixes classes that only the scene disambiguates. An
experiment can show it only if the baseline cannot already see the cue: its empirical receptive
field (``segbench erf``) must cover well under the distance from such a pixel to the nearest
pixel of the cue. This tool measures that distance on the label maps of ``--split``: for each
context class, the Euclidean distance (px) from each of its pixels to the nearest pixel of its cue
classes in the same image (``scipy.ndimage.distance_transform_edt``), as percentiles and as the
share of pixels farther than each of ``--radii``. An image with the class and none of its cue
counts as farther than every radius (its cue is nowhere to be seen).

The cues come from ``--cues CLASS=CUE,CUE ...`` or, by default, from the data module's
``context_cues`` (the synthetic scenes: boats by water and sand, cars by road and building). Only
the data module of the config (or run) is used; the rest of the command line is shared by every
tool (:mod:`segbench.analysis.tool`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from segbench.analysis.loading import LoadedModel
from segbench.analysis.tool import Common, Tool
from segbench.analysis.upper_bound import read_masks
from segbench.errors import ConfigError
from segbench.tables import markdown_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PERCENTILES = (10, 50, 90)


@dataclass
class ClassDistances:
    """The distances of one context class's pixels to its cue."""

    name: str
    cues: list[str]
    pixels: int
    images: int
    images_without_cue: int
    percentiles: dict[str, float]
    beyond: dict[str, float]
    #: Distances of a sample of the pixels (px; ``inf``: no cue in the image), for the plot.
    sample: list[float] = field(default_factory=list, repr=False)


@dataclass
class CueDistance:
    """Every context class's distances, with the images' size."""

    classes: list[ClassDistances]
    image_size: tuple[int, int]
    images: int
    split: str
    radii: list[int]

    def markdown(self) -> str:
        header = [
            "class",
            "cue",
            "pixels",
            "images (without cue)",
            *(f"p{p} (px)" for p in PERCENTILES),
            *(f"> {r} px" for r in self.radii),
        ]
        rows = [
            [
                c.name,
                ", ".join(c.cues),
                c.pixels,
                f"{c.images} ({c.images_without_cue})",
                *(_px(c.percentiles[f"p{p}"]) for p in PERCENTILES),
                *(f"{100 * c.beyond[str(r)]:.1f}%" for r in self.radii),
            ]
            for c in self.classes
        ]
        lines = [markdown_table(header, rows).rstrip("\n")]
        h, w = self.image_size
        lines.append(
            f"\nDistance from each pixel of the class to the nearest pixel of its cue classes in "
            f"the same image, over {self.images} {self.split} label maps of {h} x {w} "
            f"(diagonal {math.hypot(h, w):.0f} px); '> r px': the share of the class's pixels "
            "farther than r (an image without its cue counts as farther)."
        )
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "images": self.images,
            "split": self.split,
            "radii": self.radii,
            "classes": [{k: v for k, v in vars(c).items() if k != "sample"} for c in self.classes],
        }

    def summary(self) -> dict[str, float]:
        """Per class: its pixels, and (when it has any) the median distance when finite and
        the share beyond each radius."""
        out: dict[str, float] = {}
        for c in self.classes:
            out[f"cue_distance/{c.name}/pixels"] = float(c.pixels)
            if not c.pixels:
                continue
            if math.isfinite(c.percentiles["p50"]):
                out[f"cue_distance/{c.name}/p50"] = c.percentiles["p50"]
            for r in self.radii:
                out[f"cue_distance/{c.name}/beyond{r}"] = c.beyond[str(r)]
        return out

    def plot(self, fig: Figure) -> None:
        """The cumulative share of each class's pixels within a distance of its cue."""
        fig.set_size_inches(6, 4)
        ax = fig.subplots()
        for c in self.classes:
            d = np.sort(np.asarray(c.sample, dtype=np.float64))
            if not len(d):
                continue
            finite = d[np.isfinite(d)]
            ax.plot(finite, np.arange(1, len(finite) + 1) / len(d), label=f"{c.name} (cue: "
                    f"{', '.join(c.cues)})")  # fmt: skip
        for i, r in enumerate(self.radii):
            ax.axvline(r, color="grey", lw=0.6, ls=":", label="radii (--radii)" if i == 0 else None)
        ax.set_xlabel("distance to the nearest cue pixel (px)")
        ax.set_ylabel("share of the class's pixels within it")
        ax.set_ylim(0, 1)
        ax.set_title(f"cue distance, {self.split}, {self.image_size[0]} x {self.image_size[1]}")
        ax.grid(alpha=0.3)
        # beside the axes: the curves end at 1 along the top, where a legend inside sat on them
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)


def _px(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


def cue_distances(
    masks: list[torch.Tensor],
    cues: dict[int, list[int]],
) -> dict[int, tuple[np.ndarray, int, int]]:
    """For each class index in ``cues``: ``(distances of its pixels, images with it, images with
    it and none of its cue)``; a pixel of an image without its cue has distance ``inf``."""
    found: dict[int, list[np.ndarray]] = {k: [] for k in cues}
    images = dict.fromkeys(cues, 0)
    without = dict.fromkeys(cues, 0)
    for mask in masks:
        label = mask.numpy()
        for k, cue in cues.items():
            where = label == k
            if not where.any():
                continue
            images[k] += 1
            cue_mask = np.isin(label, cue)
            if not cue_mask.any():
                without[k] += 1
                found[k].append(np.full(int(where.sum()), np.inf))
                continue
            found[k].append(distance_transform_edt(~cue_mask)[where])
    return {
        k: (np.concatenate(v) if v else np.zeros(0), images[k], without[k])
        for k, v in found.items()
    }


def cue_pairs(items: list[str]) -> dict[str, list[str]]:
    """``{class: [cue, ...]}`` from ``--cues`` items ``CLASS=CUE,CUE``. The command line splits a
    list item at its commas (``--cues boat=water,sand`` arrives as ``["boat=water", "sand"]``),
    so an item without ``=`` is one more cue of the item before it."""
    pairs: dict[str, list[str]] = {}
    last: list[str] | None = None
    for item in items:
        for part in item.split(","):
            name, eq, cues = part.partition("=")
            if eq and name and cues:
                last = pairs.setdefault(name.strip(), [])
                last.append(cues.strip())
            elif not eq and name.strip() and last is not None:
                last.append(name.strip())
            else:
                raise ConfigError(f"--cues {item!r}: expected CLASS=CUE[,CUE...]")
    return pairs


@dataclass
class Options:
    """Options of ``segbench cue-distance``.

    Args:
        cues: CLASS=CUE,CUE... pairs (class names of the data set); default: the data module's
            context_cues
        radii: report the share of each class's pixels farther than each radius (px), e.g.
            half the side of the baseline's empirical receptive field
        max_images: at most this many label maps
        num_workers: loader workers (default: the data module's)
    """

    cues: list[str] | None = None
    radii: list[int] = field(default_factory=lambda: [16, 32, 64])
    max_images: int | None = None
    num_workers: int | None = None


class CueDistanceTool(Tool[Options, CueDistance]):
    name = "cue-distance"
    uses_network = False
    test_options = ("--max_images", "3", "--num_workers", "0")

    def validate(self, options: Options, common: Common) -> None:
        cue_pairs(options.cues or [])
        if any(r <= 0 for r in options.radii):
            raise ConfigError(f"--radii {options.radii}: every radius must be positive")

    def measure(self, model: LoadedModel, options: Options, common: Common) -> CueDistance:
        dm = model.datamodule
        names = list(dm.class_names)
        if options.cues:
            pairs = cue_pairs(options.cues)
        else:
            pairs = {k: list(v) for k, v in getattr(dm, "context_cues", {}).items()}
        if not pairs:
            raise ConfigError(
                f"cue-distance: {type(dm).__name__} declares no context_cues; give --cues "
                "CLASS=CUE,CUE (e.g. --cues car=road)"
            )
        for name in [n for k, v in pairs.items() for n in (k, *v)]:
            if name not in names:
                raise ConfigError(f"--cues: no class '{name}' (classes: {', '.join(names)})")
        cues = {names.index(k): [names.index(c) for c in v] for k, v in pairs.items()}
        masks = read_masks(
            dm, common.split, max_images=options.max_images, num_workers=options.num_workers
        )
        rng = np.random.default_rng(0)
        classes = []
        for k, (d, n_img, n_without) in cue_distances(masks, cues).items():
            sample = d if len(d) <= 20000 else rng.choice(d, 20000, replace=False)
            nan = float("nan")
            classes.append(
                ClassDistances(
                    name=names[k],
                    cues=pairs[names[k]],
                    pixels=len(d),
                    images=n_img,
                    images_without_cue=n_without,
                    percentiles={
                        f"p{p}": float(np.percentile(d, p)) if len(d) else nan for p in PERCENTILES
                    },
                    beyond={
                        str(r): float((d > r).mean()) if len(d) else nan for r in options.radii
                    },
                    sample=[float(x) for x in sample],
                )
            )
        size = (masks[0].shape[-2], masks[0].shape[-1]) if masks else (0, 0)
        return CueDistance(classes, size, len(masks), common.split, list(options.radii))


TOOL = CueDistanceTool(__doc__)


def main(argv: list[str]) -> None:
    TOOL.main(argv)
