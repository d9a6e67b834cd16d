"""DUpsampling: Tian, He, Shen, Yan, "Decoders Matter for Semantic Segmentation: Data-Dependent
Decoding Enables Flexible Feature Aggregation", CVPR 2019 (arXiv 1903.02120).

Reference implementation: none official. The unofficial LinZhuoChen/DUpsampling (PyTorch) was read
for facts only: ResNet-50 at output stride 16, conv1 features downsampled and concatenated with
layer3's, a decoder to a few channels, W a 1x1 convolution to ``K x 16 x 16`` channels pre-trained
by SGD and then trained jointly, and a hand-written depth-to-space reshape (checked: correct on
non-square maps, with a channel order of its own; see :mod:`segbench.models.layers.dupsample`).

Architecture (paper sections 3.1-3.3):

* **Encoder**: a dilated ResNet (:class:`segbench.models.backbones.ResNet`, ResNet-50 by default)
  at output stride r = 8, 16 or 32.
* **Fusion** (sec. 3.3, "flexible aggregation"): instead of upsampling the last feature map to meet
  the low-level features, the low-level features (``fuse_layers``, default the stem and layer3,
  as the unofficial code fuses conv1 with layer3; the paper's names conv1_3 and b3u6 are not
  verified here) are *downsampled* (bilinear) to the last feature's resolution,
  concatenated, reduced by a 1x1 convolution and concatenated with the last feature.
* **Head**: two 3x3 conv-BN-ReLU, then a 1x1 convolution to the upsampler's input.
* **DUpsample** (sec. 3.1): the head predicts ``compressed_dim`` = k channels at stride r and
  :class:`segbench.models.layers.DUpsample` reconstructs ``K`` scores per pixel through the
  data-dependent W (``K r^2 x k``, fitted on the training labels by PCA before training and kept
  fixed). The fit runs in :meth:`DUpsampling.setup_from_data` (the task calls it before training)
  and is cached on disk (see :mod:`segbench.models.layers.dupsample`).
* **Softmax with temperature** (sec. 3.2): the returned logits are the reconstruction divided by a
  learned temperature ``T > 0``, so the task's cross-entropy *is* the paper's
  ``softmax(z / T)`` loss. ``T`` does not change the argmax, hence no metric directly; it is
  reported in ``val/loss`` (computed on the tempered logits). The reconstruction ``W x + mu`` lives
  near [0, 1], where an untempered softmax is nearly flat: T lets the loss sharpen it.

Switches, each defaulting to the paper:

* ``upsampler``: ``"dupsample"`` (the paper); ``"bilinear"``: the same network whose head predicts
  K logits at stride r, bilinearly upsampled (the paper's baseline at the same stride);
  ``"deeplabv3plus"``: a DeepLabv3+-style upsample-and-fuse decoder (the head features upsampled to
  stride 4, concatenated with 48 reduced layer1 channels, two 3x3 convolutions, a classifier,
  bilinear x4), the decoder the paper's cost comparison is against (without ASPP, so that only the
  decoders differ).
* ``temperature``: learned softmax temperature on (sec. 3.2) or off.
* ``fusion``: downsample-and-concatenate fusion of ``fuse_layers`` (sec. 3.3) on or off.
* ``basis_fit``: ``"pca"`` (closed form, the paper) or ``"sgd"`` (reconstruction loss, the
  unofficial code); ``train_basis``: W fixed after fitting (the paper) or trained jointly
  afterwards (the unofficial code).
* ``output_stride``: 8, 16 or 32 (the paper: 16 and 32).

Deviations: T is parametrised as ``exp(s)`` (always positive) rather than learned directly; W comes
with the mean patch as its bias (a proper PCA; the paper's eq. 3 has no offset); the head's widths
(256 and 48 channels as in the unofficial code, not stated in the paper) and every backbone width
scale with ``width``. The default stem is the paper's deep stem (conv1_1-conv1_3); torchvision's
ImageNet weights exist only for the 7x7 stem (``stem: resnet``), which the paper-scale configs use.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.errors import ConfigError
from segbench.models.backbones.resnet import ResNet
from segbench.models.base import SegmentationModel, pad_to_multiple, resize_to
from segbench.models.layers.conv import conv_bn_relu
from segbench.models.layers.dupsample import BasisFit, DUpsample, LabelSource, VoidHandling


class LowLevelFusion(nn.Module):
    """Downsample low-level features to the last feature's size, concatenate, reduce by a 1x1
    conv-BN-ReLU, and concatenate with the last feature (paper section 3.3)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(in_channels, out_channels, 1)

    def forward(self, last: Tensor, low: list[Tensor]) -> Tensor:
        size = last.shape[-2:]
        low = [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in low]
        return torch.cat([last, self.reduce(torch.cat(low, 1))], 1)


class UpsampleAndFuseDecoder(nn.Module):
    """DeepLabv3+'s decoder (Chen et al. 2018, sec. 3.2): features upsampled to the stride of
    ``low`` (4), concatenated with ``low`` reduced to a few channels, two 3x3 conv-BN-ReLU and a
    1x1 classifier."""

    def __init__(
        self, in_channels: int, low_channels: int, reduced: int, mid: int, num_classes: int
    ) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(low_channels, reduced, 1)
        self.convs = nn.Sequential(
            conv_bn_relu(in_channels + reduced, mid, 3), conv_bn_relu(mid, mid, 3)
        )
        self.classifier = nn.Conv2d(mid, num_classes, 1)

    def forward(self, x: Tensor, low: Tensor) -> Tensor:
        x = resize_to(x, low.shape[-2:])
        return self.classifier(self.convs(torch.cat([x, self.reduce(low)], 1)))


class DUpsampling(SegmentationModel):
    """ResNet encoder, low-level fusion, and a data-dependent (or bilinear, or DeepLabv3+) decoder.

    Args:
        num_classes: number of output classes K.
        upsampler: ``"dupsample"`` (paper sec. 3.1), ``"bilinear"`` (the baseline at the same
            output stride) or ``"deeplabv3plus"`` (upsample-and-fuse decoder at stride 4, the
            paper's cost comparison).
        temperature: divide the logits by a learned temperature T (sec. 3.2, "adaptive
            temperature softmax"); the task's cross-entropy is then softmax(z / T).
        fusion: downsample ``fuse_layers`` to the last feature's resolution and concatenate
            (sec. 3.3); off: the head sees the last feature alone.
        fuse_layers: backbone features to fuse (names of ``ResNet.feature_names``: stem,
            layer1, layer2, layer3); default the stem and layer3 (the unofficial code's
            conv1 + layer3).
        output_stride: stride of the last feature map and of the upsampling (8, 16, 32).
        compressed_dim: k, the channels the head predicts for DUpsample (unofficial code: 64).
        basis_fit: how W is fitted on the training labels: ``"pca"`` (the paper's closed form)
            or ``"sgd"`` (reconstruction loss by SGD, the unofficial code's pre-training).
        train_basis: ``False``: W fixed after fitting (the paper); ``True``: trained jointly
            with the network afterwards (the unofficial code).
        basis_void: void pixels in the fit: ``"zero"`` (an all-zero one-hot vector) or
            ``"drop_patch"`` (patches with void pixels are left out).
        basis_sgd_steps: steps of the ``"sgd"`` fit.
        basis_cache: directory of the fitted-W cache (``None``: ``$SEGBENCH_CACHE`` or
            ``~/.cache/segbench``).
        depth: ResNet depth (paper: 50).
        stem: ``"deep"`` (three 3x3 convolutions, the paper's conv1_1-1_3) or ``"resnet"``
            (7x7, the stem of torchvision's ImageNet weights).
        width: channel multiplier of the backbone and the decoder (1.0 = the paper's sizes).
        backbone_weights: ``None`` (random), a torchvision ``ResNet<depth>_Weights`` member such
            as ``"IMAGENET1K_V1"`` (needs ``stem: resnet``), or a path to a state dict.
    """

    test_kwargs: ClassVar[dict[str, Any]] = {"width": 1 / 16, "compressed_dim": 16}

    def __init__(
        self,
        num_classes: int,
        *,
        upsampler: Literal["dupsample", "bilinear", "deeplabv3plus"] = "dupsample",
        temperature: bool = True,
        fusion: bool = True,
        fuse_layers: tuple[str, ...] = ("stem", "layer3"),
        output_stride: Literal[8, 16, 32] = 16,
        compressed_dim: int = 64,
        basis_fit: BasisFit = "pca",
        train_basis: bool = False,
        basis_void: VoidHandling = "zero",
        basis_sgd_steps: int = 2000,
        basis_cache: str | None = None,
        depth: Literal[18, 34, 50, 101, 152] = 50,
        stem: Literal["resnet", "deep"] = "deep",
        width: float = 1.0,
        backbone_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.upsampler_type = num_classes, upsampler
        self.output_stride = output_stride
        self.backbone = ResNet(
            depth=depth,
            width=width,
            output_stride=output_stride,
            stem=stem,
            weights=backbone_weights,
        )
        names = self.backbone.feature_names
        channels = {f.name: f.channels for f in self.backbone.feature_info}
        head = max(8, round(256 * width))
        reduced = max(4, round(48 * width))

        self.fuse_layers = tuple(fuse_layers) if fusion else ()
        bad = [n for n in self.fuse_layers if n not in names[:-1]]
        if bad or (fusion and not self.fuse_layers):
            raise ConfigError(f"fuse_layers must name some of {names[:-1]}, got {fuse_layers}")
        in_head = channels[names[-1]]
        if fusion:
            self.fusion = LowLevelFusion(sum(channels[n] for n in self.fuse_layers), reduced)
            in_head += reduced
        self.head = nn.Sequential(conv_bn_relu(in_head, head, 3), conv_bn_relu(head, head, 3))

        if upsampler == "dupsample":
            self.project = nn.Conv2d(head, compressed_dim, 1)
            self.upsample = DUpsample(
                compressed_dim,
                num_classes,
                output_stride,
                trainable=train_basis,
                fit=basis_fit,
                void=basis_void,
                sgd_steps=basis_sgd_steps,
                cache_dir=basis_cache,
            )
        elif upsampler == "bilinear":
            self.classifier = nn.Conv2d(head, num_classes, 1)
        else:
            self.decoder = UpsampleAndFuseDecoder(
                head, channels["layer1"], reduced, head, num_classes
            )
        if temperature:
            # T = exp(log_temperature), starting at 1.
            self.log_temperature = nn.Parameter(torch.zeros(()))

    @property
    def temperature(self) -> Tensor | None:
        """The learned softmax temperature T, or ``None`` when the switch is off."""
        return self.log_temperature.exp() if hasattr(self, "log_temperature") else None

    def setup_from_data(self, datamodule: L.LightningDataModule) -> None:
        """Fit DUpsample's W on the training labels (cached on disk, shared across DDP ranks)."""
        if self.upsampler_type != "dupsample":
            return
        if not isinstance(datamodule, LabelSource):
            raise ConfigError(
                f"DUpsampling fits its upsampling basis W on the training labels, which "
                f"{type(datamodule).__name__} does not give (label_maps, label_fingerprint): "
                "use a segbench data module, or model.net.init_args.upsampler bilinear"
            )
        self.upsample.fit_from_datamodule(datamodule)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        x, _ = pad_to_multiple(x, self.output_stride)
        feats = self.backbone.named(self.backbone(x))
        y = feats[self.backbone.feature_names[-1]]
        if self.fuse_layers:
            y = self.fusion(y, [feats[n] for n in self.fuse_layers])
        y = self.head(y)
        if self.upsampler_type == "dupsample":
            out = self.upsample(self.project(y))
        elif self.upsampler_type == "bilinear":
            out = resize_to(self.classifier(y), x.shape[-2:])
        else:
            out = resize_to(self.decoder(y, feats["layer1"]), x.shape[-2:])
        out = out[..., : size[0], : size[1]]
        t = self.temperature
        return {"out": out if t is None else out / t}
