"""The convolution block every architecture uses: conv (no bias) -> BN -> ReLU."""

from __future__ import annotations

from torch import nn


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
