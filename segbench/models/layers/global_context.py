"""Global aggregation (GA) modules and GALD's local distribution (LD), interchangeable parts.

GALD (Li et al., BMVC 2019, arXiv 1909.07229) argues that any global aggregation module
over-smooths small patterns, because the statistics it spreads over the image are dominated by
the large ones, and adds a *local distribution* module that re-weights the aggregated features
per channel and position. To ablate that claim the GA module is a switch
(:data:`GlobalAggregation`); every GA module here maps ``N x C x h x w`` to ``N x C x h x w``:

* ``"cgnl"``: the GALD code's GA (lxtGH/GALD-DGCNet, ``GALDBlock``): a depthwise 3x3 stride-2
  convolution + BN + ReLU takes the map to half its size (1/16 of the image), a compact
  generalised non-local block (CGNL, Yue et al., NeurIPS 2018) with the dot-product kernel in 8
  channel groups, a grouped 1x1 convolution back to ``C``, GroupNorm and a residual connection,
  then bilinear upsampling back (:class:`StridedCGNL`);
* ``"nonlocal"``: the embedded-Gaussian non-local block (Wang et al., CVPR 2018) at the map's
  own resolution (:class:`NonLocal2d`);
* ``"psp"``: PSPNet's pyramid pooling (Zhao et al., CVPR 2017), bins 1, 2, 3, 6
  (:class:`PyramidPooling`);
* ``"gap"``: global average pooling (ParseNet-style image-level context), the pyramid with the
  single bin 1;
* ``"none"``: no aggregation (the dilated-FCN baseline).

:class:`LocalDistribution` is the code's ``LocalAttenModule``: three depthwise 3x3 stride-2
convolutions + BN + ReLU, bilinear upsampling back, a sigmoid: the mask ``M``; the output is
``x + x * M``. Because ReLU comes before the sigmoid, ``M`` lies in ``[0.5, 1)``.

Deviations from the reference code: the depthwise convolutions are padded by 1. The code's are
unpadded: on the 97 x 97 map of a 769 px crop at output stride 8 they give GA a 48 x 48 map (here
49 x 49) and LD an 11 x 11 mask grid (97 -> 48 -> 23 -> 11; here 49 -> 25 -> 13). Upsampled with
``align_corners=True``, the padded grid's cells sit on the map's positions 0, 8, ..., 96 exactly,
while the unpadded grid's centres (7, 15, ..., 87) are stretched over 0 ... 96, up to about one
cell off at the borders. The unpadded layers also turn the LD mask of a 16 x 16 map into a single
value per channel and fail on maps smaller than 15 x 15. The convolutions directly followed by
BatchNorm have no bias (BN cancels it: the same function). The PSP and GAP
modules fuse ``[x, pooled]`` with a 1x1 convolution (PSPNet uses 3x3) because, inside the GALD
head, a 3x3 convolution follows the GA module anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.errors import ConfigError
from segbench.models.layers.conv import Float32Conv2d

#: The GA module of a GALD head (``"none"``: the dilated-FCN baseline).
GlobalAggregation = Literal["cgnl", "nonlocal", "psp", "gap", "none"]


def _depthwise_down(channels: int, stride: int = 2) -> nn.Sequential:
    """Depthwise 3x3 stride-2 convolution (in float32: :func:`in_float32`) + BN + ReLU (GALD's
    down-sampling step)."""
    return nn.Sequential(
        Float32Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


def _upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    # align_corners=True as in the reference code's GALDBlock and LocalAttenModule.
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class CompactGeneralizedNonLocal(nn.Module):
    """CGNL with the dot-product kernel (Yue et al., NeurIPS 2018), as GALD's code uses it.

    ``theta, phi, g`` are 1x1 convolutions to ``planes`` channels, split into ``groups`` channel
    groups. In each group the affinity is one number per image, the dot product of ``phi`` and
    ``g`` over all channels and positions of the group, that scales ``theta``; a grouped 1x1
    convolution goes back to ``channels``, then GroupNorm and the residual: ``x + GN(z(y))``.

    The affinity is a sum over ``planes / groups x h x w`` products and is not scaled (the code's
    ``use_scale=False``), so it easily exceeds float16's range: the block always computes in
    float32, also under mixed precision.

    Args:
        channels: input and output channels.
        planes: channels of ``theta``, ``phi`` and ``g`` (GALD: ``channels / 2``).
        groups: channel groups (GALD: 8); divides ``channels`` and ``planes``.
    """

    def __init__(self, channels: int, planes: int, groups: int = 8) -> None:
        super().__init__()
        if channels % groups or planes % groups:
            raise ConfigError(f"groups={groups} must divide channels={channels} and {planes=}")
        self.groups = groups
        self.t = nn.Conv2d(channels, planes, 1, bias=False)
        self.p = nn.Conv2d(channels, planes, 1, bias=False)
        self.g = nn.Conv2d(channels, planes, 1, bias=False)
        self.z = nn.Conv2d(planes, channels, 1, groups=groups, bias=False)
        self.gn = nn.GroupNorm(groups, channels)

    def _forward(self, x: Tensor) -> Tensor:
        t, p, g = self.t(x), self.p(x), self.g(x)
        n, c, h, w = t.shape
        t, p, g = (v.reshape(n, self.groups, -1) for v in (t, p, g))
        att = (p * g).sum(-1, keepdim=True)  # N x groups x 1: one affinity per group
        y = (att * t).reshape(n, c, h, w)
        return x + self.gn(self.z(y))

    def forward(self, x: Tensor) -> Tensor:
        device = x.device.type
        if device != "meta" and torch.is_autocast_enabled(device):
            with torch.autocast(device_type=device, enabled=False):
                return self._forward(x.float())
        return self._forward(x)  # the module's own dtype (float64 in segbench erf)


class StridedCGNL(nn.Module):
    """GALD's GA: depthwise stride-2 convolution to half size, CGNL, bilinear upsampling back.

    Args:
        channels: input and output channels.
        groups: CGNL's channel groups (GALD: 8); CGNL works on ``channels / 2`` planes.
    """

    def __init__(self, channels: int, groups: int = 8) -> None:
        super().__init__()
        self.down = _depthwise_down(channels)
        self.cgnl = CompactGeneralizedNonLocal(channels, channels // 2, groups)

    def forward(self, x: Tensor) -> Tensor:
        return _upsample(self.cgnl(self.down(x)), x.shape[-2:])


class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al., CVPR 2018).

    ``y_i = sum_j softmax_j(theta_i . phi_j) g_j``, then ``x + BN(W_z y)``, with ``theta, phi,
    g`` 1x1 convolutions to ``channels / 2`` and BN's scale initialised to 0 so the block starts
    as the identity (the paper's initialisation).

    Args:
        channels: input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        planes = max(1, channels // 2)
        self.theta = nn.Conv2d(channels, planes, 1, bias=False)
        self.phi = nn.Conv2d(channels, planes, 1, bias=False)
        self.g = nn.Conv2d(channels, planes, 1, bias=False)
        self.w_z = nn.Conv2d(planes, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # N x hw x c'
        phi = self.phi(x).flatten(2)  # N x c' x hw
        g = self.g(x).flatten(2).transpose(1, 2)  # N x hw x c'
        att = torch.softmax(theta @ phi, dim=-1)  # N x hw x hw
        y = (att @ g).transpose(1, 2).reshape(n, -1, h, w)
        return x + self.bn(self.w_z(y))


class PyramidPooling(nn.Module):
    """Pyramid pooling (Zhao et al., PSPNet, CVPR 2017): average-pool to ``bins x bins``, 1x1
    conv + BN + ReLU to ``channels / len(bins)``, upsample, concatenate with ``x``, fuse to
    ``channels``.

    With ``bins=(1,)`` it is global average pooling (image-level context, as in ParseNet).

    Args:
        channels: input and output channels.
        bins: output sizes of the pooled maps (PSPNet: 1, 2, 3, 6).
    """

    def __init__(self, channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        branch = max(1, channels // len(bins))
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(channels, branch, 1, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(channels + branch * len(bins), channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [_upsample(stage(x), size) for stage in self.stages]
        return self.fuse(torch.cat([x, *pooled], 1))


def global_aggregation(kind: GlobalAggregation, channels: int, groups: int = 8) -> nn.Module | None:
    """The GA module ``kind`` for ``channels``-maps, or ``None`` for ``"none"``.

    ``groups`` is CGNL's number of channel groups (only used by ``"cgnl"``).
    """
    if kind == "cgnl":
        return StridedCGNL(channels, groups)
    if kind == "nonlocal":
        return NonLocal2d(channels)
    if kind == "psp":
        return PyramidPooling(channels, (1, 2, 3, 6))
    if kind == "gap":
        return PyramidPooling(channels, (1,))
    if kind == "none":
        return None
    raise ConfigError(f"unknown global aggregation {kind!r}")


class LocalDistribution(nn.Module):
    """GALD's LD module: ``x + x * M`` with a learnt per-channel, per-position mask ``M``.

    ``M = sigmoid(up(relu(bn(dwconv(...)))))`` after three depthwise 3x3 stride-2 convolutions,
    so it is coarse (1/8 of the map's size) and, the last step before the sigmoid being a ReLU,
    lies in ``[0.5, 1)``: large uniform regions can be damped to half the weight of the small
    patterns the GA module would otherwise over-smooth (the paper's motivation).

    Args:
        channels: input and output channels.
        strided: how many of the three depthwise convolutions have stride 2 (the rest stride
            1; the parameters are the same): the mask's grid is the map's size / 2**strided.
            The code: 3, an 11 x 11 grid on the 97 x 97 map of a 769 px crop at output stride
            8 (13 x 13 with the padding here); on the 16 x 16 map of a 128 px image 3 leaves
            2 x 2, 0 keeps 16 x 16 (the nearest to the code's grid).
    """

    def __init__(self, channels: int, strided: int = 3) -> None:
        super().__init__()
        if not 0 <= strided <= 3:
            raise ConfigError(f"LocalDistribution: strided is 0 to 3, got {strided}")
        self.dconv1 = _depthwise_down(channels, 2 if strided >= 1 else 1)
        self.dconv2 = _depthwise_down(channels, 2 if strided >= 2 else 1)
        self.dconv3 = _depthwise_down(channels, 2 if strided >= 3 else 1)

    def mask(self, x: Tensor) -> Tensor:
        """The mask ``M`` (``N x C x h x w``, values in ``[0.5, 1)``) for the input ``x``."""
        m = self.dconv3(self.dconv2(self.dconv1(x)))
        return torch.sigmoid(_upsample(m, x.shape[-2:]))

    def forward(self, x: Tensor) -> Tensor:
        return x + x * self.mask(x)
