"""ParseNet: Liu, Rabinovich, Berg, "ParseNet: Looking Wider to See Better", ICLR 2016 workshop
(arXiv 1506.04579).

Reference implementation: weiliu89/caffe, branch ``fcn`` (Caffe; the ``Normalize`` layer and the
VOC / PASCAL-Context / SiftFlow prototxts). Section numbers below follow the arXiv version
(3.1 global context, 3.2 early and late fusion, 3.3 L2 normalisation) [unverified numbering].

Architecture. FCN-32s's VGG16 trunk (fc6/fc7 as convolutions). The *global context* is the
average of a layer's features over the whole image ("pool6" = global average pooling of fc7),
L2-normalised with a learned per-channel scale (:class:`~segbench.models.layers.L2Norm`),
"unpooled" (replicated) to the size of the local feature map and fused with the L2-normalised
local features:

* early fusion (the paper's choice): concatenate global and local features, one 1x1 classifier;
* late fusion: one 1x1 classifier per feature, the score maps summed.

The scores are upsampled to the input by a fixed bilinear transposed convolution, as FCN-32s's
final deconvolution. Classifiers start at zero, as FCN's score layers, so training starts from a
constant prediction. With every switch turned off (``global_context=False, normalize=False``)
the network *is* FCN-32s on the same trunk (the test suite loads FCN-32s weights into it and
compares outputs): the baseline comes from the same code path.

A remark the paper makes itself (section 3.2, citing Hariharan et al.): when the fused features
go straight into a linear classifier, early and late fusion compute the same family of functions
(a 1x1 convolution of a concatenation is the sum of 1x1 convolutions of the parts, and bilinear
upsampling commutes with both). They differ in parameterisation only (late fusion has one bias
per feature), so they train almost identically; the paper finds them "more or less the same" once
the features are normalised. The test suite checks the equivalence numerically.

Switches, each defaulting to the paper:

* ``global_context``: add the unpooled global feature (section 3.1). Off: FCN-32s-like baseline
  (``layers="fc7"``) or its multi-layer counterpart.
* ``fusion``: ``"early"`` or ``"late"`` (section 3.2).
* ``normalize``: L2-normalise every fused feature (section 3.3); off is the paper's naive
  concatenation, which "performs poorly" because the layers' norms differ by orders of magnitude.
* ``scale_learnable`` and ``scale_init``: the normalisation's per-channel scale, learned (paper)
  or fixed, and its initial value (10 or 20 in ParseNet-style prototxts; [unverified] which).
* ``layers``: which local features are fused. ``"fc7"``: fc7 alone, as on PASCAL VOC (the
  global feature is pool6 = average of fc7). ``"fc7+conv5+conv4+conv3"``: pool6 + fc7 + conv5 +
  conv4 + conv3, as on PASCAL-Context (section 4). The shared VGG16 trunk returns the *stage
  outputs* ``pool1 .. pool5, fc7``, so conv5, conv4 and conv3 are taken as pool5 (stride 32),
  pool4 (stride 16) and pool3 (stride 8): the ReLU'd conv{5,4,3}_3 features max-pooled 2x2,
  which keeps their scale (what normalisation is about) and the taps FCN-8s uses. All features
  are fused at the finest tapped stride (8), the coarser ones bilinearly upsampled; late fusion
  classifies each at its own stride and upsamples the scores instead (the same function, see
  above).

Deviations: ``width`` (a channel multiplier for CPU-scale runs) and ``batch_norm`` (torchvision's
``vgg16_bn`` trunk, to train from scratch) are not in the paper and default to its network. The
geometry is always "same" padding: the input is padded to a multiple of 32 and the logits cropped
back (FCN's ``caffe_padding=False``); the reference's pad-100 trick is not offered because its
border would enter the global average. The global average is taken over the feature cells that
overlap the image, so cells that see only the padding do not dilute it. The paper's training
changes to the FCN baseline (normalised loss, higher learning rate, poly schedule [unverified])
belong to the task and the configs, not to the network.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from segbench.models.backbones.vgg import VGG16
from segbench.models.base import SegmentationModel, pad_to_multiple, resize_to
from segbench.models.layers import BilinearConvTranspose2d, L2Norm

#: The fused local features of each ``layers`` choice -> the trunk output each one is read from.
LAYER_SOURCES: dict[str, dict[str, str]] = {
    "fc7": {"fc7": "fc7"},
    "fc7+conv5+conv4+conv3": {"fc7": "fc7", "conv5": "pool5", "conv4": "pool4", "conv3": "pool3"},
}
#: The global feature: ``pool6`` is the global average of this trunk output (fc7 in the paper).
GLOBAL_SOURCE = "fc7"
GLOBAL_NAME = "pool6"


def _classifier(channels: int, num_classes: int) -> nn.Conv2d:
    """A zero-initialised 1x1 classifier, as FCN's score layers."""
    conv = nn.Conv2d(channels, num_classes, 1)
    nn.init.zeros_(conv.weight)
    assert conv.bias is not None
    nn.init.zeros_(conv.bias)
    return conv


def global_average(x: Tensor, valid: tuple[int, int], pool: nn.Module) -> Tensor:
    """``pool`` (a global average) over the top-left ``valid`` cells of ``x`` (``N x C x 1 x 1``).

    The cells beyond ``valid`` only see the padding added to reach a multiple of the stride.
    """
    return pool(x[..., : valid[0], : valid[1]])


class ParseNet(SegmentationModel):
    """ParseNet (global context, L2 normalisation, early or late fusion) on a VGG16 trunk.

    Args:
        num_classes: number of output classes K.
        global_context: fuse the unpooled global average of fc7 ("pool6") with the local
            features (section 3.1). ``False`` builds the baseline without it (FCN-32s with
            ``layers="fc7"`` and ``normalize=False``).
        fusion: ``"early"`` (concatenate the features, one classifier; the paper's choice) or
            ``"late"`` (one classifier per feature, score maps summed). Section 3.2.
        normalize: L2-normalise every fused feature with a per-channel scale before fusion
            (section 3.3). ``False`` fuses the raw features (the paper's naive concatenation).
        scale_learnable: learn the normalisation's per-channel scale (paper) or keep it fixed
            at ``scale_init``. Section 3.3. Unused without ``normalize``.
        scale_init: initial value of the scale (10 or 20 in ParseNet-style prototxts;
            [unverified] which one the paper used). Section 3.3.
        layers: the fused local features: ``"fc7"`` (PASCAL VOC) or ``"fc7+conv5+conv4+conv3"``
            (PASCAL-Context, section 4; conv5/4/3 are read from the trunk's pool5/4/3 outputs
            and fused at stride 8).
        width: channel multiplier of the trunk and fc layers (1.0 = the paper's VGG16).
        batch_norm: use torchvision's ``vgg16_bn`` trunk (not in the paper).
        dropout: dropout after fc6 and fc7 (paper: 0.5, as FCN).
        backbone_weights: ``None`` (random), a member of torchvision's ``VGG16_Weights`` /
            ``VGG16_BN_Weights`` such as ``"IMAGENET1K_V1"``, or a path to such a state dict.
    """

    test_kwargs: ClassVar[dict[str, Any]] = {"width": 1 / 16, "batch_norm": True}

    def __init__(
        self,
        num_classes: int,
        *,
        global_context: bool = True,
        fusion: Literal["early", "late"] = "early",
        normalize: bool = True,
        scale_learnable: bool = True,
        scale_init: float = 10.0,
        layers: Literal["fc7", "fc7+conv5+conv4+conv3"] = "fc7",
        width: float = 1.0,
        batch_norm: bool = False,
        dropout: float = 0.5,
        backbone_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.fusion = num_classes, fusion
        self.global_context, self.normalize = global_context, normalize
        self.backbone = VGG16(
            width=width,
            batch_norm=batch_norm,
            caffe_padding=False,
            dropout=dropout,
            weights=backbone_weights,
        )
        feature = self.backbone.feature

        #: fused feature name -> trunk output it is read from (pool6: the global average of it).
        self.sources = dict(LAYER_SOURCES[layers])
        if global_context:
            self.sources[GLOBAL_NAME] = GLOBAL_SOURCE
            self.pool6 = nn.AdaptiveAvgPool2d(1)
        self.channels = {name: feature(src).channels for name, src in self.sources.items()}
        self.output_stride = min(feature(src).stride for src in LAYER_SOURCES[layers].values())

        if normalize:
            self.norms = nn.ModuleDict(
                {
                    name: L2Norm(c, scale_init=scale_init, learnable=scale_learnable)
                    for name, c in self.channels.items()
                }
            )
        if fusion == "early":
            self.classifier = _classifier(sum(self.channels.values()), num_classes)
        else:
            self.classifiers = nn.ModuleDict(
                {name: _classifier(c, num_classes) for name, c in self.channels.items()}
            )
        self.upscore = BilinearConvTranspose2d(num_classes, self.output_stride, learnable=False)

    def fused_features(self, x: Tensor, image_size: tuple[int, int]) -> dict[str, Tensor]:
        """The (normalised) features that are fused, each at its own resolution.

        ``x`` is the input padded to a multiple of 32 and ``image_size`` its size before
        padding; ``pool6`` (the global feature) is ``N x C x 1 x 1``, averaged over the cells
        that overlap the image.
        """
        trunk = self.backbone.named(self.backbone(x))
        feats = {name: trunk[src] for name, src in self.sources.items() if name != GLOBAL_NAME}
        if self.global_context:
            src = trunk[GLOBAL_SOURCE]
            stride = x.shape[-2] // src.shape[-2]
            # Ceiling division in integers of positive numbers: a traced export (segbench
            # export) keeps it a function of the input size, where math.ceil would fix it at the
            # export size, and ONNX divides negative integers by truncation, not floor.
            valid = (
                (image_size[0] + stride - 1) // stride,
                (image_size[1] + stride - 1) // stride,
            )
            feats[GLOBAL_NAME] = global_average(src, valid, self.pool6)
        if self.normalize:
            feats = {name: self.norms[name](f) for name, f in feats.items()}
        return feats

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x, size = pad_to_multiple(x, 32)
        feats = self.fused_features(x, size)
        fine = (x.shape[-2] // self.output_stride, x.shape[-1] // self.output_stride)
        if self.fusion == "early":
            maps = [
                f.expand(-1, -1, *fine) if name == GLOBAL_NAME else resize_to(f, fine)
                for name, f in feats.items()
            ]
            score = self.classifier(torch.cat(maps, 1))
        else:
            # Each feature's own score map, upsampled to the finest stride and summed; the global
            # one is N x K x 1 x 1 and broadcasting replicates it (the unpooling).
            scores = []
            for name, f in feats.items():
                s = self.classifiers[name](f)
                scores.append(s if name == GLOBAL_NAME else resize_to(s, fine))
            score = scores[0]  # a local feature's (fc7): N x K x h x w
            for s in scores[1:]:
                score = score + s
        out = self.upscore(score)
        return {"out": out[..., : size[0], : size[1]]}
