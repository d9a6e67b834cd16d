"""Global aggregation modules and GALD's local distribution on hand-checkable inputs."""

from __future__ import annotations

import pytest
import torch

from segbench.models.layers import GlobalAggregation, LocalDistribution, global_aggregation
from segbench.models.layers.global_context import CompactGeneralizedNonLocal, NonLocal2d


def grouped_dot_product_reference(block: CompactGeneralizedNonLocal, x: torch.Tensor):
    """CGNL's dot-product kernel written out per image and group, as in the CGNL paper:
    ``y_g = theta_g * <phi_g, g_g>`` over all channels and positions of group g."""
    t, p, g = block.t(x), block.p(x), block.g(x)
    c = t.shape[1] // block.groups
    out = torch.empty_like(t)
    for n in range(x.shape[0]):
        for k in range(block.groups):
            s = slice(k * c, (k + 1) * c)
            out[n, s] = t[n, s] * torch.dot(p[n, s].flatten(), g[n, s].flatten())
    return x + block.gn(block.z(out))


def test_cgnl_is_the_grouped_dot_product_kernel():
    torch.manual_seed(0)
    block = CompactGeneralizedNonLocal(16, 8, groups=4)
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        assert torch.allclose(block(x), grouped_dot_product_reference(block, x), atol=1e-5)


def test_cgnl_stays_finite_under_mixed_precision():
    torch.manual_seed(0)
    block = CompactGeneralizedNonLocal(16, 8, groups=8)
    x = 30 * torch.randn(1, 16, 40, 40).abs()  # an affinity far beyond float16's 65504
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_cgnl_runs_in_the_modules_own_dtype():
    # segbench erf runs networks in float64; CGNL once cast its input to float32 ("Input type
    # (torch.FloatTensor) and weight type (torch.DoubleTensor) should be the same").
    torch.manual_seed(0)
    block = CompactGeneralizedNonLocal(16, 8, groups=4).double()
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        y = block(x)
    assert y.dtype == torch.float64
    assert torch.allclose(y, grouped_dot_product_reference(block, x))


def test_cgnl_rejects_groups_that_do_not_divide():
    with pytest.raises(ValueError, match="groups"):
        CompactGeneralizedNonLocal(12, 6, groups=8)


def test_nonlocal_starts_as_the_identity_and_mixes_all_positions():
    torch.manual_seed(0)
    block = NonLocal2d(8).eval()
    x = torch.randn(1, 8, 4, 5)
    with torch.no_grad():
        assert torch.equal(block(x), x)
        torch.nn.init.ones_(block.bn.weight)
        x2 = x.clone()
        x2[..., 0, 0] += 10.0  # one position changes every output position
        delta = (block(x2) - x2) - (block(x) - x)
    assert (delta.abs().sum(1) > 0).all()


@pytest.mark.parametrize("kind", ["cgnl", "nonlocal", "psp", "gap"])
def test_ga_modules_keep_the_shape_on_odd_and_tiny_maps(kind: GlobalAggregation):
    torch.manual_seed(0)
    block = global_aggregation(kind, 32).eval()
    for size in [(13, 9), (2, 3), (1, 1)]:
        x = torch.randn(2, 32, *size)
        with torch.no_grad():
            assert block(x).shape == x.shape


def test_none_builds_nothing():
    assert global_aggregation("none", 32) is None


@pytest.mark.parametrize("kind", ["cgnl", "nonlocal", "psp", "gap"])
def test_ga_modules_are_global(kind: GlobalAggregation):
    """A change at one corner changes the output at the opposite corner (a 3x3 convolution
    stack of this depth could not)."""
    torch.manual_seed(0)
    block = global_aggregation(kind, 16).eval()
    if isinstance(block, NonLocal2d):
        torch.nn.init.ones_(block.bn.weight)
    x = torch.randn(1, 16, 12, 12)
    x2 = x.clone()
    x2[..., 0, 0] += 5.0
    with torch.no_grad():
        delta = block(x2)[..., -1, -1] - block(x)[..., -1, -1]
    assert delta.abs().max() > 1e-4


def test_ld_output_is_x_plus_x_times_a_mask_in_half_open_unit_half():
    torch.manual_seed(0)
    ld = LocalDistribution(6).train()
    x = torch.randn(3, 6, 17, 11)
    m = ld.mask(x)
    assert m.shape == x.shape
    assert (m >= 0.5).all()
    assert (m < 1).all()
    ld.eval()
    with torch.no_grad():
        m = ld.mask(x)
        assert torch.allclose(ld(x), x + x * m)


def test_ld_mask_is_spatial_on_small_maps():
    """Padded depthwise convolutions keep a 16 x 16 map's mask spatial (2 x 2 cells), where the
    code's unpadded ones would collapse it to one value per channel."""
    torch.manual_seed(0)
    ld = LocalDistribution(4).eval()
    with torch.no_grad():
        for conv in (ld.dconv1[0], ld.dconv2[0], ld.dconv3[0]):
            conv.weight.normal_()
        m = ld.mask(torch.randn(1, 4, 16, 16))
    assert m.flatten(2).std(-1).min() > 0
