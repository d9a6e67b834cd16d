"""GALD against its reference code (lxtGH/GALD-DGCNet, libs/models/GALDNet.py)."""

from __future__ import annotations

import pytest
import torch

from segbench.models import GALD
from segbench.models.layers import LocalDistribution
from segbench.models.layers.global_context import (
    NonLocal2d,
    PyramidPooling,
    StridedCGNL,
)


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# The reference GALDNet (GALD_res50 / GALD_res101, 19 classes) has 52,402,662 / 71,394,790
# parameters; segbench drops the 2,560 biases of convolutions that BatchNorm follows (the aux
# head's 3x3 convolution: 512; the GA's and LD's four depthwise convolutions: 4 x 512).
@pytest.mark.parametrize(("depth", "params"), [(50, 52_402_662 - 2_560), (101, 71_394_790 - 2_560)])
def test_parameter_count_matches_the_reference_code(depth, params):
    with torch.device("meta"):
        net = GALD(19, depth=depth)
    assert count(net) == params


def test_backbone_is_the_codes_dilated_resnet():
    net = GALD(19, depth=50, width=1 / 16)
    bb = net.backbone
    assert [b.conv2.dilation for b in bb.layer3] == [(2, 2)] * 6
    assert [b.conv2.dilation for b in bb.layer4] == [(4, 4), (8, 8), (16, 16)]
    assert all(b.conv2.stride == (1, 1) for b in [*bb.layer3, *bb.layer4])
    assert bb.conv1.kernel_size == (3, 3)
    assert bb.conv3.out_channels == 2 * bb.conv1.out_channels
    with torch.no_grad():
        feats = bb.eval()(torch.randn(1, 3, 64, 96))
    assert feats[3].shape[-2:] == feats[4].shape[-2:] == (8, 12)


def test_head_layout_at_full_width():
    with torch.device("meta"):
        net = GALD(19, depth=50)
    head = net.head
    assert head.conva[0].in_channels == 2048
    assert head.conva[0].out_channels == 512
    assert head.bottleneck[0].in_channels == 2048 + 512
    assert head.classifier.out_channels == 19
    assert isinstance(head.block.ga, StridedCGNL)
    assert isinstance(head.block.ld, LocalDistribution)
    assert head.block.ga.cgnl.t.out_channels == 256
    assert head.block.ga.cgnl.z.groups == 8
    assert net.aux_head.conv[0].in_channels == 1024


@pytest.mark.parametrize(
    ("ga", "kind"),
    [("cgnl", StridedCGNL), ("nonlocal", NonLocal2d), ("psp", PyramidPooling), ("gap", None)],
)
def test_ga_switch_builds_the_module(ga, kind):
    net = GALD(5, depth=50, width=1 / 16, ga=ga)
    if kind is not None:
        assert isinstance(net.head.block.ga, kind)
    else:
        assert len(net.head.block.ga.stages) == 1  # GAP: the pyramid with the single bin 1


def test_switches_that_turn_parts_off_do_not_build_them():
    base = GALD(5, depth=50, width=1 / 16, ga="none", ld=False, aux=False)
    assert base.head.block.ga is None
    assert base.head.block.ld is None
    assert base.aux_head is None
    assert not list(base.head.block.parameters())
    with_ld = GALD(5, depth=50, width=1 / 16, ga="none", ld=True, aux=False)
    assert count(with_ld) - count(base) == count(with_ld.head.block.ld)
    out = base.eval()(torch.randn(1, 3, 32, 32))
    assert set(out) == {"out"}


def test_extra_residual_is_the_codes_galdblock():
    torch.manual_seed(0)
    net = GALD(5, depth=50, width=1 / 16, ld_extra_residual=True).eval()
    block = net.head.block
    x = torch.randn(2, block.ld.dconv1[0].in_channels, 8, 8)
    with torch.no_grad():
        g = block.ga(x)
        assert torch.allclose(block(x), 2 * g + g * block.ld.mask(g), atol=1e-6)
        block.extra_residual = False
        assert torch.allclose(block(x), g + g * block.ld.mask(g), atol=1e-6)


def test_aux_is_returned_in_train_and_eval():
    net = GALD(5, depth=50, width=1 / 16)
    x = torch.randn(2, 3, 32, 48)
    assert set(net.train()(x)) == {"out", "aux"}
    with torch.no_grad():
        out = net.eval()(x)
    assert set(out) == {"out", "aux"}
    assert out["aux"].shape == (2, 5, 32, 48)


def test_width_keeps_the_head_divisible_by_the_cgnl_groups():
    for width in (1 / 16, 0.1, 0.125, 0.3):
        net = GALD(5, depth=18, width=width)
        c = net.head.conva[0].out_channels
        assert c % 16 == 0, (width, c)


@pytest.mark.parametrize(("strided", "grid"), [(3, 2), (2, 4), (1, 8), (0, 16)])
def test_ld_strides_sets_the_mask_grid_with_the_same_parameters(strided, grid):
    ld = LocalDistribution(8, strided)
    x = torch.randn(1, 8, 16, 16)
    coarse = ld.dconv3(ld.dconv2(ld.dconv1(x)))
    assert coarse.shape[-2:] == (grid, grid)
    assert ld.mask(x).shape == x.shape
    assert sum(p.numel() for p in ld.parameters()) == sum(
        p.numel() for p in LocalDistribution(8).parameters()
    )
    net = GALD(5, depth=18, width=1 / 16, ld_strides=strided)
    assert net.head.block.ld.dconv1[0].stride == ((2, 2) if strided >= 1 else (1, 1))
