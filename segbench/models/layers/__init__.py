"""Small parts shared by several architectures."""

from segbench.models.layers.conv import conv_bn_relu
from segbench.models.layers.dupsample import DUpsample
from segbench.models.layers.global_context import (
    GlobalAggregation,
    LocalDistribution,
    global_aggregation,
)
from segbench.models.layers.l2norm import L2Norm
from segbench.models.layers.upsample import BilinearConvTranspose2d, bilinear_kernel

__all__ = [
    "BilinearConvTranspose2d",
    "DUpsample",
    "GlobalAggregation",
    "L2Norm",
    "LocalDistribution",
    "bilinear_kernel",
    "conv_bn_relu",
    "global_aggregation",
]
