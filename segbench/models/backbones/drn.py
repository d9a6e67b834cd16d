"""Dilated residual networks (Yu, Koltun, Funkhouser, CVPR 2017; arXiv 1705.09914) as one backbone.

DRN-A, the intermediate degridding stages, DRN-B, DRN-C and DRN-D are the same network with
four switches, so the paper's path A -> B -> C (section 4) is an ablation over one code path::

    stage                    remove_max_pooling add_levels_78 remove_residual_78 plain_conv_levels
    DRN-A                    False              False         -                  False
    1: no max-pool           True               False         -                  False
    2: + levels 7, 8 = DRN-B True               True          False              False
    3: no residual = DRN-C   True               True          True               False
    4: plain = DRN-D         True               True          -                  True

``depth`` picks the ResNet whose four groups form levels 3-6 (18 -> DRN-A-18 / B-26 / C-26 /
D-22; 34 -> A-34 / C-42 / D-38; 50 -> A-50 / C-58 / D-54; 101 -> D-105). Levels 3-6 have 64, 128,
256, 512 channels (x4 with bottlenecks); level 5 is dilated by 2 and level 6 by 4 instead of
strided, for an output stride of 8.

Degridding (paper section 4.2): (1) ``remove_max_pooling`` replaces ResNet's stride-2 7x7
convolution and max-pool, whose high-amplitude high-frequency output feeds the dilated layers, by
a stride-1 7x7 convolution (16 channels) and two levels of residual blocks (level 1: 16 channels,
stride 1; level 2: 32 channels, stride 2); level 3 then does the next downsampling itself.
(2) ``add_levels_78`` appends levels 7 and 8 (512 channels, one basic block each, dilation 2 and
1) to undo the aliasing of the dilation-4 level. (3) ``remove_residual_78`` drops their residual
connections, which would otherwise carry level 6's gridded activations straight to the output.
(4) ``plain_conv_levels`` (DRN-D, fyu/drn's code, after the paper) makes levels 1, 2, 7 and 8 single
3x3 convolution-BN-ReLU layers, with a 7x7 convolution-BN-ReLU stem (``layer0``).

Paper vs code (fyu/drn ``drn.py``), as switches:

* ``first_dilation``: the paper dilates every block of levels 5 and 6 (``"full"``, the default,
  and what fyu/drn's DRN-C/D code does); fyu/drn's ``DRN_A`` leaves the first block of each
  dilated group undilated (``"one"``), which is the shared ResNet's switch of the same name.
* ``unused_projection``: fyu/drn's ``_make_layer`` builds a 1x1 projection shortcut whenever the
  widths differ, also for the residual-free level 7 of DRN-C-58 (2048 -> 512 channels, 1,049,600
  parameters); the forward pass computes and discards it. ``True`` builds it (state dict and
  parameter count equal the official DRN-C-58's; those parameters never get a gradient); the
  default leaves it out.

Parameter names follow each layout's reference, so weights load key for key: with the max-pool
(DRN-A) torchvision's ResNet (``conv1``, ``bn1``, ``layer1`` ... ``layer4``, then ``layer5``,
``layer6`` for levels 7-8 if added); without it fyu/drn's DRN-C (``conv1``, ``bn1``, ``layer1`` ...
``layer8``) or DRN-D (``layer0`` ... ``layer8``). Initialisation as fyu/drn: convolutions
N(0, sqrt(2 / (k * k * out))), BN weight 1, bias 0.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from segbench.models.backbones.base import Backbone, scaled_channels
from segbench.models.backbones.resnet import (
    _LAYERS,
    BasicBlock,
    Bottleneck,
    group_plan,
    init_resnet,
    make_group,
)
from segbench.models.backbones.weights import assign_state_dict, load_state_dict, on_meta_device
from segbench.models.layers.conv import conv_bn_relu

#: Channels of levels 1-8 (fyu/drn's ``channels``); levels 3-6 x4 with bottleneck blocks.
LEVEL_CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)
#: The stem width of the max-pool (DRN-A / ResNet) layout.
RESNET_STEM_CHANNELS = 64


class DRNBackbone(Backbone):
    """A DRN trunk; ``forward`` returns the output of every level, ordered by stride.

    Features: ``level1`` ... ``level8`` without the max-pool (strides 1, 2, 4, 8, 8, 8, 8, 8 at
    output stride 8); with it, ``stem`` (the 7x7 convolution's output, stride 2) then
    ``level3`` ... ``level6`` (and ``level7``, ``level8`` if added).

    Args:
        depth: the ResNet whose groups form levels 3-6: 18 and 34 (basic blocks), 50 and 101
            (bottlenecks).
        remove_max_pooling: degridding step 1 (section 4.2, "removing max pooling"): levels 1-2
            are convolutional (stride-1 7x7 stem, residual blocks of 16 and 32 channels) instead
            of ResNet's stride-2 7x7 convolution and max-pool.
        add_levels_78: degridding step 2 ("adding layers"): levels 7 and 8 (one block each,
            dilation 2 then 1) after the dilation-4 level 6.
        remove_residual_78: degridding step 3 ("removing residual connections"): levels 7 and 8
            without their skip connections (DRN-C); ``False`` keeps them (DRN-B).
        plain_conv_levels: DRN-D's simplification (fyu/drn code): levels 1, 2, 7, 8 as single
            conv-BN-ReLU layers and a 7x7 conv-BN-ReLU stem.
        first_dilation: dilation of the first block of levels 5 and 6: ``"full"`` (paper,
            fyu/drn's DRN-C/D) or ``"one"`` (fyu/drn's DRN-A code: undilated first block).
        unused_projection: build the 1x1 projection that fyu/drn creates (and never adds) for a
            residual-free level 7 whose input is wider (DRN-C-58), so the parameter count and
            state dict equal the official ones.
        width: channel multiplier (1.0 = the paper's widths).
        min_channels: no level narrower than this after the multiplier (CPU scale: at width
            1/4 levels 1-2 would have 4 and 8 channels; 1 = no floor).
        output_stride: 8 (the paper: levels 5-8 dilated 2, 4, 2, 1), 16 (level 5 strided;
            dilations 1, 2, 1, 1) or 32 (no dilation).
        weights: ``None``, or a path to a state dict with this layout's names (fyu/drn's
            checkpoints; ``fc.*`` is ignored), or, for the DRN-A layout, a member of
            torchvision's ``ResNet<depth>_Weights`` such as ``"IMAGENET1K_V1"``.
    """

    def __init__(
        self,
        *,
        depth: Literal[18, 34, 50, 101] = 18,
        remove_max_pooling: bool = True,
        add_levels_78: bool = True,
        remove_residual_78: bool = True,
        plain_conv_levels: bool = False,
        first_dilation: Literal["full", "one"] = "full",
        unused_projection: bool = False,
        width: float = 1.0,
        min_channels: int = 1,
        output_stride: Literal[8, 16, 32] = 8,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        block: type[BasicBlock | Bottleneck] = BasicBlock if depth < 50 else Bottleneck
        floor = max(1, min_channels)
        ch = [scaled_channels(c, width, floor) for c in LEVEL_CHANNELS]
        self.layout: Literal["maxpool", "residual", "plain"] = (
            "maxpool" if not remove_max_pooling else "plain" if plain_conv_levels else "residual"
        )
        # Level i lives in attribute layer{i - offset}: torchvision's names with the max-pool.
        offset = 2 if self.layout == "maxpool" else 0
        names: list[str] = []
        channels: list[int] = []
        strides: list[int] = []
        self._attrs: list[str] = []

        def add(level: int, module: nn.Module, c_out: int, stride: int) -> None:
            attr = f"layer{level - offset}"
            setattr(self, attr, module)
            self._attrs.append(attr)
            names.append(f"level{level}")
            channels.append(c_out)
            strides.append(stride)

        if self.layout == "maxpool":
            stem = scaled_channels(RESNET_STEM_CHANNELS, width, floor)
            self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            names.append("stem")
            channels.append(stem)
            strides.append(2)
            inplanes, stride = stem, 4
        else:
            if self.layout == "plain":
                self.layer0 = nn.Sequential(*conv_bn_relu(3, ch[0], kernel=7))
                level1 = nn.Sequential(*conv_bn_relu(ch[0], ch[0]))
                level2 = nn.Sequential(*conv_bn_relu(ch[0], ch[1], stride=2))
            else:
                self.conv1 = nn.Conv2d(3, ch[0], 7, stride=1, padding=3, bias=False)
                self.bn1 = nn.BatchNorm2d(ch[0])
                self.relu = nn.ReLU(inplace=True)
                level1 = make_group(BasicBlock, ch[0], ch[0], 1)
                level2 = make_group(BasicBlock, ch[0], ch[1], 1, stride=2)
            add(1, level1, ch[0], 1)
            add(2, level2, ch[1], 2)
            inplanes, stride = ch[1], 2

        # Levels 3-6: the ResNet's four groups, level 3 strided unless the max-pool was.
        plan = group_plan(
            _LAYERS[depth],
            output_stride=output_stride,
            first_dilation=first_dilation,
            first_stride=1 if self.layout == "maxpool" else 2,
        )
        last_dilation = 1
        for i, (n, (step, dilations)) in enumerate(zip(_LAYERS[depth], plan, strict=True)):
            planes = ch[2 + i]
            stride *= step
            group = make_group(block, inplanes, planes, n, stride=step, dilations=dilations)
            inplanes = planes * block.expansion
            add(3 + i, group, inplanes, stride)
            last_dilation = dilations[-1]

        if add_levels_78:
            # Dilation halves back to 1: 4 -> 2 -> 1 at output stride 8.
            for level, dilation in ((7, max(1, last_dilation // 2)), (8, 1)):
                planes = ch[level - 1]
                if plain_conv_levels:
                    module = nn.Sequential(*conv_bn_relu(inplanes, planes, dilation=dilation))
                else:
                    module = make_group(
                        BasicBlock,
                        inplanes,
                        planes,
                        1,
                        dilations=[dilation],
                        residual=not remove_residual_78,
                    )
                    if unused_projection and remove_residual_78 and inplanes != planes:
                        module[0].downsample = nn.Sequential(
                            nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
                        )
                inplanes = planes
                add(level, module, planes, stride)

        self.describe(names, channels, strides)
        self.output_stride = output_stride
        init_resnet(self)
        if weights is not None and not on_meta_device():
            self._load(weights, depth)

    def _load(self, weights: str, depth: int) -> None:
        enum = f"ResNet{depth}_Weights"
        state = load_state_dict(weights, enum)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        assign_state_dict(self, state, f"{enum}:{weights}")

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        if self.layout == "maxpool":
            x = self.relu(self.bn1(self.conv1(x)))
            feats.append(x)
            x = self.maxpool(x)
        elif self.layout == "plain":
            x = self.layer0(x)
        else:
            x = self.relu(self.bn1(self.conv1(x)))
        for attr in self._attrs:
            x = getattr(self, attr)(x)
            feats.append(x)
        return feats
