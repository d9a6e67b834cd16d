"""Small parts shared by several architectures."""

from segbench.models.layers.dupsample import DUpsample
from segbench.models.layers.l2norm import L2Norm
from segbench.models.layers.upsample import BilinearConvTranspose2d, bilinear_kernel

__all__ = ["BilinearConvTranspose2d", "DUpsample", "L2Norm", "bilinear_kernel"]
