"""Upsampling by transposed convolution initialised to bilinear interpolation (FCN, DRN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.layers.conv import in_float32


def bilinear_kernel(size: int) -> Tensor:
    """The ``size x size`` bilinear interpolation filter of FCN's ``upsample_filt``.

    A transposed convolution with this kernel, stride ``f`` and ``size = 2f`` reproduces
    bilinear interpolation by a factor ``f`` away from the borders.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor
    return (filt[:, None] * filt[None, :]).float()


class BilinearConvTranspose2d(nn.Module):
    """``x factor`` upsampling of a ``channels``-map by a bilinear-initialised transposed conv.

    Args:
        channels: input and output channels (the number of classes for a score map).
        factor: the upsampling factor ``f``; the kernel is ``2f x 2f`` with stride ``f``.
        learnable: ``True`` builds a full ``channels x channels`` ``nn.ConvTranspose2d`` whose
            weight starts as bilinear on the diagonal (FCN's learned intermediate
            deconvolutions). ``False`` keeps the bilinear filter fixed as a buffer and applies it
            per channel (groups = channels): no parameters, as FCN's final deconvolution and
            DRN's segmentation upsampler.
        padding: the transposed convolution's padding. ``None`` (the default) uses ``f // 2``,
            which makes the output exactly ``f`` times the input; FCN's Caffe geometry uses 0
            and crops afterwards.
    """

    def __init__(
        self, channels: int, factor: int, *, learnable: bool, padding: int | None = None
    ) -> None:
        super().__init__()
        self.channels, self.factor, self.learnable = channels, factor, learnable
        self.padding = factor // 2 if padding is None else padding
        kernel = bilinear_kernel(2 * factor)
        if learnable:
            self.deconv = nn.ConvTranspose2d(
                channels, channels, 2 * factor, stride=factor, padding=self.padding, bias=False
            )
            with torch.no_grad():
                self.deconv.weight.zero_()
                idx = torch.arange(channels)
                self.deconv.weight[idx, idx] = kernel
        else:
            self.register_buffer("weight", kernel.expand(channels, 1, -1, -1).clone())

    def forward(self, x: Tensor) -> Tensor:
        if self.learnable:
            return self.deconv(x)
        # Per channel (grouped): in float32, which bf16 autocast would slow down (in_float32).
        return in_float32(
            F.conv_transpose2d,
            x,
            self.weight,
            stride=self.factor,
            padding=self.padding,
            groups=self.channels,
        )

    def extra_repr(self) -> str:
        return f"{self.channels}, factor={self.factor}, learnable={self.learnable}"
