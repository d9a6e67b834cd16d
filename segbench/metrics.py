"""Segmentation metrics: FCN's four numbers and per-class IoU from one confusion matrix, boundary
IoU (:class:`BoundaryIoU`) and the expected calibration error (:class:`CalibrationError`).

:class:`SegmentationMetrics` *is* torchmetrics' ``MulticlassJaccardIndex`` (average="macro"),
whose state is the confusion matrix; ``compute`` reads every other number off that same matrix.
So there is one accumulated state per stage, summed across processes by torchmetrics under DDP,
and mIoU is exactly torchmetrics' JaccardIndex: classes absent from both the ground truth and the
predictions are left out of the mean, and pixels labelled ``ignore_index`` are never counted.

With ``n[i, j]`` the number of pixels of true class i predicted as j, ``t_i = sum_j n[i, j]``
(FCN section 5, "Metrics"):

* pixel accuracy  ``sum_i n_ii / sum_i t_i``
* mean accuracy   ``mean_i n_ii / t_i`` over classes present in the ground truth
* mean IoU        ``mean_i n_ii / (t_i + sum_j n_ji - n_ii)`` over classes present anywhere
* frequency-weighted IoU ``(sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)``

Every state here is a sum (counts, or float64 sums of confidences), so each metric is exact under
DDP: torchmetrics adds the processes' states before ``compute``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassJaccardIndex

from segbench.errors import ConfigError

#: What the task logs at each evaluation, as ``<stage>/<name>`` (``val/mIoU``, ``test/ECE``):
#: :class:`SegmentationMetrics`' four numbers, :class:`BoundaryIoU`'s mean, the calibration error
#: and the loss (``segbench.task.SegmentationTask``).
STAGE_METRICS = ("mIoU", "pixel_acc", "mean_acc", "fwIoU", "bIoU", "ECE", "loss")
#: What it also logs per class, as ``<stage>/<name>/<class>`` (``test/IoU/pole``).
CLASS_METRICS = ("IoU", "bIoU")


class SegmentationMetrics(MulticlassJaccardIndex):
    """Confusion-matrix metrics for one stage (``val`` or ``test``).

    Args:
        num_classes: K.
        ignore_index: label of void pixels; they are dropped before counting.
        class_names: names used in the per-class keys (``IoU/<name>``); defaults to indices.
    """

    full_state_update = False

    def __init__(
        self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None
    ) -> None:
        # validate_args=False: the argument checks scan every batch for stray values, which
        # costs as much as the update itself; the data modules validate labels when loading.
        super().__init__(
            num_classes=num_classes,
            average="macro",
            ignore_index=ignore_index,
            validate_args=False,
        )
        names = (
            list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        )
        if len(names) != num_classes:
            raise ConfigError(f"{len(names)} class names for {num_classes} classes")
        self.class_names = names

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: ``preds`` are label maps (``N x H x W``) or logits (``N x K x H x W``)."""
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(1)
        super().update(preds, target)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        """Return ``{"mIoU", "pixel_acc", "mean_acc", "fwIoU", "IoU/<class>"...}``.

        Per-class IoU is NaN for a class absent from both ground truth and predictions.
        """
        miou = super().compute()
        cm = self.confmat.double()
        #: The confusion matrix of the last compute (summed over processes), rows: true class.
        self.last_confusion = self.confmat.detach().cpu().clone()
        tp = cm.diag()
        gt = cm.sum(1)
        union = gt + cm.sum(0) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
        present = gt > 0
        total = gt.sum()
        out = {
            "mIoU": miou,
            "pixel_acc": tp.sum() / total.clamp(min=1),
            "mean_acc": (tp[present] / gt[present]).mean() if present.any() else tp.new_tensor(0),
            "fwIoU": (gt[present] * iou[present]).sum() / total.clamp(min=1),
        }
        out.update({f"IoU/{name}": iou[i] for i, name in enumerate(self.class_names)})
        return {k: v.float() for k, v in out.items()}


def _window_sum(x: Tensor, d: int, dim: int) -> Tensor:
    """Sum of ``x`` over the ``2d + 1`` positions centred on each one along ``dim`` (zeros past
    the ends), in time independent of ``d`` (a running sum)."""
    x = x.movedim(dim, -1)
    c = torch.nn.functional.pad(x, (d + 1, d)).cumsum(-1)
    return (c[..., 2 * d + 1 :] - c[..., : -(2 * d + 1)]).movedim(-1, dim)


def mask_boundary(masks: Tensor, d: int) -> Tensor:
    """The inner boundary band of binary masks (``... x H x W``, bool): the mask's pixels within
    chessboard distance ``d`` of a pixel outside it, the image's border counting as outside.

    This is Boundary IoU's ``mask - erode(mask, 3x3, d times)`` (Cheng et al., CVPR 2021; the
    reference code pads the mask with one row and column of zeros before eroding), computed as
    a box count of outside pixels in the ``(2d + 1)^2`` window of each pixel.
    """
    outside = torch.nn.functional.pad((~masks).to(torch.int32), (1, 1, 1, 1), value=1)
    count = _window_sum(_window_sum(outside, d, -1), d, -2)[..., 1:-1, 1:-1]
    return masks & (count > 0)


def boundary_width(height: int, width: int, ratio: float) -> int:
    """Boundary IoU's band width ``d`` in pixels: ``ratio`` of the image's diagonal, at least 1."""
    return max(1, round(ratio * (height**2 + width**2) ** 0.5))


class BoundaryIoU(Metric):
    """Boundary IoU per class and its mean over a split (Cheng et al., CVPR 2021).

    For each class, the ground truth's and the prediction's masks are cut down to their boundary
    bands (the pixels within ``d`` of the mask's contour, :func:`mask_boundary`; ``d`` is
    ``dilation_ratio`` of the image's diagonal, 2% as in the paper), and the IoU of the two bands
    is taken. As mIoU, the intersections and unions are summed over the whole split before
    dividing (integer counts, so the sum over DDP processes is exact), void pixels are never
    counted, and the mean leaves out classes with an empty union (absent from both the ground
    truth's and the predictions' boundaries). A thin object is almost all boundary; a large one
    is scored on its outline only, where whole-image mIoU is dominated by its interior.

    Args:
        num_classes: K.
        ignore_index: label of void pixels.
        class_names: names of the per-class keys (``bIoU/<name>``).
        dilation_ratio: the band's width as a fraction of the image's diagonal.
    """

    full_state_update = False
    intersection: Tensor
    union: Tensor

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        dilation_ratio: float = 0.02,
    ) -> None:
        super().__init__()
        if not 0 < dilation_ratio < 1:
            raise ConfigError(f"boundary IoU: dilation_ratio {dilation_ratio} not in (0, 1)")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.dilation_ratio = dilation_ratio
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        self.add_state("intersection", torch.zeros(num_classes, dtype=torch.long), "sum")
        self.add_state("union", torch.zeros(num_classes, dtype=torch.long), "sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch of label maps (``N x H x W``; logits ``N x K x H x W`` are argmaxed)."""
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(1)
        d = boundary_width(target.shape[-2], target.shape[-1], self.dilation_ratio)
        valid = (target != self.ignore_index).unsqueeze(1)
        classes = torch.arange(self.num_classes, device=target.device).view(1, -1, 1, 1)
        # One class at a time would bound the memory; K at once is what validation batches need.
        gt = mask_boundary(target.unsqueeze(1) == classes, d) & valid
        pr = mask_boundary(preds.unsqueeze(1) == classes, d) & valid
        self.intersection += (gt & pr).sum((0, 2, 3))
        self.union += (gt | pr).sum((0, 2, 3))

    def compute(self) -> dict[str, Tensor]:
        """``{"bIoU": mean, "bIoU/<class>": ...}``; a class with an empty union is NaN."""
        union = self.union.double()
        iou = torch.where(union > 0, self.intersection.double() / union.clamp(min=1), torch.nan)
        scored = union > 0
        mean = iou[scored].mean() if scored.any() else iou.new_tensor(0.0)
        out = {"bIoU": mean}
        out.update({f"bIoU/{name}": iou[i] for i, name in enumerate(self.class_names)})
        return {k: v.float() for k, v in out.items()}


class CalibrationError(Metric):
    """Expected calibration error (top label, L1) over every valid pixel of a split.

    torchmetrics' ``MulticlassCalibrationError`` by definition (the same bins: ``n_bins`` equal
    widths of the top probability, a probability of exactly 1 in a bin of its own; the same
    ``sum_b |accuracy_b - confidence_b| * share_b``), but with the bins' sums as its state
    instead of every pixel's confidence: a split of millions of pixels costs ``3 (n_bins + 1)``
    numbers, summed exactly over DDP processes.

    Args:
        n_bins: the number of confidence bins (torchmetrics' default, 15).
        ignore_index: label of void pixels (not counted).
    """

    full_state_update = False
    count: Tensor
    confidence: Tensor
    correct: Tensor

    def __init__(self, n_bins: int = 15, ignore_index: int = 255) -> None:
        super().__init__()
        if n_bins < 1:
            raise ConfigError(f"calibration error: n_bins {n_bins} must be at least 1")
        self.n_bins, self.ignore_index = n_bins, ignore_index
        self.add_state("count", torch.zeros(n_bins + 1, dtype=torch.long), "sum")
        self.add_state("correct", torch.zeros(n_bins + 1, dtype=torch.long), "sum")
        self.add_state("confidence", torch.zeros(n_bins + 1, dtype=torch.float64), "sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Add a batch: class probabilities ``N x K x H x W`` and labels ``N x H x W``."""
        confidence, pred = probs.max(1)
        valid = target != self.ignore_index
        confidence, correct = confidence[valid].float(), (pred[valid] == target[valid])
        edges = torch.linspace(0, 1, self.n_bins + 1, device=probs.device)
        bins = torch.bucketize(confidence, edges, right=True) - 1
        self.count.index_add_(0, bins, torch.ones_like(bins))
        self.correct.index_add_(0, bins, correct.long())
        self.confidence.index_add_(0, bins, confidence.double())

    def compute(self) -> Tensor:
        total = self.count.sum()
        if total == 0:
            return torch.tensor(0.0)
        gap = (self.correct.double() - self.confidence).abs().sum()
        return (gap / total).float()
