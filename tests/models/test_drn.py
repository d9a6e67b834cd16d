"""DRN specifics: official parameter counts and layouts, the degridding stages, the upsampler."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from torch import nn

from segbench.models import DRN, DRNClassifier
from segbench.models.backbones import DRNBackbone
from segbench.models.backbones.resnet import BasicBlock

A = {"remove_max_pooling": False, "add_levels_78": False, "first_dilation": "one"}
D = {"plain_conv_levels": True}

#: The named models of fyu/drn as switch settings (DRN-A with the official code's undilated
#: first blocks; DRN-C-58 with the official code's unused level-7 projection).
NAMED = {
    "drn_a_18": {"depth": 18, **A},
    "drn_a_34": {"depth": 34, **A},
    "drn_a_50": {"depth": 50, **A},
    "drn_c_26": {"depth": 18},
    "drn_c_42": {"depth": 34},
    "drn_c_58": {"depth": 50, "unused_projection": True},
    "drn_d_22": {"depth": 18, **D},
    "drn_d_38": {"depth": 34, **D},
    "drn_d_54": {"depth": 50, **D},
    "drn_d_105": {"depth": 101, **D},
}

# Derived once from fyu/drn's drn.py (DRN_A(block, layers) for A, with drn_a_18/34 as
# DRN_A(BasicBlock, [2, 2, 2, 2] / [3, 4, 6, 3]) like drn_a_50 = DRN_A(Bottleneck, [3, 4, 6, 3]);
# DRN(block, layers, arch="C"/"D") for C and D; num_classes=1000), rebuilt by hand from that file
# in a throwaway script outside this repository: the classifier's parameter count, and the first
# 16 hex digits of the SHA-256 of the sorted "key:shape" lines of its state dict without fc.*
# (so fyu/drn's checkpoints load key for key). The counts round to fyu/drn README's table
# (docs/papers/drn.md): 11.7M, 21.8M, 25.6M, 21.1M, 31.2M, 41.6M, 16.4M, 26.5M, 35.8M, 54.8M.
OFFICIAL = {
    "drn_a_18": (11_689_512, "8c978ff63e1cde5f"),
    "drn_a_34": (21_797_672, "389ab3ea5d5f2bfa"),
    "drn_a_50": (25_557_032, "e1a41511a9760791"),
    "drn_c_26": (21_126_584, "ebc7e66d1f6919c4"),
    "drn_c_42": (31_234_744, "71275e099b1b9d0c"),
    "drn_c_58": (41_591_608, "527d16f54abec0e5"),
    "drn_d_22": (16_393_752, "4962e9e3a0b8ed1a"),
    "drn_d_38": (26_501_912, "f7c157f9a445fcc4"),
    "drn_d_54": (35_809_176, "f8aff2eb286ab8b3"),
    "drn_d_105": (54_801_304, "1c60064f1a659443"),
}
README_MILLIONS = {
    "drn_a_18": 11.7,
    "drn_a_34": 21.8,
    "drn_a_50": 25.6,
    "drn_c_26": 21.1,
    "drn_c_42": 31.2,
    "drn_c_58": 41.6,
    "drn_d_22": 16.4,
    "drn_d_38": 26.5,
    "drn_d_54": 35.8,
    "drn_d_105": 54.8,
}


def count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def layout_signature(state: dict[str, torch.Tensor]) -> str:
    lines = sorted(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", list(NAMED))
def test_classifier_parameter_count_equals_the_official_one(name):
    with torch.device("meta"):
        net = DRNClassifier(1000, **NAMED[name])
    params, signature = OFFICIAL[name]
    assert count(net) == params
    assert round(params / 1e6, 1) == README_MILLIONS[name]
    trunk = {k.removeprefix("backbone."): v for k, v in net.state_dict().items()}
    assert layout_signature({k: v for k, v in trunk.items() if not k.startswith("fc.")}) == (
        signature
    )
    assert net.fc.weight.shape == (1000, net.backbone.out_channels[-1], 1, 1)


def test_drn_c_58_without_the_unused_projection():
    with torch.device("meta"):
        net = DRNClassifier(1000, depth=50)
    assert count(net) == OFFICIAL["drn_c_58"][0] - (2048 * 512 + 2 * 512)


def test_drn_b_26_adds_no_parameters_to_drn_c_26():
    """Residual connections of levels 7-8 are identities at 512 -> 512 channels."""
    with torch.device("meta"):
        b = DRNClassifier(1000, remove_residual_78=False)
    assert count(b) == OFFICIAL["drn_c_26"][0]


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_drn_a_is_torchvisions_resnet_key_for_key(depth, tmp_path):
    import torchvision

    theirs = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    with torch.device("meta"):
        ours = DRNBackbone(depth=depth, remove_max_pooling=False, add_levels_78=False)
    expected = {k: v.shape for k, v in theirs.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected
    if depth == 18:
        path = tmp_path / "r18.pth"
        torch.save(theirs, path)
        net = DRNBackbone(
            depth=18, remove_max_pooling=False, add_levels_78=False, weights=str(path)
        )
        assert torch.equal(net.layer4[1].conv2.weight, theirs["layer4.1.conv2.weight"])


def conv_dilations(group: nn.Module) -> list[int]:
    return [
        m.dilation[0] for m in group.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] == 3
    ]


def test_dilations_and_strides_of_the_levels():
    c = DRNBackbone(depth=18, width=1 / 8)
    assert c.feature_names == tuple(f"level{i}" for i in range(1, 9))
    assert c.strides == (1, 2, 4, 8, 8, 8, 8, 8)
    assert [conv_dilations(getattr(c, f"layer{i}")) for i in (5, 6, 7, 8)] == [
        [2, 2, 2, 2],
        [4, 4, 4, 4],
        [2, 2],
        [1, 1],
    ]
    a = DRNBackbone(depth=18, width=1 / 8, remove_max_pooling=False, add_levels_78=False)
    assert a.feature_names == ("stem", "level3", "level4", "level5", "level6")
    assert a.strides == (2, 4, 8, 8, 8)
    assert conv_dilations(a.layer4) == [4, 4, 4, 4]  # the paper's DRN-A: every block dilated
    official_a = DRNBackbone(
        depth=18, width=1 / 8, remove_max_pooling=False, add_levels_78=False, first_dilation="one"
    )
    assert conv_dilations(official_a.layer3) == [1, 1, 2, 2]
    assert conv_dilations(official_a.layer4) == [1, 1, 4, 4]


def test_each_degridding_step_changes_only_its_part():
    kw = {"depth": 18, "width": 1 / 8}
    a = DRNBackbone(**kw, remove_max_pooling=False, add_levels_78=False)
    s1 = DRNBackbone(**kw, add_levels_78=False)
    b = DRNBackbone(**kw, remove_residual_78=False)
    c = DRNBackbone(**kw)
    d = DRNBackbone(**kw, plain_conv_levels=True)
    # Step 1: the max-pool goes, two residual levels at strides 1 and 2 come; level 3 strides.
    assert hasattr(a, "maxpool")
    assert not hasattr(s1, "maxpool")
    assert s1.feature_names[:3] == ("level1", "level2", "level3")
    assert s1.layer3[0].conv1.stride == (2, 2)
    assert a.layer1[0].conv1.stride == (1, 1)
    assert s1.feature_names[-1] == "level6"
    # Step 2: levels 7 and 8, residual (DRN-B).
    assert b.feature_names[-2:] == ("level7", "level8")
    assert b.layer7[0].residual
    assert b.layer8[0].residual
    # Step 3: the same levels without residual connections (DRN-C), same parameters.
    assert not c.layer7[0].residual
    assert not c.layer8[0].residual
    assert count(b) == count(c)
    # Step 4: DRN-D's plain conv-BN-ReLU levels 1, 2, 7, 8.
    for name in ("layer1", "layer2", "layer7", "layer8"):
        kinds = [type(m) for m in getattr(d, name)]
        assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU], name
        assert not any(isinstance(m, BasicBlock) for m in getattr(d, name).modules())
    assert isinstance(d.layer0[0], nn.Conv2d)
    assert d.layer0[0].kernel_size == (7, 7)


def test_a_residual_free_block_ignores_its_input():
    """Level 7 of DRN-C: output = relu(bn(conv(relu(bn(conv(x)))))), no x added."""
    c = DRNBackbone(depth=18, width=1 / 8).eval()
    block = c.layer7[0]
    x = torch.randn(1, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        expected = block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))))
        assert torch.allclose(block(x), expected)


def official_upsampler(k: int) -> nn.ConvTranspose2d:
    """fyu/drn segment.py's ``up``: ConvTranspose2d(K, K, 16, 8, padding 4, groups K) filled by
    its ``fill_up_weights``: w[i, j] = (1 - |i / f - c|) (1 - |j / f - c|), f = 8, c = 15 / 16."""
    up = nn.ConvTranspose2d(k, k, 16, stride=8, padding=4, groups=k, bias=False)
    f = math.ceil(16 / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    idx = torch.arange(16, dtype=torch.float64)
    w1 = 1 - (idx / f - c).abs()
    with torch.no_grad():
        up.weight.copy_((w1[:, None] * w1[None, :]).float().expand(k, 1, 16, 16))
    return up


def test_segmentation_upsampler_is_the_official_frozen_deconvolution():
    net = DRN(5, width=1 / 8).eval()
    assert not any(p.requires_grad for p in net.up.parameters())
    score = torch.randn(2, 5, 6, 7)
    with torch.no_grad():
        assert torch.allclose(net.up(score), official_upsampler(5)(score), atol=1e-6)
    assert net.up(score).shape[-2:] == (48, 56)


def test_segmentation_logits_come_from_stride_8_scores():
    net = DRN(3, width=1 / 8, upsample="bilinear").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = net.backbone(x)
        assert feats[-1].shape[-2:] == (8, 12)
        out = net(x)["out"]
    assert out.shape == (1, 3, 64, 96)


def test_input_not_a_multiple_of_8_is_padded_and_cropped():
    net = DRN(3, width=1 / 8).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 37, 50))["out"].shape == (1, 3, 37, 50)


def test_segmentation_head_initialisation():
    torch.manual_seed(0)
    net = DRN(19, width=1 / 8)
    assert not net.seg.bias.any()
    assert net.seg.weight.std().item() == pytest.approx(math.sqrt(2 / 19), rel=0.2)
    assert count(net) == count(net.backbone) + net.seg.weight.numel() + 19


@pytest.mark.parametrize("name", [*NAMED, "drn_b_26"])
def test_segbench_summary_shows_the_official_counts(name, capsys):
    from segbench.cli import main
    from tests.helpers import REPO

    imagenet = REPO / "experiments" / "drn" / "imagenet"
    main(
        [
            "summary",
            "--config",
            str(imagenet / "base.yaml"),
            "--config",
            str(imagenet / "variants" / f"{name}.yaml"),
            "--input_size",
            "224",
            "224",
        ]
    )
    params = OFFICIAL["drn_c_26" if name == "drn_b_26" else name][0]
    out = capsys.readouterr().out
    assert f"| parameters | {params:,} (" in out
    assert "| output stride | 8 |" in out


def test_min_channels_floors_the_narrow_levels_only():
    c = DRNBackbone(width=1 / 4, min_channels=16)
    assert c.out_channels == (16, 16, 16, 32, 64, 128, 128, 128)
    a = DRNBackbone(width=1 / 4, min_channels=16, remove_max_pooling=False, add_levels_78=False)
    assert a.out_channels == (16, 16, 32, 64, 128)
    assert DRNBackbone(width=1 / 4).out_channels[:2] == (4, 8)
