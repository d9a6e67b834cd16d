"""ResNet-18/34/50/101/152 as a dilated backbone (DRN-A, GALD, DUpsampling, ...).

The layout and parameter names are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``;
``Bottleneck`` with the stride on its 3x3 convolution), so torchvision's ImageNet weights load key
for key. The blocks are written here because torchvision's ``BasicBlock`` refuses dilation, which
DRN-A-18/34 need.

Dilation replaces stride in ``layer3`` / ``layer4`` for an output stride of 16 or 8. Where the
first block of a dilated group sits is a real difference between the papers' code bases, so it is a
switch (``first_dilation``):

* ``"previous"``: the first block keeps the previous group's dilation (torchvision's
  ``replace_stride_with_dilation``);
* ``"one"``: the first block is not dilated (fyu/drn's ``DRN_A``: the official DRN-A);
* ``"full"``: every block has the group's dilation (the DRN paper's DRN-A, DeepLab, GALD's code).

``multi_grid`` multiplies the dilation of successive blocks of ``layer4`` (DeepLab-v3 and GALD's
(1, 2, 4)). ``stem="deep"`` replaces the 7x7 stem by three 3x3 convolutions (64, 64, 128 channels:
the "deep stem" of PSPNet / CCNet / GALD, named ``conv1/bn1, conv2/bn2, conv3/bn3``).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from segbench.models.backbones.base import Backbone, scaled_channels
from segbench.models.backbones.weights import assign_state_dict, load_state_dict, on_meta_device

_LAYERS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def conv3x3(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; ``dilation`` per convolution; ``residual=False`` drops the skip
    connection (DRN-C's levels 7 and 8)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: tuple[int, int] = (1, 1),
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation[0])
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dilation=dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided, dilated), 1x1 with 4x expansion (torchvision's ResNet v1.5)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: tuple[int, int] = (1, 1),
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


def make_group(
    block: type[BasicBlock | Bottleneck],
    inplanes: int,
    planes: int,
    blocks: int,
    *,
    stride: int = 1,
    dilations: list[int] | None = None,
    residual: bool = True,
) -> nn.Sequential:
    """``blocks`` blocks; the first may be strided (with a 1x1 projection shortcut); block i
    has dilation ``dilations[i]`` on its 3x3 convolution(s)."""
    dilations = dilations or [1] * blocks
    downsample = None
    if residual and (stride != 1 or inplanes != planes * block.expansion):
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample, (dilations[0], dilations[0]), residual)]
    layers += [
        block(planes * block.expansion, planes, dilation=(d, d), residual=residual)
        for d in dilations[1:]
    ]
    return nn.Sequential(*layers)


def group_plan(
    counts: tuple[int, ...],
    *,
    output_stride: int,
    first_dilation: Literal["previous", "one", "full"],
    multi_grid: tuple[int, ...] = (1,),
    first_stride: int = 1,
) -> list[tuple[int, list[int]]]:
    """``(stride, per-block dilations)`` of the four groups of a dilated ResNet.

    The groups run at strides 4, 8, 16, 32 of the input; for an output stride of 16 (8) the last
    one (two) keep the resolution and dilate by 2 (2 and 4) instead. ``first_stride`` is the
    stride of the first group: 1 after ResNet's max-pool, 2 where that group does the
    downsampling itself (DRN-B/C/D's level 3). ``first_dilation`` and ``multi_grid`` as in
    :class:`ResNet`.
    """
    dilate = {32: (1, 1), 16: (1, 2), 8: (2, 4)}[output_stride]
    plan, prev = [], 1
    for i, n in enumerate(counts):
        d = dilate[i - 2] if i >= 2 else 1
        stride = (first_stride if i == 0 else 2) if d == 1 else 1
        grid = multi_grid if i == 3 else (1,)
        dilations = [d * grid[j % len(grid)] for j in range(n)]
        if d > 1 and first_dilation != "full":
            dilations[0] = prev if first_dilation == "previous" else 1
        plan.append((stride, dilations))
        prev = d
    return plan


def init_resnet(module: nn.Module) -> None:
    """He (fan-out) initialisation of convolutions, BN weight 1 and bias 0 (torchvision)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(Backbone):
    """A ResNet trunk; ``forward`` returns ``[stem, layer1, layer2, layer3, layer4]``.

    Args:
        depth: 18, 34 (basic blocks), 50, 101 or 152 (bottlenecks).
        width: channel multiplier (1.0 = the paper's ResNet).
        output_stride: 32, 16 (layer4 dilated x2) or 8 (layer3 x2, layer4 x4).
        first_dilation: dilation of the first block of a dilated group: ``"previous"``
            (torchvision), ``"one"`` (fyu/drn's DRN-A code), ``"full"`` (DRN paper, DeepLab,
            GALD code).
        multi_grid: per-block multipliers of layer4's dilation, cycled (GALD: [1, 2, 4]).
        stem: ``"resnet"`` (7x7 stride-2 convolution) or ``"deep"`` (three 3x3 convolutions).
        weights: ``None``; a member of torchvision's ``ResNet<depth>_Weights`` (e.g.
            ``"IMAGENET1K_V1"``, 7x7 stem only); or a path to a state dict with these keys.
    """

    def __init__(
        self,
        *,
        depth: Literal[18, 34, 50, 101, 152] = 50,
        width: float = 1.0,
        output_stride: Literal[8, 16, 32] = 32,
        first_dilation: Literal["previous", "one", "full"] = "previous",
        multi_grid: tuple[int, ...] = (1,),
        stem: Literal["resnet", "deep"] = "resnet",
        weights: str | None = None,
    ) -> None:
        super().__init__()
        block: type[BasicBlock | Bottleneck] = BasicBlock if depth < 50 else Bottleneck
        c = [scaled_channels(n, width) for n in (64, 128, 256, 512)]
        self.stem_type = stem
        if stem == "resnet":
            self.conv1 = nn.Conv2d(3, c[0], 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(c[0])
            stem_out = c[0]
        else:
            self.conv1 = conv3x3(3, c[0], stride=2)
            self.bn1 = nn.BatchNorm2d(c[0])
            self.conv2 = conv3x3(c[0], c[0])
            self.bn2 = nn.BatchNorm2d(c[0])
            self.conv3 = conv3x3(c[0], 2 * c[0])
            self.bn3 = nn.BatchNorm2d(2 * c[0])
            stem_out = 2 * c[0]
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        plan = group_plan(
            _LAYERS[depth],
            output_stride=output_stride,
            first_dilation=first_dilation,
            multi_grid=multi_grid,
        )
        inplanes = stem_out
        for i, (planes, n, (stride, dilations)) in enumerate(
            zip(c, _LAYERS[depth], plan, strict=True)
        ):
            setattr(
                self,
                f"layer{i + 1}",
                make_group(block, inplanes, planes, n, stride=stride, dilations=dilations),
            )
            inplanes = planes * block.expansion

        self.describe(
            ["stem", "layer1", "layer2", "layer3", "layer4"],
            [stem_out, *(p * block.expansion for p in c)],
            [2, 4, 8, min(16, output_stride), output_stride],
        )
        self.output_stride = output_stride
        init_resnet(self)
        if weights is not None and not on_meta_device():
            state = load_state_dict(weights, f"ResNet{depth}_Weights")
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            assign_state_dict(self, state, f"ResNet{depth}_Weights:{weights}")

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem_type == "deep":
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        feats = [x]
        x = self.maxpool(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            feats.append(x)
        return feats
