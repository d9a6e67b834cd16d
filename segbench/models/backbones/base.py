"""What every backbone is: ``forward(x) -> list[Tensor]`` ordered by stride, described once.

Each backbone sets :attr:`Backbone.feature_info`, one :class:`Feature` (name, channels, stride) per
output, in the order ``forward`` returns them; the names, channels and strides are read from it
(``backbone.feature("conv5").channels``, ``backbone.named(outputs)["fc7"]``), never kept in
parallel lists.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from segbench.errors import ConfigError


def scaled_channels(channels: int, width: float, floor: int = 1) -> int:
    """``channels`` times the width multiplier (CPU-scale networks), at least ``floor``."""
    if not width > 0:
        raise ConfigError(f"model.net.init_args.width must be positive, got {width}")
    return max(floor, round(channels * width))


class Feature(NamedTuple):
    """One output of a backbone."""

    name: str
    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class: subclasses set :attr:`feature_info` and ``output_stride``."""

    feature_info: tuple[Feature, ...] = ()
    output_stride: int = 1

    def describe(self, names: list[str], channels: list[int], strides: list[int]) -> None:
        """Set :attr:`feature_info` from a backbone's construction bookkeeping."""
        self.feature_info = tuple(Feature(*f) for f in zip(names, channels, strides, strict=True))

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.feature_info)

    @property
    def out_channels(self) -> tuple[int, ...]:
        return tuple(f.channels for f in self.feature_info)

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(f.stride for f in self.feature_info)

    def feature(self, name: str) -> Feature:
        """The description of the output ``name``."""
        for f in self.feature_info:
            if f.name == name:
                return f
        raise KeyError(
            f"{type(self).__name__} has no feature {name!r}; it has {self.feature_names}"
        )

    def named(self, outputs: list[Tensor]) -> dict[str, Tensor]:
        """``forward``'s list as ``{name: tensor}``."""
        return dict(zip(self.feature_names, outputs, strict=True))
