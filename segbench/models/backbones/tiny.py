"""A tiny backbone for tests and smoke runs: five conv-BN-ReLU stages at strides 2 ... 32."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from segbench.models.backbones.base import Backbone


class TinyBackbone(Backbone):
    """Five stages of one 3x3 conv-BN-ReLU each, at strides 2, 4, 8, 16, 32.

    Args:
        width: channels of the first stage; later stages double it, up to 8x.
        output_stride: 8, 16 or 32; stages past it keep the resolution and dilate instead.
    """

    def __init__(self, *, width: int = 8, output_stride: Literal[8, 16, 32] = 32) -> None:
        super().__init__()
        stages, channels, strides = [], [], []
        c_in, stride, dilation = 3, 1, 1
        for i in range(5):
            c_out = width * 2 ** min(i, 3)
            step = 2 if stride < output_stride else 1
            if step == 1:
                dilation *= 2
            stages.append(
                nn.Sequential(
                    nn.Conv2d(
                        c_in, c_out, 3, stride=step, padding=dilation, dilation=dilation, bias=False
                    ),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                )
            )
            stride *= step
            channels.append(c_out)
            strides.append(stride)
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.describe([f"stage{i + 1}" for i in range(5)], channels, strides)
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats
