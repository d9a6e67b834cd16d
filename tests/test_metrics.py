"""Metrics against hand computations: the confusion matrix's numbers (ignore_index and absent
classes included), boundary IoU against the reference algorithm's erosion, the calibration error
against torchmetrics'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from segbench.errors import ConfigError
from segbench.metrics import (
    BoundaryIoU,
    CalibrationError,
    SegmentationMetrics,
    boundary_width,
    mask_boundary,
)


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


def reference_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """Boundary IoU's reference ``mask_to_boundary``, written out: pad one row and column of
    zeros, erode with a 3x3 square ``d`` times (outside the padded image counts as inside, as
    cv2.erode's default border), subtract the eroded mask."""
    m = np.pad(mask.astype(bool), 1)
    for _ in range(d):
        p = np.pad(m, 1, constant_values=True)
        m = np.logical_and.reduce(
            [p[1 + dy : p.shape[0] - 1 + dy, 1 + dx : p.shape[1] - 1 + dx]
             for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        )  # fmt: skip
    return mask.astype(bool) & ~m[1:-1, 1:-1]


def test_boundary_band_of_a_square_by_hand():
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[2:7, 2:7] = True  # a 5 x 5 square: its band of width 1 is the outer ring, 16 pixels
    band = mask_boundary(mask, 1)
    ring = mask.clone()
    ring[3:6, 3:6] = False
    assert torch.equal(band, ring)
    centre = mask.clone()
    centre[4, 4] = False  # the centre is 3 pixels from the nearest outside one
    assert torch.equal(mask_boundary(mask, 2), centre)
    assert torch.equal(mask_boundary(mask, 3), mask)
    # the image border counts as outside: a full image's band is its frame
    full = mask_boundary(torch.ones(6, 8, dtype=torch.bool), 1)
    assert full.sum() == 6 * 8 - 4 * 6


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_boundary_band_equals_the_reference_erosion(d):
    gen = torch.Generator().manual_seed(d)
    masks = torch.rand(3, 23, 31, generator=gen) > 0.4
    ours = mask_boundary(masks, d)
    for m, o in zip(masks, ours, strict=True):
        assert np.array_equal(o.numpy(), reference_boundary(m.numpy(), d))


def hand_boundary_iou(preds, targets, k, ignore, ratio):
    inter, union = np.zeros(k, np.int64), np.zeros(k, np.int64)
    for p, t in zip(preds, targets, strict=True):
        d = max(1, round(ratio * float(np.hypot(*t.shape))))
        valid = t != ignore
        for c in range(k):
            g = reference_boundary(t == c, d) & valid
            q = reference_boundary(p == c, d) & valid
            inter[c] += (g & q).sum()
            union[c] += (g | q).sum()
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou)), iou


def test_boundary_iou_matches_a_hand_computation_over_batches():
    gen = torch.Generator().manual_seed(0)
    k, ignore = 4, 255
    targets = torch.randint(0, k - 1, (5, 30, 40), generator=gen)  # class 3 never in the truth
    targets[:, :4, :6] = ignore
    preds = targets.clone()
    noise = torch.rand(targets.shape, generator=gen) < 0.15
    preds[noise] = torch.randint(0, k, (int(noise.sum()),), generator=gen)
    metric = BoundaryIoU(k, ignore, dilation_ratio=0.05)
    for i in range(0, 5, 2):  # uneven batches: the counts add up
        metric.update(preds[i : i + 2], targets[i : i + 2])
    out = metric.compute()
    mean, per_class = hand_boundary_iou(preds.numpy(), targets.numpy(), k, ignore, 0.05)
    assert float(out["bIoU"]) == pytest.approx(mean, abs=1e-6)
    for c in range(k):
        assert float(out[f"bIoU/{c}"]) == pytest.approx(per_class[c], abs=1e-6, nan_ok=True)
    assert boundary_width(30, 40, 0.05) == 2  # 5% of the diagonal (50 px)


def test_boundary_iou_is_one_for_a_perfect_prediction_and_sees_a_thin_miss():
    target = torch.zeros(1, 64, 64, dtype=torch.long)
    target[0, :, 30:32] = 1  # a pole, 2 px wide
    metric = BoundaryIoU(2, dilation_ratio=0.02)
    metric.update(target, target)
    assert float(metric.compute()["bIoU"]) == 1.0
    miss = SegmentationMetrics(2)
    band = BoundaryIoU(2, dilation_ratio=0.02)
    missed = torch.zeros_like(target)  # the pole missed
    miss.update(missed, target)
    band.update(missed, target)
    # Whole-image IoU of the background hides the miss; its band does not.
    assert float(miss.compute()["IoU/0"]) > 0.95
    assert float(band.compute()["bIoU/0"]) < 0.8


def test_boundary_iou_rejects_a_bad_ratio():
    with pytest.raises(ConfigError, match="dilation_ratio"):
        BoundaryIoU(3, dilation_ratio=0.0)


def test_calibration_error_equals_torchmetrics_on_pixels():
    gen = torch.Generator().manual_seed(1)
    k, ignore = 5, 255
    logits = torch.randn(6, k, 12, 10, generator=gen) * 3
    target = torch.randint(0, k, (6, 12, 10), generator=gen)
    target[:, 0] = ignore
    probs = logits.softmax(1)
    probs[0, :, 1, 1] = torch.tensor([1.0, 0, 0, 0, 0])  # a confidence of exactly 1
    metric = CalibrationError(15, ignore)
    for i in range(0, 6, 4):
        metric.update(probs[i : i + 4], target[i : i + 4])
    flat_p = probs.permute(0, 2, 3, 1).reshape(-1, k)
    expected = multiclass_calibration_error(
        flat_p, target.reshape(-1), k, n_bins=15, norm="l1", ignore_index=ignore
    )
    assert float(metric.compute()) == pytest.approx(float(expected), abs=1e-6)


def test_calibration_error_of_a_calibrated_and_an_overconfident_model():
    # A model that says 0.8 and is right on 8 pixels of 10 is calibrated; one that says 1.0 is
    # off by 0.2.
    target = torch.tensor([[[0] * 8 + [1] * 2]])
    calibrated = torch.stack([torch.full((1, 1, 10), 0.8), torch.full((1, 1, 10), 0.2)], 1)
    metric = CalibrationError(10)
    metric.update(calibrated, target)
    assert float(metric.compute()) == pytest.approx(0.0, abs=1e-6)
    sure = torch.stack([torch.ones(1, 1, 10), torch.zeros(1, 1, 10)], 1)
    metric = CalibrationError(10)
    metric.update(sure, target)
    assert float(metric.compute()) == pytest.approx(0.2, abs=1e-6)
