"""Evaluation protocols: whole image, sliding window, multi-scale + flip, and their equivalences."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segbench.inference import EvalProtocol, predict_log_probs, slide_logits
from segbench.task import SegmentationTask

K = 4


class ConvNet(nn.Module):
    """Two 3x3 convolutions with zero padding: context-dependent, so windows change logits."""

    def __init__(self, symmetric: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, K, 3, padding=1)
        if symmetric:  # kernels mirror-symmetric in width: the net commutes with a mirror
            with torch.no_grad():
                for conv in (self.a, self.b):
                    conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
        self.calls: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls.append(tuple(x.shape[-2:]))
        return {"out": self.b(F.relu(self.a(x)))}


class PointwiseNet(nn.Module):
    """1x1 convolutions: each pixel's logits depend on that pixel only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, K, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.b(torch.tanh(self.a(x)))}


def image(h: int = 23, w: int = 37, n: int = 2) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(n, 3, h, w)


@torch.no_grad()
def test_a_window_covering_the_whole_image_equals_whole_image_inference():
    net, x = ConvNet(), image()
    whole = predict_log_probs(net, x, EvalProtocol())
    slide = predict_log_probs(net, x, EvalProtocol(mode="slide", crop_size=(23, 37), stride=(8, 8)))
    assert torch.equal(slide, whole)
    assert net.calls[-1] == (23, 37)  # one window, the image itself


@torch.no_grad()
def test_overlapping_windows_average_the_logits_of_every_window():
    """A context-free net gives every window the same logits per pixel: the mean equals them."""
    net, x = PointwiseNet(), image()
    whole = net(x)["out"]
    got = slide_logits(net, x, crop_size=(10, 16), stride=(4, 7))
    torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_sliding_windows_cover_every_pixel_and_count_overlaps():
    """Windows of a net that outputs ones: the average is exactly 1 everywhere (no hole, no
    double count left unnormalised), and the windows are where the grid says."""
    seen: list[tuple[int, int]] = []

    def ones(x: torch.Tensor) -> dict[str, torch.Tensor]:
        seen.append(tuple(x.shape[-2:]))
        return {"out": torch.ones(x.shape[0], K, *x.shape[-2:])}

    x = image(23, 37)
    out = slide_logits(ones, x, crop_size=(10, 16), stride=(6, 10))
    assert torch.equal(out, torch.ones(2, K, 23, 37))
    # rows start at 0, 6, 12 and 13 (moved back to end at 23); columns at 0, 10, 20 and 21.
    assert len(seen) == 4 * 4
    assert set(seen) == {(10, 16)}


@torch.no_grad()
def test_an_image_smaller_than_the_window_is_padded_and_cropped_back():
    net, x = PointwiseNet(), image(9, 12)
    got = slide_logits(net, x, crop_size=(16, 16), stride=(8, 8))
    assert got.shape == (2, K, 9, 12)
    torch.testing.assert_close(got, net(x)["out"], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_flip_tta_of_a_flip_equivariant_model_equals_its_plain_prediction():
    net, x = ConvNet(symmetric=True), image()
    plain = predict_log_probs(net, x, EvalProtocol())
    tta = predict_log_probs(net, x, EvalProtocol(flip=True))
    torch.testing.assert_close(tta, plain, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_flip_tta_averages_the_mirrored_prediction_mirrored_back():
    net, x = ConvNet(), image()
    p = net(x)["out"].softmax(1)
    p_flip = net(x.flip(-1))["out"].flip(-1).softmax(1)
    tta = predict_log_probs(net, x, EvalProtocol(flip=True))
    torch.testing.assert_close(tta.exp(), (p + p_flip) / 2, rtol=1e-5, atol=1e-6)
    # The net is not mirror-symmetric, so the test above is not vacuous.
    assert not torch.allclose(p, p_flip, atol=1e-3)


@torch.no_grad()
def test_multi_scale_at_scale_one_only_equals_plain_inference():
    net, x = ConvNet(), image()
    plain = F.log_softmax(net(x)["out"], 1)
    assert torch.equal(predict_log_probs(net, x, EvalProtocol(scales=(1.0,))), plain)
    # The same scale twice averages two identical views.
    twice = predict_log_probs(net, x, EvalProtocol(scales=(1.0, 1.0)))
    torch.testing.assert_close(twice, plain, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_multi_scale_resizes_each_view_back_to_the_label_size_and_averages_probabilities():
    net, x = ConvNet(), image(24, 36)
    size = (48, 72)  # the label is larger than the image fed to the net
    got = predict_log_probs(net, x, EvalProtocol(scales=(0.5, 1.0)), size)
    assert got.shape == (2, K, *size)
    half = F.interpolate(x, size=(12, 18), mode="bilinear", align_corners=False)
    want = sum(
        F.interpolate(net(v)["out"], size=size, mode="bilinear", align_corners=False).softmax(1)
        for v in (half, x)
    )
    torch.testing.assert_close(got.exp(), want / 2, rtol=1e-5, atol=1e-6)
    assert (12, 18) in net.calls
    assert (24, 36) in net.calls


def test_slide_needs_its_window():
    with pytest.raises(ValueError, match="needs crop_size and stride"):
        EvalProtocol(mode="slide")
    with pytest.raises(ValueError, match="scales must be positive"):
        EvalProtocol(scales=(0.0,))


def test_the_task_scores_predictions_at_the_labels_size():
    """Whole image at original resolution: the net sees a half-size image (scales 0.5) and its
    prediction is resized to the label before the confusion matrix counts it."""
    net = PointwiseNet()
    task = SegmentationTask(net, num_classes=K, val_protocol=EvalProtocol(scales=(0.5,)))
    x = image(20, 30)
    with torch.no_grad():
        want = F.interpolate(
            net(F.interpolate(x, size=(10, 15), mode="bilinear", align_corners=False))["out"],
            size=(20, 30),
            mode="bilinear",
            align_corners=False,
        ).argmax(1)
    mask = want.clone()
    mask[:, :2] = 255
    out = task._eval_step("val", {"image": x, "mask": mask})
    assert torch.equal(out["pred"], want)
    # Every valid pixel is counted as correct: the prediction is compared at the label's size.
    assert task.metrics["val"].compute()["pixel_acc"].item() == pytest.approx(1.0)


def test_each_stage_uses_its_own_protocol():
    net = ConvNet()
    task = SegmentationTask(
        net,
        num_classes=K,
        val_protocol=EvalProtocol(),
        test_protocol=EvalProtocol(mode="slide", crop_size=(8, 8), stride=(8, 8), flip=True),
    )
    b = {"image": image(16, 16), "mask": torch.zeros(2, 16, 16, dtype=torch.long)}
    with torch.no_grad():
        task._eval_step("val", b)
        assert net.calls == [(16, 16)]
        net.calls.clear()
        task._eval_step("test", b)
        assert net.calls == [(8, 8)] * 8  # 4 windows x (plain + mirrored)
        net.calls.clear()
        pred = task.predict_step(b, 0)["pred"]
    assert net.calls == [(8, 8)] * 8
    assert pred.shape == (2, 16, 16)


def test_protocols_are_recorded_as_plain_values_in_checkpoints():
    protocol = EvalProtocol(mode="slide", crop_size=(8, 8), stride=(4, 4), scales=(0.5, 1.0))
    task = SegmentationTask(ConvNet(), num_classes=K, test_protocol=protocol)
    buf = io.BytesIO()
    torch.save({"hyper_parameters": dict(task.hparams)}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)["hyper_parameters"]  # no pickled classes
    assert saved["test_protocol"] == {
        "mode": "slide",
        "crop_size": [8, 8],
        "stride": [4, 4],
        "scales": [0.5, 1.0],
        "flip": False,
    }
    assert saved["val_protocol"]["mode"] == "whole"
