"""VGG16 as a fully convolutional trunk (FCN, ParseNet).

The convolutional part is torchvision's own definition (``torchvision.models.vgg.make_layers``
with configuration "D", optionally with batch norm), so torchvision's ImageNet weights load into
it key for key. The classifier's fc6 and fc7 become a 7x7 and a 1x1 convolution (FCN section 3.1),
carrying the ImageNet weights over by reshaping.

Scale knobs and switches:

* ``width`` multiplies every channel count (64 ... 512, and 4096 for fc6/fc7), so the same shape
  runs on a laptop CPU; pretrained weights exist at ``width=1`` only.
* ``caffe_padding`` reproduces the reference Caffe geometry: conv1_1 padded by 100, pooling with
  ceil mode, fc6 unpadded. The output is then larger than the input and the FCN head crops it
  with the reference offsets. Off, every layer keeps "same" padding and the stride-32 map is
  exactly ``H/32 x W/32``.
* ``output_stride`` 16 or 8 removes the stride of pool5 (and pool4) and dilates the following
  convolutions instead (DeepLab-v1 style), for architectures that want denser features.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from segbench.errors import ConfigError
from segbench.models.backbones.base import Backbone, scaled_channels
from segbench.models.backbones.weights import assign_state_dict, load_state_dict, on_meta_device

_STAGE_NAMES = ("pool1", "pool2", "pool3", "pool4", "pool5")


class VGG16(Backbone):
    """VGG16 trunk; ``forward`` returns ``[pool1, pool2, pool3, pool4, pool5, fc7]``.

    Args:
        width: channel multiplier (1.0 = the paper's VGG16).
        batch_norm: torchvision's ``vgg16_bn`` layout (BN after every convolution). Not in the
            FCN paper; it lets the trunk train from scratch quickly at CPU scale.
        fc: build fc6/fc7 as convolutions (FCN). ``False`` ends the trunk at pool5.
        caffe_padding: the reference Caffe geometry (pad 100, ceil-mode pooling, unpadded fc6).
        output_stride: 32 (VGG), 16 or 8 (pool strides replaced by dilation).
        dropout: dropout after fc6 and fc7 (0.5 in VGG and FCN).
        weights: ``None`` for random initialisation; a member name of torchvision's
            ``VGG16_Weights`` / ``VGG16_BN_Weights`` (e.g. ``"IMAGENET1K_V1"``) or a path to a
            state dict in torchvision's format.
    """

    def __init__(
        self,
        *,
        width: float = 1.0,
        batch_norm: bool = False,
        fc: bool = True,
        caffe_padding: bool = False,
        output_stride: Literal[8, 16, 32] = 32,
        dropout: float = 0.5,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if caffe_padding and output_stride != 32:
            raise ConfigError("caffe_padding reproduces the stride-32 reference only")
        cfg = [c if c == "M" else scaled_channels(c, width) for c in cfgs["D"]]
        self.features = make_layers(cfg, batch_norm=batch_norm)
        self.caffe_padding = caffe_padding

        # Stage boundaries: the index just after each max-pool in ``features``.
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self._stage_ends = [i + 1 for i in pools]
        # Dilation instead of stride for the last one or two pools.
        num_dilated = {32: 0, 16: 1, 8: 2}[output_stride]
        dilation = 1
        for stage, pool_idx in enumerate(pools):
            if stage >= len(pools) - num_dilated:
                self.features[pool_idx] = nn.MaxPool2d(3, stride=1, padding=1)
            start = pools[stage - 1] + 1 if stage else 0
            for m in list(self.features)[start:pool_idx]:
                if isinstance(m, nn.Conv2d) and dilation > 1:
                    m.dilation, m.padding = (dilation, dilation), (dilation, dilation)
            if stage >= len(pools) - num_dilated:
                dilation *= 2
        if caffe_padding:
            self.features[0].padding = (100, 100)
            for i in pools:
                self.features[i].ceil_mode = True

        channels = [cfg[i - 1] for i, c in enumerate(cfg) if c == "M"]
        strides = [min(2 ** (s + 1), output_stride) for s in range(5)]
        names = list(_STAGE_NAMES)
        self.fc = fc
        if fc:
            fc_channels = scaled_channels(4096, width)
            pad = 0 if caffe_padding else 3 * dilation
            self.fc6 = nn.Conv2d(channels[-1], fc_channels, 7, padding=pad, dilation=dilation)
            self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
            self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
            channels.append(fc_channels)
            strides.append(output_stride)
            names.append("fc7")

        self.describe(names, channels, strides)
        self.output_stride = output_stride
        self._init_weights()
        if weights is not None and not on_meta_device():
            self.load_torchvision_weights(weights, batch_norm=batch_norm)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def load_torchvision_weights(self, weights: str, *, batch_norm: bool) -> None:
        """Load torchvision VGG16 weights, reshaping classifier.0/3 into fc6/fc7."""
        enum = "VGG16_BN_Weights" if batch_norm else "VGG16_Weights"
        state = load_state_dict(weights, enum)
        mapped = {k: v for k, v in state.items() if k.startswith("features.")}
        if self.fc:
            fc6, fc7 = state.get("classifier.0.weight"), state.get("classifier.3.weight")
            # The IMAGENET1K_FEATURES weights ship a NaN classifier: keep fc6/fc7 random then.
            if fc6 is None or fc7 is None or torch.isnan(fc6).any():
                own = self.state_dict()
                mapped.update({k: own[k] for k in own if k.startswith(("fc6.", "fc7."))})
            else:
                # Reshape only what fits; a misfit is reported by assign_state_dict below.
                for name, w, b in (
                    ("fc6", fc6, "classifier.0.bias"),
                    ("fc7", fc7, "classifier.3.bias"),
                ):
                    shape = getattr(self, name).weight.shape
                    mapped[f"{name}.weight"] = w.reshape(shape) if w.numel() == shape.numel() else w
                    mapped[f"{name}.bias"] = state[b]
        assign_state_dict(self, mapped, f"{enum}:{weights}")

    def forward(self, x: Tensor) -> list[Tensor]:
        feats: list[Tensor] = []
        start = 0
        for end in self._stage_ends:
            for layer in self.features[start:end]:
                x = layer(x)
            feats.append(x)
            start = end
        if self.fc:
            x = self.drop(torch.relu(self.fc6(x)))
            x = self.drop(torch.relu(self.fc7(x)))
            feats.append(x)
        return feats
