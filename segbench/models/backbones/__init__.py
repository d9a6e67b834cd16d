"""Backbones: ``forward(x) -> list[Tensor]`` ordered by stride, with ``out_channels``,
``strides`` and ``feature_names`` tuples describing that list, and an ``output_stride``
argument (dilation replaces stride)."""

from segbench.models.backbones.drn import DRNBackbone
from segbench.models.backbones.resnet import ResNet
from segbench.models.backbones.tiny import TinyBackbone
from segbench.models.backbones.vgg import VGG16

__all__ = ["VGG16", "DRNBackbone", "ResNet", "TinyBackbone"]
