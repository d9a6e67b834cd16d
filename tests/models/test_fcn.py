"""FCN specifics: parameter counts, initialisation, staged training, reference geometry."""

from __future__ import annotations

import pytest
import torch

from segbench.models import FCN
from segbench.models.layers import bilinear_kernel
from segbench.task import SegmentationTask


def count(net: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable)


# Derived from the reference voc-fcn*s prototxts' layer shapes for 21 classes: VGG16 convs
# 14,714,688 + fc6 102,764,544 + fc7 16,781,312 + score_fr 86,037 (the paper's "134M"); 16s adds
# score_pool4 10,773 and a learned 4x4 deconvolution 7,056; 8s adds score_pool3 5,397 and another
# 7,056. The final deconvolution is fixed (no parameters) unless upsample_learnable="all", where
# it has 21 * 21 * 2f * 2f weights like the Caffe blob.
@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("32s", 134_346_581),
        ("16s", 134_364_410),
        ("8s", 134_376_863),
    ],
)
def test_full_width_parameter_counts(variant, expected):
    with torch.device("meta"):
        net = FCN(21, variant=variant)
    assert count(net) == count(net, trainable=True) == expected


def test_learned_final_deconvolution_counts_like_the_caffe_blob():
    with torch.device("meta"):
        net = FCN(21, variant="32s", upsample_learnable="all")
    assert count(net) == 134_346_581 + 21 * 21 * 64 * 64


def test_scores_start_at_zero_and_deconvolutions_bilinear():
    net = FCN(4, variant="8s", width=1 / 16)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert not getattr(net, name).weight.any()
        assert not getattr(net, name).bias.any()
    w = net.upscore2.deconv.weight
    assert torch.equal(w[1, 1], bilinear_kernel(4))
    assert not w[0, 1].any()
    assert not any(p.requires_grad for p in net.upscore.parameters())
    out = net.eval()(torch.randn(1, 3, 64, 64))["out"]
    assert not out.any()


def test_staged_16s_starts_from_the_32s_predictions(tmp_path):
    torch.manual_seed(0)
    fcn32 = FCN(3, variant="32s", width=1 / 16, caffe_padding=False).eval()
    with torch.no_grad():
        fcn32.score_fr.weight.normal_()
        fcn32.score_fr.bias.normal_()
    ckpt = tmp_path / "fcn32s.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in fcn32.state_dict().items()}}, ckpt)

    task = SegmentationTask(
        FCN(3, variant="16s", width=1 / 16, caffe_padding=False), num_classes=3, init_from=str(ckpt)
    )
    task.load_matching(str(ckpt))
    fcn16 = task.net.eval()
    assert torch.equal(fcn16.score_fr.weight, fcn32.score_fr.weight)
    assert not fcn16.score_pool4.weight.any()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        p32, p16 = fcn32(x)["out"], fcn16(x)["out"]
    # x2 then x16 bilinear is not exactly x32 bilinear; the maps must agree up to that.
    assert torch.corrcoef(torch.stack([p32.flatten(), p16.flatten()]))[0, 1] > 0.99


def test_at_once_scales_the_skips():
    net = FCN(3, variant="8s", width=1 / 16, caffe_padding=False, at_once=True).eval()
    with torch.no_grad():
        for s in (net.score_pool4, net.score_pool3):
            s.weight.fill_(1.0)
        feats = net.backbone(torch.randn(1, 3, 64, 64))
        base = net.score_pool4(feats[3])
        scaled = net._skip(net.score_pool4, feats[3], "pool4", 5, base)
    assert torch.allclose(
        scaled - net.score_pool4.bias.view(1, -1, 1, 1),
        0.01 * (base - net.score_pool4.bias.view(1, -1, 1, 1)),
        atol=1e-6,
    )


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_caffe_geometry_gives_input_size_for_odd_sizes(variant):
    net = FCN(2, variant=variant, width=1 / 16, caffe_padding=True).eval()
    for size in [(1, 1), (37, 50), (100, 33)]:
        with torch.no_grad():
            assert net(torch.randn(1, 3, *size))["out"].shape[-2:] == size
