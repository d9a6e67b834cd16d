"""Backbone contract and pretrained-weight loading (on weights the test writes itself)."""

from __future__ import annotations

import pytest
import torch

from segbench.models.backbones import VGG16, Backbone, DRNBackbone, ResNet, TinyBackbone

BACKBONES = [
    pytest.param(lambda os: VGG16(width=1 / 16, output_stride=os), id="vgg16"),
    pytest.param(
        lambda os: VGG16(width=1 / 16, output_stride=os, batch_norm=True, fc=False),
        id="vgg16_bn-nofc",
    ),
    pytest.param(lambda os: TinyBackbone(width=4, output_stride=os), id="tiny"),
    pytest.param(lambda os: ResNet(depth=18, width=1 / 8, output_stride=os), id="resnet18"),
    pytest.param(
        lambda os: ResNet(
            depth=50,
            width=1 / 8,
            output_stride=os,
            stem="deep",
            first_dilation="full",
            multi_grid=(1, 2, 4),
        ),
        id="resnet50-deep",
    ),
    pytest.param(lambda os: DRNBackbone(width=1 / 8, output_stride=os), id="drn-c-26"),
    pytest.param(
        lambda os: DRNBackbone(
            depth=50, width=1 / 8, output_stride=os, remove_max_pooling=False, add_levels_78=False
        ),
        id="drn-a-50",
    ),
    pytest.param(
        lambda os: DRNBackbone(width=1 / 8, output_stride=os, plain_conv_levels=True),
        id="drn-d-22",
    ),
]


@pytest.mark.parametrize("make", BACKBONES)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_features_match_the_declared_channels_and_strides(make, output_stride):
    net = make(output_stride).eval()
    assert isinstance(net, Backbone)  # each output described once, in net.feature_info
    assert max(net.strides) == output_stride == net.output_stride
    assert list(net.strides) == sorted(net.strides)
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 96))
    assert len(feats) == len(net.feature_info)
    for f, info in zip(feats, net.feature_info, strict=True):
        assert f.shape[1:] == (info.channels, 64 // info.stride, 96 // info.stride)
        assert net.feature(info.name) == info
        assert net.named(feats)[info.name] is f
    with pytest.raises(KeyError, match="has no feature 'nope'"):
        net.feature("nope")


def fake_torchvision_vgg_state(width: float) -> dict[str, torch.Tensor]:
    """A torchvision-format VGG16 state dict for a narrow trunk (keys as in vgg16-397923af)."""
    net = VGG16(width=width, fc=False)
    state = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    c5, fc = round(512 * width), round(4096 * width)
    state |= {
        "classifier.0.weight": torch.randn(fc, c5 * 49),
        "classifier.0.bias": torch.randn(fc),
        "classifier.3.weight": torch.randn(fc, fc),
        "classifier.3.bias": torch.randn(fc),
        "classifier.6.weight": torch.randn(1000, fc),
        "classifier.6.bias": torch.randn(1000),
    }
    return state


def test_torchvision_weights_load_from_a_file_with_fc_layers_reshaped(tmp_path):
    state = fake_torchvision_vgg_state(1 / 16)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    net = VGG16(width=1 / 16, weights=str(path))
    assert torch.equal(net.features[0].weight, state["features.0.weight"])
    assert torch.equal(net.fc6.weight.flatten(1), state["classifier.0.weight"])
    assert torch.equal(net.fc7.weight.flatten(1), state["classifier.3.weight"])


def test_torchvision_weights_api_is_used_for_enum_names(monkeypatch):
    state = fake_torchvision_vgg_state(1 / 16)
    from torchvision.models import VGG16_Weights

    monkeypatch.setattr(
        VGG16_Weights.IMAGENET1K_V1.__class__, "get_state_dict", lambda self, progress=True: state
    )
    net = VGG16(width=1 / 16, weights="IMAGENET1K_V1")
    assert torch.equal(net.features[2].weight, state["features.2.weight"])


def test_weights_that_do_not_fit_name_the_problem(tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save(fake_torchvision_vgg_state(1 / 8), path)
    with pytest.raises(ValueError, match=r"shape mismatch.*width=1\.0"):
        VGG16(width=1 / 16, weights=str(path))


def test_unreachable_download_says_where_to_put_the_file(monkeypatch):
    from torchvision.models import VGG16_Weights

    def offline(self, progress=True):
        raise OSError("network unreachable")

    monkeypatch.setattr(VGG16_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"vgg16-397923af\.pth.*null"):
        VGG16(width=1 / 16, weights="IMAGENET1K_V1")


def test_a_torch_download_folder_this_user_cannot_write_names_torch_home(tmp_path, monkeypatch):
    """torch downloads weights into $TORCH_HOME (default ~/.cache/torch): with a home this user
    cannot write (HOME=/nonexistent, found as a non-root user) the error said 'could not
    download' and to put the file in that same unwritable folder. Here TORCH_HOME lies under a
    file, which root cannot write either; nothing is downloaded (the folder fails first)."""
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "a-file" / "torch"))
    with pytest.raises(ValueError, match=r"torch's download folder .*a-file/torch/hub/checkpoints "
                       r"cannot be written .*set TORCH_HOME"):  # fmt: skip
        VGG16(width=1 / 16, weights="IMAGENET1K_V1")


def test_unknown_weights_name_is_an_error():
    with pytest.raises(ValueError, match="unknown backbone weights 'IMAGENET_V9'"):
        VGG16(width=1 / 16, weights="IMAGENET_V9")


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_resnet_has_torchvision_names_and_shapes(depth):
    """Same keys and shapes as torchvision's model (minus fc): its weights load key for key."""
    import torchvision

    with torch.device("meta"):
        ours = ResNet(depth=depth).state_dict()
        theirs = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    theirs = {k: v.shape for k, v in theirs.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == theirs


def dilations(net: ResNet, layer: str) -> list[int]:
    return [blk.conv2.dilation[0] for blk in getattr(net, layer)]


def test_first_block_dilation_conventions():
    kw = {"depth": 50, "width": 1 / 8, "output_stride": 8}
    assert dilations(ResNet(**kw, first_dilation="previous"), "layer4") == [2, 4, 4]
    assert dilations(ResNet(**kw, first_dilation="one"), "layer3") == [1, 2, 2, 2, 2, 2]
    assert dilations(ResNet(**kw, first_dilation="one"), "layer4") == [1, 4, 4]
    assert dilations(ResNet(**kw, first_dilation="full", multi_grid=(1, 2, 4)), "layer4") == [
        4,
        8,
        16,
    ]
    assert dilations(ResNet(**kw, first_dilation="full"), "layer3") == [2] * 6


def test_resnet_torchvision_weights_load_without_fc(tmp_path):
    import torchvision

    theirs = torchvision.models.resnet18().state_dict()
    path = tmp_path / "r18.pth"
    torch.save(theirs, path)
    net = ResNet(depth=18, weights=str(path))
    assert torch.equal(net.layer3[1].conv2.weight, theirs["layer3.1.conv2.weight"])
