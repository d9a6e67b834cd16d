"""Pixel-wise losses: cross-entropy with ``ignore_index``, optionally online hard example mining.

OHEM follows the GALD reference code (lxtGH/GALD-DGCNet, ``OhemCrossEntropy2d``, itself from
CCNet): among the valid pixels, keep those whose predicted probability of the true class is at
most ``thresh``; if that keeps fewer than ``min_kept``, raise the threshold to the
``min_kept``-th smallest probability so that at least ``min_kept`` pixels are kept (all of them
if there are fewer valid pixels). The loss is the mean cross-entropy over the kept pixels.
``tests/test_losses.py`` checks the selection against the code's algorithm. Two things to know
when copying a recipe: ``min_kept`` counts over the batch a process sees (the GALD code trains
one 769 x 769 crop per GPU, so its 100000 is per image; a process with 8 crops keeps 100000 of
all 8), and with ``min_kept = 0`` the code mines nothing while here the threshold alone applies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ohem_keep_mask(
    logits: Tensor, target: Tensor, *, ignore_index: int, thresh: float, min_kept: int
) -> Tensor:
    """Boolean ``N x H x W`` mask of the pixels OHEM keeps (a subset of the valid ones)."""
    valid = target != ignore_index
    num_valid = int(valid.sum())
    if num_valid == 0 or num_valid <= min_kept:
        return valid
    with torch.no_grad():
        prob = logits.detach().softmax(1)
        true_prob = prob.gather(1, target.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
        valid_prob = true_prob[valid]
        threshold = torch.as_tensor(thresh, dtype=valid_prob.dtype, device=valid_prob.device)
        if min_kept > 0:
            kth = valid_prob.kthvalue(min_kept).values
            threshold = torch.maximum(threshold, kth)
        return valid & (true_prob <= threshold)


class SegmentationLoss(nn.Module):
    """Cross-entropy over valid pixels, with optional class weights and OHEM.

    Args:
        ignore_index: label of void pixels, never counted.
        class_weights: per-class weights (e.g. SegNet's median-frequency weights for CamVid).
        ohem_thresh: ``None`` for plain cross-entropy; otherwise the probability threshold of
            OHEM (GALD: 0.7).
        ohem_min_kept: at least this many pixels per batch are kept by OHEM (GALD: 100000).
    """

    weight: Tensor | None  # a buffer: the class weights, or None

    def __init__(
        self,
        *,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        ohem_thresh: float | None = None,
        ohem_min_kept: int = 100_000,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.ohem_thresh, self.ohem_min_kept = ohem_thresh, ohem_min_kept
        weight = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.ohem_thresh is not None:
            keep = ohem_keep_mask(
                logits,
                target,
                ignore_index=self.ignore_index,
                thresh=self.ohem_thresh,
                min_kept=self.ohem_min_kept,
            )
            target = target.masked_fill(~keep, self.ignore_index)
        if not (target != self.ignore_index).any():
            # F.cross_entropy returns NaN for an all-void batch; a zero keeps the graph alive.
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, weight=self.weight, ignore_index=self.ignore_index)
