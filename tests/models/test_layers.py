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
