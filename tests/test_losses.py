"""Cross-entropy with ignore_index and OHEM on hand-made batches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segbench.losses import SegmentationLoss, ohem_keep_mask


def logits_for(probs_true: list[float], k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """1 x k x 1 x n logits whose softmax gives class 0 the listed probabilities."""
    p = torch.tensor(probs_true)
    logit0 = torch.log(p / (1 - p))  # two classes: logit of class 1 is 0
    logits = torch.zeros(1, k, 1, len(probs_true))
    logits[0, 0, 0] = logit0
    return logits, torch.zeros(1, 1, len(probs_true), dtype=torch.long)


def test_ohem_keeps_hard_pixels_below_the_threshold():
    logits, target = logits_for([0.1, 0.5, 0.69, 0.71, 0.9, 0.99])
    keep = ohem_keep_mask(logits, target, ignore_index=255, thresh=0.7, min_kept=1)
    assert keep[0, 0].tolist() == [True, True, True, False, False, False]


def test_ohem_raises_the_threshold_to_keep_min_kept():
    logits, target = logits_for([0.1, 0.5, 0.8, 0.9, 0.95, 0.99])
    keep = ohem_keep_mask(logits, target, ignore_index=255, thresh=0.3, min_kept=4)
    assert keep[0, 0].tolist() == [True, True, True, True, False, False]


def test_ohem_never_keeps_void_and_keeps_all_when_few_are_valid():
    logits, target = logits_for([0.1, 0.99, 0.99, 0.99])
    target[0, 0, 0] = 255
    keep = ohem_keep_mask(logits, target, ignore_index=255, thresh=0.7, min_kept=100)
    assert keep[0, 0].tolist() == [False, True, True, True]


def test_ohem_loss_is_the_mean_over_kept_pixels():
    logits, target = logits_for([0.2, 0.4, 0.9, 0.95])
    loss = SegmentationLoss(ohem_thresh=0.7, ohem_min_kept=1)(logits, target)
    assert loss.item() == pytest.approx(-(math.log(0.2) + math.log(0.4)) / 2, rel=1e-5)


def test_plain_loss_ignores_void_and_weights_classes():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0] = 255
    w = [1.0, 2.0, 0.5]
    got = SegmentationLoss(class_weights=w)(logits, target)
    want = F.cross_entropy(logits, target, weight=torch.tensor(w), ignore_index=255)
    assert got.item() == pytest.approx(want.item())


def test_all_void_batch_gives_zero_with_a_graph():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = SegmentationLoss()(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None
