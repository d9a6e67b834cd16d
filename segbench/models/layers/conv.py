"""The convolution block every architecture uses (conv (no bias) -> BN -> ReLU), and the grouped
convolutions that always compute in float32."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn


def in_float32(op: Callable[..., Tensor], x: Tensor, weight: Tensor, **kwargs) -> Tensor:
    """``op(x, weight, **kwargs)`` in float32 whatever the autocast, returned in ``x``'s dtype.

    For grouped (depthwise, per-channel) convolutions: torch 2.14's CPU kernels compute them
    6-10x slower in bfloat16 than in float32 (a depthwise 3 x 3 stride-2 conv of 128 channels
    at 16 x 16, batch 16: 6.3 vs 0.7 ms forward + backward; FCN's fixed x8 upsampling, then a
    grouped transposed convolution: 33 vs 3-5 ms), so under ``bf16-mixed`` they would cost more
    than the rest of the network gains. (Whether a GPU needs this too is not measured.)"""
    device = x.device.type
    autocast = device != "meta" and torch.is_autocast_enabled(device)  # meta: FLOP counting
    with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
        return op(x.float(), weight.float(), **kwargs).to(x.dtype)


class Float32Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) computed by :func:`in_float32`:
    for grouped convolutions, which bf16 autocast would slow down."""

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.float()
        # nn.Conv2d's own call (stride, padding and padding_mode, dilation, groups), in float32.
        return in_float32(lambda x, w: self._conv_forward(x, w, bias), x, self.weight)


def conv_bn_relu(
    c_in: int, c_out: int, kernel: int = 3, *, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    """A ``kernel x kernel`` convolution without bias (BN cancels it), BN and ReLU, padded to keep
    the size at stride 1 (``dilation * (kernel // 2)``). Children ``0, 1, 2``: state-dict keys
    ``<name>.0.weight`` (conv), ``<name>.1.*`` (BN), as the reference codes name them."""
    return nn.Sequential(
        nn.Conv2d(
            c_in,
            c_out,
            kernel,
            stride=stride,
            padding=dilation * (kernel // 2),
            dilation=dilation,
            bias=False,
        ),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )
