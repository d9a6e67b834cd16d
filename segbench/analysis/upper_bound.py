"""``segbench upper-bound [RUN_DIR | --config FILE.yaml [overrides]] [--strides 4 8 16 32]``.

The upsampler upper bound of DUpsampling (Tian et al., CVPR 2019, sec. 4.1, "mIoU*"): feed the
ground truth itself through an upsampler's compress / reconstruct path and score the result
against the ground truth. No network, no training: it measures how much of the label detail an
upsampler *can* recover from a stride-r map, whatever the network before it.

For each output stride r, on the one-hot label maps (void pixels as all-zero vectors, padded with
void to a multiple of r):

* ``bilinear``: average-pool r x r (the class fractions of each cell, the best a stride-r score
  map can hold), bilinear upsampling back (``align_corners=False``), argmax;
* ``nearest``: the same cells, nearest-neighbour upsampling (each cell takes its majority class);
* ``dupsample k=...``: each r x r patch vector ``v`` compressed to ``x = P (v - mu)`` and
  reconstructed as ``W x + mu`` with W fitted on the *training* split (PCA, or SGD with
  ``--fit sgd``) and evaluated on the evaluation split, for each compressed dimension k. A stride-r
  bilinear map holds K numbers per cell, so ``k = K`` is the like-for-like comparison.

mIoU* is :class:`segbench.metrics.SegmentationMetrics`' mIoU of the reconstruction (void pixels
ignored). Prints a markdown table with the time taken; ``--out DIR`` writes it to
``upper-bound.md`` with ``upper-bound.json`` (every metric and per-class IoU) and
``upper-bound.png`` (mIoU* against stride). Only the data module of the config (or run) is used;
the rest of the command line is shared by every tool (:mod:`segbench.analysis.tool`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from segbench.analysis.loading import LoadedModel
from segbench.analysis.tool import Common, Tool
from segbench.data.base import SegmentationDataModule, Split
from segbench.errors import ConfigError
from segbench.metrics import SegmentationMetrics
from segbench.models.layers.label_basis import (
    Basis,
    collect_patches,
    fit_pca,
    fit_sgd,
    label_patches,
)
from segbench.tables import markdown_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("segbench")


@dataclass
class Result:
    """mIoU* and friends of one upsampler at one stride."""

    method: str
    stride: int
    dim: int | None
    metrics: dict[str, float]


@dataclass
class UpperBound:
    """mIoU* of every upsampler at every stride."""

    results: list[Result]
    class_names: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)
    title: str = ""

    def markdown(self) -> str:
        return markdown(self, self.title)

    def to_json(self) -> dict:
        return {
            "title": self.title,
            "images": self.images,
            "seconds": self.seconds,
            "results": [asdict(r) for r in self.results],
        }

    def summary(self) -> dict[str, float]:
        """mIoU* per upsampler and stride (``upper_bound/<upsampler>/stride<r>``)."""
        return {
            f"upper_bound/{_label(r).replace(' ', '_')}/stride{r.stride}": r.metrics["mIoU"]
            for r in self.results
        }

    def plot(self, fig: Figure) -> None:
        """mIoU* against the output stride, a line per upsampler."""
        fig.set_size_inches(6, 4)
        ax = fig.subplots()
        series: dict[str, list[tuple[int, float]]] = {}
        for r in self.results:
            series.setdefault(_label(r), []).append((r.stride, 100 * r.metrics["mIoU"]))
        for label, points in series.items():
            xs, ys = zip(*sorted(points), strict=True)
            style = "--" if label in ("bilinear", "nearest") else "-"
            ax.plot(xs, ys, style, marker="o", label=label)
        ax.set_xscale("log", base=2)
        strides = sorted({r.stride for r in self.results})
        ax.set_xticks(strides, [str(s) for s in strides])
        ax.set_xlabel("output stride r")
        ax.set_ylabel("mIoU* (%)")
        ax.set_title(self.title or "upsampler upper bound")
        ax.grid(alpha=0.3)
        # beside the axes: inside, the upper right sat on the best upsampler's line
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)


def read_masks(
    datamodule: SegmentationDataModule,
    split: str,
    *,
    max_images: int | None = None,
    num_workers: int | None = None,
) -> list[Tensor]:
    """The label maps of a split (no augmentation, at the data module's scale), as uint8 when
    they fit."""
    dataset = datamodule.unaugmented(split)  # type: ignore[arg-type]
    n = len(dataset)  # type: ignore[arg-type]
    if max_images is not None:
        n = min(n, max_images)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, range(n)),
        batch_size=None,
        num_workers=datamodule.num_workers if num_workers is None else num_workers,
        collate_fn=_mask_of,
    )
    small = datamodule.num_classes < 255 and datamodule.ignore_index < 256
    return [m.to(torch.uint8) if small else m for m in loader]


def _mask_of(sample: Any) -> Tensor:  # batch_size=None: one sample, not a list
    return sample["mask"]


def _batches(masks: Sequence[Tensor], pixels: int = 1 << 18) -> list[Tensor]:
    """Consecutive masks of equal size stacked into batches of about ``pixels`` pixels."""
    out: list[Tensor] = []
    batch: list[Tensor] = []
    for m in masks:
        if batch and (m.shape != batch[0].shape or len(batch) * m.numel() >= pixels):
            out.append(torch.stack(batch))
            batch = []
        batch.append(m)
    if batch:
        out.append(torch.stack(batch))
    return out


def evaluate_stride(
    masks: Sequence[Tensor],
    stride: int,
    *,
    num_classes: int,
    ignore_index: int,
    class_names: Sequence[str],
    basis: Basis | None = None,
    dims: Sequence[int] = (),
) -> list[Result]:
    """mIoU* of bilinear, nearest and (given ``basis``) DUpsample for each k in ``dims``."""
    r = stride
    names = ["bilinear", "nearest"] + [f"dupsample k={k}" for k in dims]
    metrics = {n: SegmentationMetrics(num_classes, ignore_index, list(class_names)) for n in names}
    dims = sorted(dims)
    k1 = num_classes
    if basis is not None and dims:
        # W's rows reordered from (class, position) to (position, class): the reconstruction of
        # a patch is then r^2 contiguous K-vectors, and the argmax runs over a contiguous axis.
        n = basis.weight.shape[0]
        w_pc = basis.weight[:, : dims[-1]].reshape(k1, r * r, -1).transpose(0, 1).reshape(n, -1)
        mean_pc = basis.mean.reshape(k1, r * r).T.reshape(n)
        table = torch.cat([basis.encoder[: dims[-1]].T, torch.zeros(1, dims[-1])])
        offset = basis.mean @ basis.encoder[: dims[-1]].T
    for batch in _batches(masks):
        target = batch.long()
        bsz, h, w = target.shape
        hp, wp = h + (-h) % r, w + (-w) % r
        rows = label_patches(batch, r, num_classes, ignore_index).long()  # void: K
        # The class fractions of each r x r cell (= average pooling of the one-hot map).
        counts = torch.zeros(len(rows), k1 + 1).scatter_add_(1, rows, torch.ones(rows.shape))
        cells = (counts[:, :k1] / (r * r)).view(bsz, hp // r, wp // r, k1).permute(0, 3, 1, 2)
        up = F.interpolate(cells, size=(hp, wp), mode="bilinear", align_corners=False)
        metrics["bilinear"].update(up[..., :h, :w].argmax(1), target)
        del up
        # Nearest upsampling by r copies each cell: the argmax commutes with it.
        near = cells.argmax(1).repeat_interleave(r, 1).repeat_interleave(r, 2)
        metrics["nearest"].update(near[:, :h, :w], target)
        if basis is None or not dims:
            continue
        # Compress: x = P (v - mu), with the one-hot v given by the r^2 indices of its ones.
        idx = torch.where(rows == num_classes, n, rows * r * r + torch.arange(r * r))
        code = F.embedding_bag(idx, table, mode="sum") - offset
        # Reconstruct W x + mu, adding the components of each k in turn (they are nested).
        recon = mean_pc.expand(len(code), -1).clone()
        done = 0
        for k in dims:
            recon.addmm_(code[:, done:k], w_pc[:, done:k].T)
            done = k
            pred = recon.view(len(code), r * r, k1).argmax(-1)
            pred = pred.view(bsz, hp // r, wp // r, r, r).permute(0, 1, 3, 2, 4)
            metrics[f"dupsample k={k}"].update(pred.reshape(bsz, hp, wp)[:, :h, :w], target)
    out = []
    for name in names:
        values = {k: float(v) for k, v in metrics[name].compute().items()}
        dim = int(name.split("=")[1]) if name.startswith("dupsample") else None
        out.append(Result(name.split(" ")[0], r, dim, values))
    return out


def upper_bound(
    train: Sequence[Tensor],
    val: Sequence[Tensor],
    *,
    num_classes: int,
    ignore_index: int,
    class_names: Sequence[str],
    strides: Sequence[int] = (4, 8, 16, 32),
    dims: Sequence[int] | None = None,
    fit: str = "pca",
    void: str = "zero",
    sgd_steps: int = 2000,
) -> UpperBound:
    """The upper-bound table: W fitted on ``train`` label maps, everything scored on ``val``."""
    result = UpperBound([], list(class_names), images={"fit": len(train), "eval": len(val)})
    if dims is None:
        dims = [num_classes * m for m in (1, 2, 4, 8)]
    t_fit = t_eval = 0.0
    for r in strides:
        t0 = time.perf_counter()
        ks = sorted({k for k in dims if 0 < k <= num_classes * r * r})
        basis = None
        if ks:
            patches = collect_patches(train, r, num_classes, ignore_index, void)  # type: ignore[arg-type]
            if fit == "pca":
                basis = fit_pca(patches, ks[-1])
            else:
                basis = fit_sgd(patches, ks[-1], steps=sgd_steps)
        t1 = time.perf_counter()
        result.results += evaluate_stride(
            val,
            r,
            num_classes=num_classes,
            ignore_index=ignore_index,
            class_names=class_names,
            basis=basis,
            dims=ks,
        )
        t2 = time.perf_counter()
        t_fit += t1 - t0
        t_eval += t2 - t1
        log.info(
            "upper bound: stride %d fitted in %.1f s, evaluated in %.1f s", r, t1 - t0, t2 - t1
        )
    result.seconds.update({"fit": t_fit, "evaluate": t_eval})
    return result


# -- output ---------------------------------------------------------------------------------------
def _label(r: Result) -> str:
    return r.method if r.dim is None else f"DUpsample k={r.dim}"


def markdown(ub: UpperBound, title: str = "") -> str:
    strides = sorted({r.stride for r in ub.results})
    methods: list[str] = []
    for r in ub.results:
        if _label(r) not in methods:
            methods.append(_label(r))
    cell = {(_label(r), r.stride): r.metrics["mIoU"] for r in ub.results}
    lines = [f"### {title}\n" if title else ""]
    rows = [
        [m, *("" if v is None else f"{100 * v:.1f}" for v in (cell.get((m, s)) for s in strides))]
        for m in methods
    ]
    lines.append(
        markdown_table(["upsampler", *(f"stride {s}" for s in strides)], rows).rstrip("\n")
    )
    secs = ub.seconds
    lines.append(
        f"\nmIoU* (%) of the ground truth through each upsampler; DUpsample's W fitted on "
        f"{ub.images.get('fit', 0)} training label maps, all scored on "
        f"{ub.images.get('eval', 0)} evaluation label maps. Time: read "
        f"{secs.get('read', 0):.1f} s, fit {secs.get('fit', 0):.1f} s, evaluate "
        f"{secs.get('evaluate', 0):.1f} s, total {secs.get('total', 0):.1f} s "
        f"({torch.get_num_threads()} threads)."
    )
    return "\n".join(lines).lstrip("\n") + "\n"


@dataclass
class Options:
    """Options of ``segbench upper-bound`` (``--split`` is the evaluation split).

    Args:
        strides: output strides r
        dims: DUpsample's compressed dimensions k (default: K, 2K, 4K, 8K for K classes)
        fit: how W is fitted
        void: void pixels in the fit: as all-zero vectors, or their patches dropped
        sgd_steps: steps of the SGD fit
        fit_split: the split W is fitted on
        max_images: at most this many label maps per split
        num_workers: loader workers (default: the data module's)
        title: title of the table and the plot (default: the data set and split)
    """

    strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    dims: list[int] | None = None
    fit: Literal["pca", "sgd"] = "pca"
    void: Literal["zero", "drop_patch"] = "zero"
    sgd_steps: int = 2000
    fit_split: Split = "train"
    max_images: int | None = None
    num_workers: int | None = None
    title: str = ""

    def __post_init__(self) -> None:
        if not self.strides or min(self.strides) < 1:
            raise ConfigError(f"--strides are output strides of 1 or more, got {self.strides}")
        if self.dims is not None and min(self.dims, default=1) < 1:
            raise ConfigError(f"--dims are 1 or more, got {self.dims}")


class UpperBoundTool(Tool[Options, UpperBound]):
    name = "upper-bound"
    uses_network = False
    test_options = ("--strides", "[4]", "--max_images", "2", "--num_workers", "0")

    def measure(self, model: LoadedModel, options: Options, common: Common) -> UpperBound:
        t0 = time.perf_counter()
        datamodule = model.datamodule
        read = {"max_images": options.max_images, "num_workers": options.num_workers}
        train = read_masks(datamodule, options.fit_split, **read)
        val = read_masks(datamodule, common.split, **read)
        t_read = time.perf_counter() - t0
        ub = upper_bound(
            train,
            val,
            num_classes=datamodule.num_classes,
            ignore_index=datamodule.ignore_index,
            class_names=list(datamodule.class_names),
            strides=options.strides,
            dims=options.dims,
            fit=options.fit,
            void=options.void,
            sgd_steps=options.sgd_steps,
        )
        ub.seconds["read"] = t_read
        ub.seconds["total"] = time.perf_counter() - t0
        ub.title = options.title or f"{type(datamodule).__name__} {common.split}"
        return ub


TOOL = UpperBoundTool(__doc__)


def main(argv: list[str]) -> None:
    TOOL.main(argv)
