"""Shared layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segbench.models.layers import BilinearConvTranspose2d


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
@pytest.mark.parametrize("learnable", [True, False])
def test_bilinear_deconvolution_is_bilinear_interpolation_away_from_borders(factor, learnable):
    x = torch.randn(1, 3, 6, 5)
    up = BilinearConvTranspose2d(3, factor, learnable=learnable)
    with torch.no_grad():
        got = up(x)
    want = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert got.shape == want.shape
    m = factor  # the first and last input pixel's footprint sees the zero padding
    assert torch.allclose(got[..., m:-m, m:-m], want[..., m:-m, m:-m], atol=1e-5)


def test_fixed_upsampling_has_no_parameters():
    assert not list(BilinearConvTranspose2d(21, 8, learnable=False).parameters())
    assert (
        sum(p.numel() for p in BilinearConvTranspose2d(21, 2, learnable=True).parameters())
        == 21 * 21 * 4 * 4
    )


def test_float32_conv_keeps_nn_conv2d_keys_and_computes_in_float32_under_bf16_autocast():
    from segbench.models.layers.conv import Float32Conv2d

    conv = Float32Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=True)
    plain = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=True)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 8, 9, 9).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv(x)
        autocast_plain = plain(x)
    assert got.dtype == torch.bfloat16 == autocast_plain.dtype  # the caller's dtype, as before
    want = plain(x.float())  # the float32 result on the same (bf16) input, rounded once
    assert torch.equal(got, want.bfloat16())
    y = Float32Conv2d(3, 4, 1)(torch.randn(1, 3, 5, 5))
    assert y.dtype == torch.float32
    assert y.shape == (1, 4, 5, 5)


def test_fixed_upsampling_under_bf16_autocast_is_the_float32_result_rounded_once():
    up = BilinearConvTranspose2d(5, 8, learnable=False)
    x = torch.randn(2, 5, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = up(x)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, up(x.float()).bfloat16())


@pytest.mark.parametrize(("factor", "padding"), [(32, 16), (8, 4), (32, 0), (8, 0), (2, 1)])
def test_fixed_upsampling_is_the_grouped_transposed_convolution(factor, padding):
    """The separable matrix form computes the same map as FCN's per-channel deconvolution, on
    every padding (FCN's Caffe geometry: 0; DRN: 4; the default f // 2)."""
    from segbench.models.layers import bilinear_kernel

    up = BilinearConvTranspose2d(3, factor, learnable=False, padding=padding).double()
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    weight = bilinear_kernel(2 * factor).double().expand(3, 1, -1, -1)
    want = F.conv_transpose2d(x, weight, stride=factor, padding=padding, groups=3)
    got = up(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-12)
    (g_got,) = torch.autograd.grad(got.square().sum(), x)
    (g_want,) = torch.autograd.grad(want.square().sum(), x)
    assert torch.allclose(g_got, g_want, atol=1e-10)
    # The state dict keeps the deconvolution's weight (checkpoints written before hold it).
    assert torch.equal(up.state_dict()["weight"], weight)
    with torch.device("meta"):  # FLOP counting builds and runs networks on the meta device
        assert BilinearConvTranspose2d(3, factor, learnable=False)(
            torch.empty(1, 3, 4, 4)
        ).shape == (1, 3, 4 * factor, 4 * factor)


@pytest.mark.parametrize(("factor", "padding"), [(32, 16), (8, 0), (2, 1)])
def test_fixed_upsampling_compiles_without_a_graph_break(factor, padding):
    """The upsampling matrices are traced into the compiled graph (no data-dependent shape where
    they are built), and give the eager result, under bf16 autocast too."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    up = BilinearConvTranspose2d(3, factor, learnable=False, padding=padding)
    x = torch.randn(2, 3, 5, 7)
    graphs = CompileCounter()
    compiled = torch.compile(up, backend=graphs)
    assert torch.equal(compiled(x), up(x))
    assert graphs.frame_count == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(compiled(x), up(x))


def test_fixed_upsampling_trains_after_a_prediction_at_the_same_size():
    """The upsampling matrices are cached per size: one first built under inference mode (a
    prediction, the validation figure, a benchmark's forward) was an inference tensor, and every
    later training step at that size failed ('Inference tensors cannot be saved for
    backward'). The size here is one no other test uses, so the cache is cold."""
    up = BilinearConvTranspose2d(2, 8, learnable=False)
    x = torch.randn(1, 2, 7, 9)
    with torch.inference_mode():
        expected = up(x)
    x.requires_grad_(True)
    y = up(x)
    y.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(y.detach(), expected)
