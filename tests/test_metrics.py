"""Metrics against a confusion matrix counted by hand, ignore_index and absent classes included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segbench.metrics import SegmentationMetrics


def hand_metrics(pred: np.ndarray, target: np.ndarray, k: int, ignore: int) -> dict[str, float]:
    """FCN's four numbers from an explicitly counted confusion matrix."""
    cm = np.zeros((k, k), np.int64)
    for t, p in zip(target.ravel(), pred.ravel(), strict=True):
        if t != ignore:
            cm[t, p] += 1
    tp, gt, pr = np.diag(cm), cm.sum(1), cm.sum(0)
    union = gt + pr - tp
    seen = union > 0  # absent from both ground truth and prediction: excluded
    iou = np.where(seen, tp / np.maximum(union, 1), np.nan)
    return {
        "mIoU": float(np.nanmean(iou)),
        "pixel_acc": tp.sum() / gt.sum(),
        "mean_acc": float(np.mean(tp[gt > 0] / gt[gt > 0])),
        "fwIoU": float((gt[gt > 0] * iou[gt > 0]).sum() / gt.sum()),
        **{f"IoU/{i}": iou[i] for i in range(k)},
    }


def test_metrics_match_a_hand_counted_confusion_matrix():
    rng = np.random.default_rng(0)
    k, ignore = 5, 255
    target = rng.integers(0, 4, (3, 7, 9))  # class 4 never in the ground truth...
    pred = rng.integers(0, 4, (3, 7, 9))
    pred[0, 0, :3] = 4  # ...but predicted: it counts, with IoU 0
    target[1, :2] = ignore  # void pixels, whatever is predicted there
    pred[1, :2] = 3
    metric = SegmentationMetrics(k, ignore)
    for i in range(3):  # accumulated over batches
        metric.update(torch.from_numpy(pred[i : i + 1]), torch.from_numpy(target[i : i + 1]))
    got = {name: float(v) for name, v in metric.compute().items()}
    want = hand_metrics(pred, target, k, ignore)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-6, nan_ok=True), name
    assert got["IoU/4"] == 0.0


def test_class_absent_everywhere_is_nan_and_left_out_of_the_mean():
    metric = SegmentationMetrics(3, 255, class_names=["a", "b", "c"])
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    metric.update(pred, target)
    out = metric.compute()
    assert torch.isnan(out["IoU/c"])
    assert out["mIoU"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_logits_are_argmaxed():
    target = torch.tensor([[0, 1, 2]])
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 2, 1).float()
    metric = SegmentationMetrics(3)
    metric.update(logits.unsqueeze(-1), target.unsqueeze(-1))
    assert metric.compute()["mIoU"] == 1.0


def test_wrong_number_of_class_names_is_an_error():
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        SegmentationMetrics(3, class_names=["a", "b"])
