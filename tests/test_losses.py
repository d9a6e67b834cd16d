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


def reference_ohem_keep(logits, target, ignore_index, thresh, min_kept):
    """The GALD code's ``OhemCrossEntropy2dTensor`` selection, step by step: void pixels get
    probability 1, the threshold is raised to the ``min_kept``-th smallest probability when that
    is larger, nothing is mined when fewer than ``min_kept`` pixels are valid."""
    k = logits.shape[1]
    t = target.flatten()
    valid = t != ignore_index
    if min_kept > int(valid.sum()):
        return valid.view_as(target)
    prob = logits.softmax(1).transpose(0, 1).reshape(k, -1).clone()
    prob[:, ~valid] = 1.0
    p = prob[(t * valid).long(), torch.arange(t.numel())]
    threshold = thresh
    order = p.argsort()
    kth = p[order[min(len(order), min_kept) - 1]]
    if kth > thresh:
        threshold = kth
    return (valid & (p <= threshold)).view_as(target)


@pytest.mark.parametrize(("thresh", "min_kept"), [(0.7, 1), (0.7, 500), (0.3, 900), (0.9, 2000)])
def test_ohem_selection_matches_the_reference_code(thresh, min_kept):
    torch.manual_seed(0)
    logits = 3 * torch.randn(2, 5, 20, 30)
    target = torch.randint(0, 5, (2, 20, 30))
    target[0, :5] = 255
    got = ohem_keep_mask(logits, target, ignore_index=255, thresh=thresh, min_kept=min_kept)
    want = reference_ohem_keep(logits, target, 255, thresh, min_kept)
    assert torch.equal(got, want)
    assert int(got.sum()) >= min(min_kept, int((target != 255).sum()))


def test_ohem_min_kept_counts_over_the_whole_batch_not_per_image():
    # Image 0: hard pixels; image 1: easy ones. min_kept=3 is met by image 0 alone.
    logits, target = logits_for([0.1, 0.2, 0.3, 0.95, 0.96, 0.97])
    logits = torch.cat([logits[..., :3], logits[..., 3:]])
    target = torch.zeros(2, 1, 3, dtype=torch.long)
    keep = ohem_keep_mask(logits, target, ignore_index=255, thresh=0.5, min_kept=3)
    assert keep[0, 0].tolist() == [True, True, True]
    assert keep[1, 0].tolist() == [False, False, False]


def test_ohem_with_class_weights_is_the_weighted_mean_over_kept_pixels():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0] = torch.tensor([-1.0, -0.5, 3.0, 3.0])  # true-class probabilities below
    target = torch.tensor([[[0, 1, 0, 1]]])
    p_true = torch.stack([logits[0, :, 0, i].softmax(0)[target[0, 0, i]] for i in range(4)])
    keep = p_true <= 0.7
    w = torch.tensor([1.0, 3.0])
    wt = w[target[0, 0]]
    want = -(wt * p_true.log())[keep].sum() / wt[keep].sum()
    got = SegmentationLoss(class_weights=[1.0, 3.0], ohem_thresh=0.7, ohem_min_kept=1)
    assert got(logits, target).item() == pytest.approx(want.item(), rel=1e-5)
