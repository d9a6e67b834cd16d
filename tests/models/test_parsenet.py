"""ParseNet specifics: the baseline is FCN-32s, early = late algebraically, global context reaches
beyond the trunk's receptive field, normalisation, parameter counts, switches that build nothing."""

from __future__ import annotations

import pytest
import torch

from segbench.models import FCN, ParseNet
from segbench.models.layers import L2Norm

TINY = {"width": 1 / 16, "batch_norm": True}


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def perturb(net: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter off its initial value (the classifiers start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("layers", ["fc7", "fc7+conv5+conv4+conv3"])
def test_full_width_parameter_counts(layers):
    """ParseNet adds to FCN-32s's 134,346,581 parameters (21 classes) only the pool6 weights of
    the classifier and one scale per fused channel; conv5/4/3 add their classifier weights and
    scales (512 + 512 + 256 channels; early fusion has one classifier, so one bias)."""
    with torch.device("meta"):
        net = ParseNet(21, layers=layers)
        baseline = ParseNet(21, layers=layers, global_context=False, normalize=False)
    fcn32s = 134_346_581
    extra_local = 0 if layers == "fc7" else (512 + 512 + 256) * 21
    assert count(baseline) == fcn32s + extra_local
    local_channels = 4096 + (0 if layers == "fc7" else 512 + 512 + 256)
    assert count(net) == count(baseline) + 4096 * 21 + (local_channels + 4096)


def test_the_baseline_is_fcn32s_from_the_same_code_path():
    """global_context=False, normalize=False: FCN-32s's weights load and the outputs agree."""
    fcn = FCN(5, variant="32s", caffe_padding=False, **TINY).eval()
    perturb(fcn)
    net = ParseNet(5, global_context=False, normalize=False, **TINY).eval()
    state = {k.replace("score_fr.", "classifier."): v for k, v in fcn.state_dict().items()}
    net.load_state_dict(state)
    x = torch.randn(2, 3, 70, 100)
    with torch.no_grad():
        assert torch.allclose(net(x)["out"], fcn(x)["out"], atol=1e-5)


@pytest.mark.parametrize("layers", ["fc7", "fc7+conv5+conv4+conv3"])
@pytest.mark.parametrize("normalize", [True, False])
def test_early_and_late_fusion_compute_the_same_function(layers, normalize):
    """Concatenation + one 1x1 classifier equals the sum of per-feature classifiers (paper section
    3.2's remark): splitting the early classifier's weights into the late ones (biases summed into
    one) gives the same output."""
    kwargs = {**TINY, "layers": layers, "normalize": normalize}
    early = ParseNet(5, fusion="early", **kwargs).eval()
    perturb(early)
    late = ParseNet(5, fusion="late", **kwargs).eval()
    state = {k: v for k, v in early.state_dict().items() if not k.startswith("classifier.")}
    w, b = early.classifier.weight, early.classifier.bias
    start = 0
    for i, (name, c) in enumerate(early.channels.items()):
        state[f"classifiers.{name}.weight"] = w[:, start : start + c]
        state[f"classifiers.{name}.bias"] = b if i == 0 else torch.zeros_like(b)
        start += c
    late.load_state_dict(state)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = early(x)["out"], late(x)["out"]
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    assert a.abs().max() > 1  # not trivially equal


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_global_context_reaches_beyond_the_trunk_receptive_field(fusion):
    """On an image much wider than fc7's 404-pixel field, a change at the far left moves the
    prediction at the far right only with global context."""
    x = torch.randn(1, 3, 32, 1024)
    y = x.clone()
    y[..., :64] = torch.randn(1, 3, 32, 64)
    for context in (True, False):
        net = ParseNet(3, global_context=context, fusion=fusion, **TINY).eval()
        perturb(net)
        with torch.no_grad():
            far = (net(x)["out"] - net(y)["out"])[..., -64:].abs().max()
        assert (far > 1e-4) if context else (far == 0), context


def test_the_global_feature_averages_only_the_cells_that_overlap_the_image():
    """pool6 of a 40 x 72 image padded to 160 x 160 averages the 2 x 3 fc7 cells that see the
    image, not the 5 x 5 map that is mostly padding."""
    net = ParseNet(3, normalize=False, **TINY).eval()
    perturb(net)
    x = torch.nn.functional.pad(torch.randn(1, 3, 40, 72), (0, 88, 0, 120))
    with torch.no_grad():
        pool6 = net.fused_features(x, (40, 72))["pool6"]
        fc7 = net.backbone(x)[-1]
    assert fc7.shape[-2:] == (5, 5)
    assert torch.allclose(pool6, fc7[..., :2, :3].mean((-2, -1), keepdim=True), atol=1e-6)
    assert not torch.allclose(pool6, fc7.mean((-2, -1), keepdim=True), atol=1e-3)


def test_fused_features_have_the_scale_as_their_norm():
    net = ParseNet(3, layers="fc7+conv5+conv4+conv3", scale_init=20.0, **TINY).eval()
    with torch.no_grad():
        feats = net.fused_features(torch.randn(2, 3, 64, 64), (64, 64))
    assert set(feats) == {"fc7", "conv5", "conv4", "conv3", "pool6"}
    assert feats["conv3"].shape[-1] == 8
    assert feats["fc7"].shape[-1] == 2
    assert feats["pool6"].shape[-2:] == (1, 1)
    for name, f in feats.items():
        norms = f.norm(dim=1)
        alive = norms > 0  # positions where every channel is a dead ReLU stay at zero
        assert torch.allclose(norms[alive], torch.full_like(norms[alive], 20.0), rtol=1e-4), name
    assert net.output_stride == 8


def test_switches_that_turn_parts_off_do_not_build_them():
    base = ParseNet(3, global_context=False, normalize=False, **TINY)
    assert not hasattr(base, "pool6")
    assert not hasattr(base, "norms")
    assert not any(isinstance(m, L2Norm) for m in base.modules())
    fixed = ParseNet(3, scale_learnable=False, **TINY)
    learned = ParseNet(3, **TINY)
    scales = sum(c for c in learned.channels.values())
    assert count(learned) - count(fixed) == scales
    late = ParseNet(3, fusion="late", **TINY)
    assert not hasattr(late, "classifier")
    assert set(late.classifiers) == {"fc7", "pool6"}
    # Late fusion has one bias per feature: the only parameters early fusion lacks.
    assert count(late) - count(learned) == 3


def test_classifiers_start_at_zero_so_training_starts_from_a_constant_prediction():
    net = ParseNet(4, **TINY).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))["out"]
    assert torch.equal(out, torch.zeros_like(out))
