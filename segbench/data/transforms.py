"""Joint image/mask transforms on ``torchvision.transforms.v2``.

Samples are dicts ``{"image": tv_tensors.Image (uint8, 3 x H x W), "mask": tv_tensors.Mask
(int64, H x W), ...}``; v2 applies every geometric transform to both, resizing masks with nearest
neighbour and padding them with ``ignore_index``. Only the photometric steps (dtype, normalise)
touch the image alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from segbench.errors import ConfigError


@dataclass
class Augment:
    """Training-time augmentation, applied jointly to image and mask.

    Attributes:
        scale_range: random rescaling factor, uniform in ``[low, high]`` (``[1, 1]``: off).
            Images are resized bilinearly, masks with nearest neighbour.
        crop_size: random crop ``[height, width]`` after rescaling (``None``: no crop). Smaller
            images are padded, the mask with ``ignore_index``, so every batch has this size.
        flip: random horizontal flip with probability 0.5.
        rotation: random rotation in ``[-rotation, rotation]`` degrees (0: off); the mask's
            uncovered corners become ``ignore_index``.
        color_jitter: photometric jitter of the image alone, ``[brightness, contrast,
            saturation, hue]`` as torchvision's ``ColorJitter`` (factors drawn from ``[1 - b,
            1 + b]``, ..., hue shift from ``[-h, h]``, ``h <= 0.5``); all 0: off. Other light,
            another camera, another drive.
        blur: with probability 0.5, a Gaussian blur of the image with sigma drawn from
            ``[0.1, blur]`` pixels (0: off): defocus and motion.
    """

    scale_range: tuple[float, float] = (1.0, 1.0)
    crop_size: tuple[int, int] | None = None
    flip: bool = True
    rotation: float = 0.0
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    blur: float = 0.0

    def __post_init__(self) -> None:
        key = "data.init_args.augment"
        if self.crop_size is not None and not all(int(n) > 0 for n in self.crop_size):
            raise ConfigError(f"{key}.crop_size is [height, width] > 0, got {self.crop_size}")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError(
                f"{key}.scale_range must satisfy 0 < low <= high, got {self.scale_range}"
            )
        if self.rotation < 0 or self.blur < 0 or min(self.color_jitter) < 0:
            raise ConfigError(
                f"{key}: rotation, blur and color_jitter are 0 or more, got {self.rotation}, "
                f"{self.blur} and {self.color_jitter}"
            )

    @property
    def random(self) -> bool:
        """Whether a step draws random numbers (otherwise the augmentation is the identity)."""
        return (
            tuple(self.scale_range) != (1.0, 1.0)
            or self.crop_size is not None
            or self.flip
            or bool(self.rotation)
            or any(self.color_jitter)
            or bool(self.blur)
        )


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale_range`` (aspect ratio kept)."""

    def __init__(self, scale_range: Sequence[float]) -> None:
        super().__init__()
        self.low, self.high = float(scale_range[0]), float(scale_range[1])
        if not 0 < self.low <= self.high:
            raise ConfigError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        s = self.low + (self.high - self.low) * float(torch.rand(()))
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.resize, inpt, size=params["size"], antialias=True)


class Normalise(v2.Transform):
    """The image to float32 in [0, 1], then ``(x - mean) / std`` per channel; the mask to int64.

    ``v2.ToDtype(scale=True)`` then ``v2.Normalize`` in one step: the same numbers at 60% of the
    cost per sample (a cached 128 x 128 synthetic scene is read in ~0.1 ms, so the two generic
    transforms' dispatch was most of the loader's time)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean = torch.tensor([float(m) for m in mean]).view(-1, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(-1, 1, 1)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return tv_tensors.wrap(inpt.as_subclass(torch.Tensor).long(), like=inpt)
        if isinstance(inpt, tv_tensors.Image):
            x = TF.to_dtype(inpt.as_subclass(torch.Tensor), torch.float32, scale=True)
            return tv_tensors.wrap(x.sub_(self.mean).div_(self.std), like=inpt)
        return inpt


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [Normalise(mean, std)]


def _rescale(scale: float) -> list[v2.Transform]:
    if not scale > 0:
        raise ConfigError(f"data.init_args.scale must be positive, got {scale}")
    return [] if scale == 1.0 else [RandomScale((scale, scale))]


def train_transform(
    augment: Augment,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int,
    scale: float = 1.0,
) -> v2.Compose:
    """(Fixed rescale,) augmentation, then normalisation, for the training split."""
    # Uncovered pixels: the mean colour in the image (0 after normalisation), void in the mask.
    fill = {tv_tensors.Image: [round(255 * m) for m in mean], tv_tensors.Mask: ignore_index}
    steps: list[v2.Transform] = _rescale(scale)
    if tuple(augment.scale_range) != (1.0, 1.0):
        steps.append(RandomScale(augment.scale_range))
    if augment.rotation:
        steps.append(
            v2.RandomRotation(
                augment.rotation, fill=fill, interpolation=v2.InterpolationMode.BILINEAR
            )
        )
    if augment.crop_size is not None:
        steps.append(v2.RandomCrop(list(augment.crop_size), pad_if_needed=True, fill=fill))
    if augment.flip:
        steps.append(v2.RandomHorizontalFlip())
    if any(augment.color_jitter):
        brightness, contrast, saturation, hue = augment.color_jitter
        steps.append(v2.ColorJitter(brightness, contrast, saturation, hue))  # the image only
    if augment.blur:
        kernel = 2 * math.ceil(3 * augment.blur) + 1
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, (0.1, augment.blur))], p=0.5))
    return v2.Compose(steps + _normalise(mean, std))


def eval_transform(
    *, mean: Sequence[float], std: Sequence[float], scale: float = 1.0
) -> v2.Compose:
    """(Fixed rescale, then) normalisation: evaluation sees whole images."""
    return v2.Compose(_rescale(scale) + _normalise(mean, std))
