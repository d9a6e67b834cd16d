"""Segmentation metrics from one confusion matrix: FCN's four numbers and per-class IoU.

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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex

from segbench.errors import ConfigError


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
