"""L2 normalisation over channels with a learned per-channel scale (ParseNet section 3.3).

ParseNet (Liu, Rabinovich, Berg, arXiv 1506.04579) normalises every feature it fuses, because
the features of different layers differ in norm by orders of magnitude and the large ones
dominate a naive concatenation. At each position the feature vector ``x`` (``C`` channels) is
divided by its L2 norm and multiplied by a per-channel scale ``gamma``:

    x_hat = x / ||x||_2,        y_i = gamma_i * x_hat_i        (i = 1 .. C)

so the layer adds ``C`` parameters. Unit-norm features are too small for the next layer to learn
from quickly, hence the learnable scale and its non-trivial initial value. The value is a
documented argument: ParseNet's reference prototxts are said to start it at 10 or 20 (SSD's
``conv4_3_norm`` uses 20 and calls it empirical); which value the ParseNet models used is
[unverified] here, so segbench defaults to 10 and the configs can set 20.

The norm is ``sqrt(sum_i x_i^2 + eps)`` (Caffe's ``Normalize`` layer adds ``eps`` inside the
square root), which is smooth everywhere, so an all-zero vector (a dead ReLU position) maps to
zero with a finite gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class L2Norm(nn.Module):
    """``y = gamma * x / ||x||_2`` over dimension 1 (channels), at every other position.

    Works on ``N x C``, ``N x C x H x W`` or any ``N x C x ...`` tensor.

    Args:
        channels: ``C``, the number of channels (and of scale values).
        scale_init: initial value of every ``gamma_i``. ParseNet-style models use 10 or 20
            ([unverified] which one ParseNet used; see the module docstring).
        learnable: ``True`` learns ``gamma`` (ParseNet); ``False`` keeps it fixed at
            ``scale_init`` (a buffer, no parameters), to ablate the learned scale.
        eps: added to the squared norm before the square root.
    """

    def __init__(
        self,
        channels: int,
        *,
        scale_init: float = 10.0,
        learnable: bool = True,
        eps: float = 1e-10,
    ) -> None:
        super().__init__()
        self.channels, self.learnable, self.eps = channels, learnable, eps
        self.scale_init = scale_init
        scale = torch.full((channels,), float(scale_init))
        if learnable:
            self.weight = nn.Parameter(scale)
        else:
            self.register_buffer("weight", scale)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"L2Norm({self.channels}) got {x.shape[1]} channels")
        # In float16 the sum of squares overflows for ordinary feature norms (> 256): compute the
        # normalisation in float32 under mixed precision and return the input's dtype.
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        norm = xf.square().sum(1, keepdim=True).add(self.eps).sqrt()
        shape = (1, self.channels) + (1,) * (x.dim() - 2)
        return (xf / norm * self.weight.view(shape)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.channels}, scale_init={self.scale_init}, learnable={self.learnable}"
