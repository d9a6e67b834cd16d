"""GALD: Li, Zhang, Zhao, You, Lin, Tong, "Global Aggregation then Local Distribution in Fully
Convolutional Networks", BMVC 2019 (arXiv 1909.07229).

Reference implementation: lxtGH/GALD-DGCNet (``libs/models/GALDNet.py``; training recipe in
``train_distribute.py``, ``exp/train_gald_r_101_city_finetrain.sh``, ``libs/core/loss.py``).

Architecture (the code's ``GALDNet``):

* backbone: ResNet-50/101 with the deep stem (three 3x3 convolutions), output stride 8 by
  dilation (layer3 dilation 2, layer4 dilation 4 with multi-grid 1, 2, 4: dilations 4, 8, 16),
  every block of a dilated group dilated (:class:`segbench.models.backbones.ResNet` with
  ``stem="deep", first_dilation="full", multi_grid=(1, 2, 4)``);
* head (``GALDHead``): 3x3 conv 2048 -> 512 + BN + ReLU; the GALD block (GA, then LD); 3x3 conv
  512 -> 512 + BN + ReLU; concatenation with the backbone's layer4 features; 3x3 conv
  2560 -> 512 + BN + ReLU; 1x1 classifier;
* auxiliary FCN head (``dsn``) on layer3: 3x3 conv 1024 -> 512 + BN + ReLU, dropout 0.1, 1x1
  classifier; trained with weight 0.4 (the task's ``aux_weight``), plain cross-entropy, while the
  main output uses OHEM (the task's ``ohem_thresh`` 0.7, ``ohem_min_kept`` 100000).

GA and LD are in :mod:`segbench.models.layers.global_context` (the code's CGNL-style GA, and
non-local, pyramid pooling, global pooling to ablate the GA type). Both logits are upsampled
bilinearly to the input size.

Switches, each defaulting to the paper / code:

* ``ga``: the global aggregation module: ``"cgnl"`` (the code), ``"nonlocal"``, ``"psp"``,
  ``"gap"``, or ``"none"`` (the dilated-FCN baseline). The paper's GA ablation.
* ``ld``: the local distribution module after GA (the paper's method; off: GA alone, the ablation).
* ``ld_strides``: how many of LD's three depthwise convolutions have stride 2 (the code: 3).
  A documented deviation for small images: the mask's grid is the map / 2**ld_strides, 13 x 13
  on 769 px crops at OS 8 (the code's unpadded convolutions: 11 x 11) but 2 x 2 on a 128 px
  image; 0 keeps the 16 x 16 map.
* ``ld_extra_residual``: the code's LD module (``LocalAttenModule``) outputs ``x + x * M``, and
  its ``GALDBlock`` adds the GA output once more, ``2x + x * M``. Default: ``x + x * M``, LD's
  own output (which form the paper's equations write is not verified here).
* ``aux``: build the auxiliary head on layer3 (the code trains with it).
* ``stem``: ``"deep"`` (the code) or ``"resnet"`` (the plain 7x7 stem, which can start from
  torchvision's ImageNet weights).

Deviations: the auxiliary logits are returned in evaluation too (the code returns them only in
training; segbench's outputs never depend on ``self.training``), so ``segbench summary`` counts
them unless ``aux=False``. The max-pool of the stem uses floor rounding (the code: ``ceil_mode``),
which gives the same sizes for odd inputs such as the 769 x 769 crops and keeps the stride exactly
8 for even ones. Convolutions directly followed by BatchNorm have no bias (the code's ``dsn``
convolution and depthwise convolutions have one, which BN cancels; 2,560 parameters at full
width) and depthwise convolutions are padded (see :mod:`~segbench.models.layers.global_context`).
The code loads an ImageNet deep-stem ResNet ("resnet101-deep.pth") that is not distributed with
it; ``backbone_weights`` takes a path to such a state dict in torchvision's key layout.
``width`` (a channel multiplier of backbone and heads, rounded so CGNL's 8 groups divide the
head) is for CPU-scale runs.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from segbench.models.backbones import ResNet
from segbench.models.base import SegmentationModel, resize_to
from segbench.models.layers.conv import conv_bn_relu
from segbench.models.layers.global_context import (
    GlobalAggregation,
    LocalDistribution,
    global_aggregation,
)


class GALDBlock(nn.Module):
    """Global aggregation, then local distribution (either may be absent).

    Args:
        channels: input and output channels.
        ga: the GA module (see :data:`~segbench.models.layers.global_context.GlobalAggregation`).
        ld: build the LD module.
        ld_strides: LD's stride-2 steps (see :class:`LocalDistribution`).
        extra_residual: return ``LD(GA(x)) + GA(x)`` (the code) instead of ``LD(GA(x))``.
        groups: CGNL's channel groups.
    """

    def __init__(
        self,
        channels: int,
        *,
        ga: GlobalAggregation,
        ld: bool,
        extra_residual: bool,
        groups: int = 8,
        ld_strides: int = 3,
    ) -> None:
        super().__init__()
        self.ga = global_aggregation(ga, channels, groups)
        self.ld = LocalDistribution(channels, ld_strides) if ld else None
        self.extra_residual = extra_residual and ld

    def forward(self, x: Tensor) -> Tensor:
        if self.ga is not None:
            x = self.ga(x)
        if self.ld is None:
            return x
        out = self.ld(x)
        return out + x if self.extra_residual else out


class GALDHead(nn.Module):
    """The code's ``GALDHead``: conv, GALD block, conv, concat with the input, conv, classifier.

    Args:
        in_channels: channels of the backbone features (2048 for ResNet-50/101).
        channels: the head's width (512).
        num_classes: K.
        ga, ld, extra_residual, groups, ld_strides: see :class:`GALDBlock`.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        *,
        ga: GlobalAggregation,
        ld: bool,
        extra_residual: bool,
        groups: int = 8,
        ld_strides: int = 3,
    ) -> None:
        super().__init__()
        self.conva = conv_bn_relu(in_channels, channels)
        self.block = GALDBlock(channels, ga=ga, ld=ld, extra_residual=extra_residual,
                               groups=groups, ld_strides=ld_strides)  # fmt: skip
        self.convb = conv_bn_relu(channels, channels)
        self.bottleneck = conv_bn_relu(in_channels + channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.convb(self.block(self.conva(x)))
        return self.classifier(self.bottleneck(torch.cat([x, out], 1)))


class AuxHead(nn.Module):
    """The code's ``dsn``: 3x3 conv + BN + ReLU, dropout, 1x1 classifier (on layer3)."""

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class GALD(SegmentationModel):
    """GALD-Net: dilated ResNet, GALD head, auxiliary FCN head on layer3.

    Args:
        num_classes: number of output classes K.
        depth: ResNet depth (paper: 50 and 101; the code's Cityscapes script: 101; 18 and 34
            (basic blocks) are for CPU-scale runs).
        ga: the global aggregation module: ``"cgnl"`` (the code's CGNL-style grouped attention
            at 1/16), ``"nonlocal"``, ``"psp"`` (pyramid pooling), ``"gap"`` (global average
            pooling), ``"none"`` (dilated-FCN baseline). The paper's GA ablation.
        ld: the local distribution module after GA (the paper's contribution; its ablation).
        ld_strides: how many of LD's three depthwise convolutions have stride 2 (the code: 3,
            an 11 x 11 mask grid at 769 px and OS 8, 13 x 13 with segbench's padded
            convolutions); fewer keep a finer grid in small images
            (0: the map's own size, 16 x 16 at 128 px), the same parameters.
        ld_extra_residual: return the code's ``GALDBlock`` output ``LD(x) + x = 2x + x * M``
            instead of LD's own ``x + x * M`` (default).
        aux: build the auxiliary head on layer3 (its loss weight is the task's ``aux_weight``,
            GALD: 0.4).
        stem: ``"deep"`` (three 3x3 convolutions, the code) or ``"resnet"`` (7x7).
        output_stride: 8 (the paper) or 16 (layer3 not dilated).
        width: channel multiplier of backbone and heads (1.0 = the paper's network).
        head_channels: the head's width at ``width=1`` (the code: 512).
        groups: CGNL's channel groups (the code: 8).
        aux_dropout: dropout of the auxiliary head (the code: 0.1).
        backbone_weights: ``None`` (random), a member of torchvision's ``ResNet<depth>_Weights``
            such as ``"IMAGENET1K_V1"`` (7x7 stem only), or a path to a state dict with
            torchvision's keys (deep stem: ``conv1/bn1, conv2/bn2, conv3/bn3``).
    """

    test_kwargs: ClassVar[dict[str, Any]] = {"depth": 50, "width": 1 / 16}

    def __init__(
        self,
        num_classes: int,
        *,
        depth: Literal[18, 34, 50, 101] = 101,
        ga: GlobalAggregation = "cgnl",
        ld: bool = True,
        ld_strides: Literal[0, 1, 2, 3] = 3,
        ld_extra_residual: bool = False,
        aux: bool = True,
        stem: Literal["deep", "resnet"] = "deep",
        output_stride: Literal[8, 16] = 8,
        width: float = 1.0,
        head_channels: int = 512,
        groups: int = 8,
        aux_dropout: float = 0.1,
        backbone_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.backbone = ResNet(
            depth=depth,
            width=width,
            output_stride=output_stride,
            first_dilation="full",
            multi_grid=(1, 2, 4),
            stem=stem,
            weights=backbone_weights,
        )
        c3, c4 = self.backbone.out_channels[3], self.backbone.out_channels[4]
        # CGNL needs `groups` to divide the head and its half: round to a multiple of 2 x groups.
        step = 2 * groups
        channels = max(step, step * round(head_channels * width / step))
        self.head = GALDHead(
            c4,
            channels,
            num_classes,
            ga=ga,
            ld=ld,
            extra_residual=ld_extra_residual,
            groups=groups,
            ld_strides=ld_strides,
        )
        self.aux_head = AuxHead(c3, channels, num_classes, aux_dropout) if aux else None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        feats = self.backbone(x)
        out = {"out": resize_to(self.head(feats[4]), size)}
        if self.aux_head is not None:
            out["aux"] = resize_to(self.aux_head(feats[3]), size)
        return out
