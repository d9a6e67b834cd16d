"""Backbones: ``forward(x) -> list[Tensor]`` ordered by stride, each output described once
(:class:`~segbench.models.backbones.base.Feature`: name, channels, stride), and an
``output_stride`` argument (dilation replaces stride)."""

from segbench.models.backbones.base import Backbone, Feature
from segbench.models.backbones.drn import DRNBackbone
from segbench.models.backbones.resnet import ResNet
from segbench.models.backbones.tiny import TinyBackbone
from segbench.models.backbones.vgg import VGG16

__all__ = ["VGG16", "Backbone", "DRNBackbone", "Feature", "ResNet", "TinyBackbone"]
