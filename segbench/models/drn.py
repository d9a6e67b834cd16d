"""DRN: Yu, Koltun, Funkhouser, "Dilated Residual Networks", CVPR 2017 (arXiv 1705.09914).

Reference implementation: fyu/drn (``drn.py``: ``DRN_A``, ``DRN`` with ``arch`` "C"/"D";
``segment.py``: ``DRNSeg``).

The backbone (:class:`segbench.models.backbones.drn.DRNBackbone`) is DRN-A, DRN-B, DRN-C or DRN-D
depending on four degridding switches, one per step of the paper's section 4.2, so that the
path A -> B -> C is an ablation over one code path:

1. ``remove_max_pooling``: levels 1-2 are convolutional (stride-1 7x7 stem, residual blocks of
   16 and 32 channels) instead of ResNet's stride-2 7x7 convolution and max-pool;
2. ``add_levels_78``: levels 7 (dilation 2) and 8 (dilation 1) after the dilation-4 level 6;
3. ``remove_residual_78``: no residual connections in levels 7 and 8 (DRN-C; DRN-B keeps them);
4. ``plain_conv_levels``: DRN-D (fyu/drn's code, after the paper): levels 1, 2, 7 and 8 as
   single conv-BN-ReLU layers.

Named models (``depth`` is the ResNet of levels 3-6)::

    DRN-A-18/34/50   depth 18/34/50, remove_max_pooling false, add_levels_78 false
    DRN-B-26         depth 18, remove_residual_78 false
    DRN-C-26/42/58   depth 18/34/50 (the defaults: the paper's DRN-C)
    DRN-D-22/38/54/105  depth 18/34/50/101, plain_conv_levels true

:class:`DRN` is the segmentation network of fyu/drn's ``DRNSeg``: the backbone without pooling and
fc, a 1x1 convolution to K classes (N(0, sqrt(2 / K)) weights, zero bias), and a frozen
bilinear-filled grouped transposed convolution ``ConvTranspose2d(K, K, 16, stride 8, padding 4,
groups=K)`` back to the input size. :class:`DRNClassifier` is the ImageNet classifier of
``drn.py`` (global average pooling and a 1x1 convolution ``fc`` with bias), used for the parameter
counts (``segbench summary``); its counts equal fyu/drn's to the parameter.

Paper vs code, as switches: ``first_dilation`` (the paper dilates the first block of levels 5
and 6, fyu/drn's ``DRN_A`` does not: ``"one"``), ``unused_projection`` (fyu/drn's DRN-C-58
builds a projection shortcut for its residual-free level 7 and never uses it), ``upsample``
(``"bilinear"`` = ``DRNSeg(use_torch_up=True)``, which fyu/drn implements with
``UpsamplingBilinear2d``, i.e. ``align_corners=True``; segbench's bilinear resize uses
``align_corners=False``).

Deviations: ``width`` and ``min_channels`` (a channel multiplier and a floor on it for CPU-scale
runs; 1.0 and 1 are the paper's network).
fyu/drn's DRN-A classifier uses ``AvgPool2d(28)`` and an ``nn.Linear`` fc, its DRN-C/D a fixed
``AvgPool2d(28)`` and a 1x1 convolution: here all use adaptive global average pooling (identical
at 224 x 224) and a 1x1 convolution (as many parameters as the linear layer). Inputs whose size
is not a multiple of 8 are padded at the bottom and right and the logits cropped back (fyu/drn
requires multiples of 8).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Final, Literal

from torch import Tensor, nn

from segbench.models.backbones.drn import DRNBackbone
from segbench.models.base import SegmentationModel, pad_to_multiple, resize_to
from segbench.models.layers import BilinearConvTranspose2d

#: DRN's output stride: levels 5-8 are dilated instead of strided.
OUTPUT_STRIDE: Final = 8


class DRN(SegmentationModel):
    """DRN-A/B/C/D segmentation network: backbone, 1x1 classifier, x8 upsampling.

    Args:
        num_classes: number of output classes K.
        depth: the ResNet whose groups form levels 3-6: 18 (DRN-A-18, B-26, C-26, D-22), 34
            (A-34, C-42, D-38), 50 (A-50, C-58, D-54) or 101 (D-105).
        remove_max_pooling: degridding step 1 (section 4.2): convolutional levels 1-2 instead of
            ResNet's strided stem and max-pool. ``False`` is DRN-A.
        add_levels_78: degridding step 2: levels 7 and 8 (dilation 2, 1) after level 6.
        remove_residual_78: degridding step 3: no residual connections in levels 7 and 8 (DRN-C;
            ``False``: DRN-B).
        plain_conv_levels: DRN-D (fyu/drn code): levels 1, 2, 7, 8 as plain conv-BN-ReLU.
        first_dilation: first block of levels 5-6 dilated (``"full"``: paper, fyu/drn DRN-C/D) or
            not (``"one"``: fyu/drn's DRN-A code).
        unused_projection: build fyu/drn's unused level-7 projection of DRN-C-58 (official state
            dict and parameter count; it gets no gradient).
        upsample: ``"deconv"``: the frozen bilinear grouped transposed convolution x8 of
            fyu/drn's ``DRNSeg``; ``"bilinear"``: bilinear interpolation (``use_torch_up``).
        width: channel multiplier of the backbone (1.0 = the paper's DRN).
        min_channels: floor on every level's channels after the multiplier, so that CPU-scale
            models keep usable early levels (width 1/4 alone gives DRN-C 4 and 8 channels in
            levels 1-2); 1 = no floor, the paper's network at width 1.
        backbone_weights: ``None``, a path to a state dict in the layout's names (fyu/drn's
            ImageNet checkpoints), or for DRN-A a torchvision ``ResNet<depth>_Weights`` member.
    """

    test_kwargs: ClassVar[dict[str, Any]] = {"width": 1 / 8}

    def __init__(
        self,
        num_classes: int,
        *,
        depth: Literal[18, 34, 50, 101] = 18,
        remove_max_pooling: bool = True,
        add_levels_78: bool = True,
        remove_residual_78: bool = True,
        plain_conv_levels: bool = False,
        first_dilation: Literal["full", "one"] = "full",
        unused_projection: bool = False,
        upsample: Literal["deconv", "bilinear"] = "deconv",
        width: float = 1.0,
        min_channels: int = 1,
        backbone_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.output_stride = OUTPUT_STRIDE
        self.backbone = DRNBackbone(
            depth=depth,
            remove_max_pooling=remove_max_pooling,
            add_levels_78=add_levels_78,
            remove_residual_78=remove_residual_78,
            plain_conv_levels=plain_conv_levels,
            first_dilation=first_dilation,
            unused_projection=unused_projection,
            width=width,
            min_channels=min_channels,
            output_stride=OUTPUT_STRIDE,
            weights=backbone_weights,
        )
        self._build_head(num_classes, upsample)

    def _build_head(self, num_classes: int, upsample: str) -> None:
        """The 1x1 classifier on the last level and the x8 upsampling (fyu/drn's ``DRNSeg``)."""
        self.seg = nn.Conv2d(self.backbone.out_channels[-1], num_classes, 1, bias=True)
        nn.init.normal_(self.seg.weight, 0.0, math.sqrt(2.0 / num_classes))
        assert self.seg.bias is not None
        nn.init.zeros_(self.seg.bias)
        self.up = (
            BilinearConvTranspose2d(num_classes, OUTPUT_STRIDE, learnable=False, padding=4)
            if upsample == "deconv"
            else None
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2:]
        x, _ = pad_to_multiple(x, OUTPUT_STRIDE)
        score = self.seg(self.backbone(x)[-1])
        out = self.up(score) if self.up is not None else resize_to(score, x.shape[-2:])
        return {"out": out[..., :h, :w]}


class DRNClassifier(DRN, register=False):
    """DRN-A/B/C/D ImageNet classifier: the same backbone and switches as :class:`DRN` (its
    arguments, ``upsample`` aside, which a classifier does not use), then global average pooling
    and a 1x1 convolution ``fc`` (fyu/drn's ``DRN`` classifier).

    For parameter counts and FLOPs (``segbench summary`` with ``experiments/drn/imagenet/``);
    ``forward`` returns ``N x num_classes`` logits (ImageNet: 1000, set by the data section).
    """

    def _build_head(self, num_classes: int, upsample: str) -> None:
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(self.backbone.out_channels[-1], num_classes, 1, bias=True)
        nn.init.normal_(self.fc.weight, 0.0, math.sqrt(2.0 / num_classes))
        assert self.fc.bias is not None
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return self.fc(self.pool(self.backbone(x)[-1])).flatten(1)
