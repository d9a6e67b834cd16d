"""Upsampling by transposed convolution initialised to bilinear interpolation (FCN, DRN)."""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch
from torch import Tensor, nn


def bilinear_filter(size: int, device: torch.device | str = "cpu") -> Tensor:
    """The 1-D bilinear filter of ``size`` taps (float64) whose outer product is
    :func:`bilinear_kernel`."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64, device=device)
    return 1 - (og - center).abs() / factor


def bilinear_kernel(size: int) -> Tensor:
    """The ``size x size`` bilinear interpolation filter of FCN's ``upsample_filt``.

    A transposed convolution with this kernel, stride ``f`` and ``size = 2f`` reproduces
    bilinear interpolation by a factor ``f`` away from the borders.
    """
    filt = bilinear_filter(size)
    return (filt[:, None] * filt[None, :]).float()


def upsampling_matrix(
    n_in: int, factor: int, padding: int, device: torch.device | str = "cpu"
) -> Tensor:
    """``n_out x n_in`` (float64): the 1-D transposed convolution with the ``2 factor``-tap
    bilinear filter, stride ``factor`` and ``padding``, as a matrix.

    Built from dense index arithmetic (input ``i`` reaches output ``o`` through tap
    ``o + padding - i factor``), with no data-dependent shape, so ``torch.compile`` traces it
    into the graph instead of breaking the graph there."""
    taps = 2 * factor
    filt = bilinear_filter(taps, device)
    n_out = (n_in - 1) * factor - 2 * padding + taps
    o = torch.arange(n_out, device=device)[:, None]
    i = torch.arange(n_in, device=device)[None, :]
    tap = o + padding - i * factor
    inside = (tap >= 0) & (tap < taps)
    return torch.where(inside, filt[tap.clamp(0, taps - 1)], 0.0)


@lru_cache(maxsize=64)
def _cached_upsampling_matrix(
    n_in: int, factor: int, padding: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """:func:`upsampling_matrix` in ``dtype`` on ``device``, built once (eager mode): computed in
    float64 on the CPU, so every device and dtype gets the same rounding. Built outside inference
    mode wherever it is first asked for: an inference tensor (made by a prediction, a validation
    figure or a benchmark's forward) cannot enter a training step's graph, and the cache would
    have handed it to every later step at that size."""
    with torch.inference_mode(False):
        return upsampling_matrix(n_in, factor, padding).to(device, dtype)


def fixed_bilinear_upsample(x: Tensor, factor: int, padding: int) -> Tensor:
    """Per channel, what ``F.conv_transpose2d(x, bilinear_kernel(2 factor) per channel,
    stride=factor, padding=padding, groups=C)`` computes, as two small matrix products.

    The kernel is separable (an outer product), so the transposed convolution is ``U_h x U_w^T``
    on each channel, with ``U`` the 1-D upsampling matrix. The grouped transposed convolution with
    a ``2f x 2f`` kernel is a slow path of every backend: on an H200 FCN-32s's ``x32`` (64 x 64
    kernel) made a width-1/4 ParseNet train at 70 images/s at 512 px, 0.4% of the card
    (``benchmarks/upsample_speed.py`` times both). Computed in float32 at least, whatever the
    autocast (bf16 would round the filter's products); returned in ``x``'s dtype."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    device = x.device
    if torch.compiler.is_compiling():  # in the graph: no cache, and no copy from the CPU
        uh, uw = (upsampling_matrix(n, factor, padding, device).to(dtype) for n in x.shape[-2:])
    else:
        uh, uw = (
            _cached_upsampling_matrix(n, factor, padding, device, dtype) for n in x.shape[-2:]
        )
    autocast = device.type != "meta" and torch.is_autocast_enabled(device.type)
    with torch.autocast(device.type, enabled=False) if autocast else contextlib.nullcontext():
        y = torch.matmul(torch.matmul(uh, x.to(dtype)), uw.T)
    return y.to(x.dtype)


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
            # The grouped transposed convolution's weight, kept for the state dict (checkpoints
            # hold it); the forward computes the same map in its separable form.
            self.register_buffer("weight", kernel.expand(channels, 1, -1, -1).clone())

    def forward(self, x: Tensor) -> Tensor:
        if self.learnable:
            return self.deconv(x)
        return fixed_bilinear_upsample(x, self.factor, self.padding)

    def extra_repr(self) -> str:
        return f"{self.channels}, factor={self.factor}, learnable={self.learnable}"
