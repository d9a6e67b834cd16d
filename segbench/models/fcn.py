"""FCN-32s / 16s / 8s: Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015 (arXiv 1411.4038; PAMI version arXiv 1605.06211).

Reference implementation: shelhamer/fcn.berkeleyvision.org (Caffe; ``voc-fcn{32,16,8}s``).

Architecture (paper section 4.2, figure 3): VGG16 with fc6/fc7 as convolutions; a zero-initialised
1x1 ``score_fr`` on fc7. FCN-32s upsamples it x32. FCN-16s upsamples it x2, adds
``score_pool4`` (zero-initialised, so training starts from the 32s predictions) and upsamples
x16. FCN-8s adds ``score_pool3`` the same way after another x2 and upsamples x8. Every
upsampling is a transposed convolution initialised to bilinear interpolation: kernel/stride 64/32
(32s); 4/2 + 32/16 (16s); 4/2, 4/2, 16/8 (8s).

Switches, each defaulting to the paper:

* ``variant``: the skip architecture, ``"32s"``, ``"16s"`` or ``"8s"`` (section 4.2, table 2).
* ``upsample_learnable``: ``"intermediate"`` learns the x2 deconvolutions and fixes the final
  one (the paper); ``"none"`` fixes all (the reference code: "no significant difference");
  ``"all"`` learns all.
* ``caffe_padding``: the reference geometry (conv1_1 padded by 100, output cropped with offsets
  19 / 27 / 31, skips cropped by 5 and 9) so that any input size works. Off, the input is padded
  to a multiple of 32 and the logits cropped back, which is cheaper (no 100-pixel border) and is
  what the CPU-scale configs use.
* ``at_once``: the "at-once" FCN-8s of the PAMI paper, which scales pool4 by 0.01 and pool3 by
  1e-4 before scoring so all skips can be trained together from the start; the default is the
  staged recipe (16s initialised from 32s, 8s from 16s: ``model.init_from`` on the task).

Deviations: ``width`` (a channel multiplier for CPU-scale runs) and ``batch_norm`` (torchvision's
``vgg16_bn`` trunk, to train from scratch where ImageNet weights cannot be downloaded) are not in
the paper; both default to the paper's network. The paper uses Caffe's sum-over-pixels loss and a
fixed learning rate of 1e-4; segbench's task averages over valid pixels, so the same rate is not
the same step: the paper-scale config (``experiments/fcn/voc_aug``) keeps 1e-4, untried at that
scale here, and says to re-tune it if training stalls. The paper's biases at twice the learning
rate (without weight decay in its code) are the task's ``bias_lr_factor`` and
``bias_weight_decay``, which that config sets.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from segbench.models.backbones.vgg import VGG16
from segbench.models.base import SegmentationModel, pad_to_multiple
from segbench.models.layers import BilinearConvTranspose2d

# The reference crops, from voc-fcn*/net.py: offsets of the final output and of the skips.
_CAFFE_FINAL_OFFSET = {"32s": 19, "16s": 27, "8s": 31}
_CAFFE_POOL4_OFFSET, _CAFFE_POOL3_OFFSET = 5, 9
_AT_ONCE_SCALE = {"pool4": 0.01, "pool3": 1e-4}


def _crop(x: Tensor, offset: int, size: tuple[int, ...]) -> Tensor:
    h, w = size[-2:]
    if x.shape[-2] < offset + h or x.shape[-1] < offset + w:
        raise RuntimeError(f"cannot crop {tuple(x.shape[-2:])} at offset {offset} to {(h, w)}")
    return x[..., offset : offset + h, offset : offset + w]


def _score(channels: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, num_classes, 1)
    nn.init.zeros_(conv.weight)
    assert conv.bias is not None
    nn.init.zeros_(conv.bias)
    return conv


class FCN(SegmentationModel):
    """FCN-32s, FCN-16s or FCN-8s on a VGG16 trunk.

    Args:
        num_classes: number of output classes K.
        variant: skip architecture: ``"32s"`` (no skips), ``"16s"`` (+pool4), ``"8s"``
            (+pool4 +pool3). Paper section 4.2, table 2.
        upsample_learnable: which bilinear-initialised deconvolutions learn: ``"intermediate"``
            (paper: the x2 ones learn, the final one is fixed), ``"none"`` (reference code), or
            ``"all"``.
        caffe_padding: reference Caffe geometry (pad 100 + crop offsets). ``False`` pads the
            input to a multiple of 32 and crops the logits instead.
        at_once: "at-once" training of all skips by scaling pool4 by 0.01 and pool3 by 1e-4
            (PAMI section 4.1); the default is staged training.
        width: channel multiplier of the trunk and fc layers (1.0 = the paper's VGG16).
        batch_norm: use torchvision's ``vgg16_bn`` trunk (not in the paper).
        dropout: dropout after fc6 and fc7 (paper: 0.5).
        backbone_weights: ``None`` (random), a member of torchvision's ``VGG16_Weights`` /
            ``VGG16_BN_Weights`` such as ``"IMAGENET1K_V1"``, or a path to such a state dict.
    """

    test_kwargs: ClassVar[dict[str, Any]] = {
        "width": 1 / 16,
        "caffe_padding": False,
        "batch_norm": True,
    }

    def __init__(
        self,
        num_classes: int,
        *,
        variant: Literal["32s", "16s", "8s"] = "8s",
        upsample_learnable: Literal["intermediate", "none", "all"] = "intermediate",
        caffe_padding: bool = True,
        at_once: bool = False,
        width: float = 1.0,
        batch_norm: bool = False,
        dropout: float = 0.5,
        backbone_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.variant = num_classes, variant
        self.caffe_padding, self.at_once = caffe_padding, at_once
        self.output_stride = int(variant[:-1])
        self.backbone = VGG16(
            width=width,
            batch_norm=batch_norm,
            caffe_padding=caffe_padding,
            dropout=dropout,
            weights=backbone_weights,
        )
        ch = {f.name: f.channels for f in self.backbone.feature_info}
        pad = 0 if caffe_padding else None
        mid = upsample_learnable in ("intermediate", "all")
        final = upsample_learnable == "all"

        self.score_fr = _score(ch["fc7"], num_classes)
        if variant in ("16s", "8s"):
            self.score_pool4 = _score(ch["pool4"], num_classes)
            self.upscore2 = BilinearConvTranspose2d(num_classes, 2, learnable=mid, padding=pad)
        if variant == "8s":
            self.score_pool3 = _score(ch["pool3"], num_classes)
            self.upscore_pool4 = BilinearConvTranspose2d(num_classes, 2, learnable=mid, padding=pad)
        self.upscore = BilinearConvTranspose2d(
            num_classes, self.output_stride, learnable=final, padding=pad
        )

    def _skip(self, score: nn.Conv2d, feat: Tensor, name: str, offset: int, ref: Tensor) -> Tensor:
        if self.at_once:
            feat = feat * _AT_ONCE_SCALE[name]
        s = score(feat)
        return _crop(s, offset, ref.shape) if self.caffe_padding else s

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        if not self.caffe_padding:
            x, _ = pad_to_multiple(x, 32)
        _, _, pool3, pool4, _, fc7 = self.backbone(x)

        score = self.score_fr(fc7)
        if self.variant != "32s":
            score = self.upscore2(score)
            score = score + self._skip(self.score_pool4, pool4, "pool4", _CAFFE_POOL4_OFFSET, score)
        if self.variant == "8s":
            score = self.upscore_pool4(score)
            score = score + self._skip(self.score_pool3, pool3, "pool3", _CAFFE_POOL3_OFFSET, score)
        out = self.upscore(score)
        offset = _CAFFE_FINAL_OFFSET[self.variant] if self.caffe_padding else 0
        return {"out": _crop(out, offset, size)}
