"""Evaluation protocols: how a trained network predicts the label map of a whole test image.

The papers score their networks in three ways, which the task offers per stage
(``SegmentationTask(val_protocol=..., test_protocol=...)``):

* **whole image** (FCN, DRN): the network sees the whole image once;
* **sliding window** (PSPNet, GALD on Cityscapes): the network sees ``crop_size`` windows every
  ``stride`` pixels, as it saw crops in training; the logits of overlapping windows are averaged.
  An image smaller than a window is padded (bottom/right, with 0: the mean colour after
  normalisation) and the padding's logits are dropped;
* **multi-scale + flip test-time augmentation** (DeepLab, GALD, DUpsampling): the image is resized
  by each of ``scales`` and optionally mirrored; the softmax probabilities of every view, resized
  back to the label's size (and mirrored back), are averaged.

In every protocol the prediction is resized (bilinearly, as logits or probabilities) to the size
of the label map before it is scored, so a data set that keeps its labels at their original
resolution is scored there whatever size the network saw. To score a network trained on
downscaled images at the labels' own resolution, let the data module deliver full-size images
(``scale: 1``) and set ``scales: [0.5]`` here.

Everything here treats the network as a function ``image -> {"out": logits}``: no architecture is
special.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from segbench.errors import ConfigError
from segbench.models.base import resize_to

Net = Callable[[Tensor], dict[str, Tensor]]


@dataclass(frozen=True)
class EvalProtocol:
    """How an evaluation image is predicted (see :mod:`segbench.inference`).

    Attributes:
        mode: ``whole``: the network sees the whole (resized) image; ``slide``: it sees
            ``crop_size`` windows every ``stride`` pixels and overlapping logits are averaged.
        crop_size: window ``[height, width]`` of ``slide`` (required there).
        stride: step ``[height, width]`` between windows of ``slide`` (required there; smaller
            than ``crop_size`` for overlapping windows).
        scales: resize factors of the image (bilinear); the probabilities of all scales are
            resized to the label's size and averaged. ``[1.0]``: single scale.
        flip: also predict the horizontally mirrored image of every scale (mirrored back) and
            average its probabilities in.
    """

    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self) -> None:
        if self.mode == "slide" and (self.crop_size is None or self.stride is None):
            raise ConfigError("EvalProtocol: mode 'slide' needs crop_size and stride")
        for name, pair in (("crop_size", self.crop_size), ("stride", self.stride)):
            if pair is not None and (len(pair) != 2 or min(pair) < 1):
                raise ConfigError(f"EvalProtocol: {name} must be two positive sizes, got {pair}")
        if not self.scales or min(self.scales) <= 0:
            raise ConfigError(f"EvalProtocol: scales must be positive, got {list(self.scales)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples): checkpoints stay loadable with ``weights_only``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def views(self) -> int:
        """How many forward passes (per window) an image costs: scales x flips."""
        return len(self.scales) * (2 if self.flip else 1)


#: The default: one forward pass of the whole image.
WHOLE_IMAGE = EvalProtocol()


def slide_logits(
    net: Net, image: Tensor, crop_size: tuple[int, int], stride: tuple[int, int]
) -> Tensor:
    """Logits ``N x K x H x W`` of ``image`` from windows of ``crop_size`` every ``stride``.

    The windows start at multiples of the stride; the last row and column are moved back to end
    at the image's border, so every pixel is covered and every window is full-size (the image is
    first padded to at least one window). Each pixel gets the mean of the logits of the windows
    that cover it.
    """
    h, w = image.shape[-2:]
    (ch, cw), (sh, sw) = crop_size, stride
    padded = F.pad(image, (0, max(cw - w, 0), 0, max(ch - h, 0)))
    ph, pw = padded.shape[-2:]
    rows = sorted({min(y, ph - ch) for y in range(0, max(ph - ch, 0) + sh, sh)})
    cols = sorted({min(x, pw - cw) for x in range(0, max(pw - cw, 0) + sw, sw)})
    total: Tensor | None = None
    count = torch.zeros((1, 1, ph, pw), dtype=image.dtype, device=image.device)
    for y in rows:
        for x in cols:
            out = net(padded[..., y : y + ch, x : x + cw])["out"]
            if total is None:
                total = out.new_zeros((out.shape[0], out.shape[1], ph, pw))
            total[..., y : y + ch, x : x + cw] += out
            count[..., y : y + ch, x : x + cw] += 1
    assert total is not None  # at least one window
    return (total / count)[..., :h, :w]


def view_logits(net: Net, image: Tensor, protocol: EvalProtocol) -> Tensor:
    """Logits of one view (already resized / mirrored) under the protocol's mode."""
    if protocol.mode == "slide":
        assert protocol.crop_size is not None
        assert protocol.stride is not None
        return slide_logits(net, image, protocol.crop_size, protocol.stride)
    return net(image)["out"]


def predict_log_probs(
    net: Net,
    image: Tensor,
    protocol: EvalProtocol = WHOLE_IMAGE,
    size: tuple[int, int] | None = None,
) -> Tensor:
    """Log-probabilities ``N x K x size`` of ``image`` (``N x 3 x H x W``) under ``protocol``.

    ``size`` is the label's ``(H, W)`` (default: the image's). One view (one scale, no flip) gives
    ``log_softmax`` of its resized logits, so the argmax and the loss equal plain inference's;
    several views average their softmax probabilities.
    """
    size = tuple(size or image.shape[-2:])  # type: ignore[assignment]
    h, w = image.shape[-2:]
    probs: Tensor | None = None
    for s in protocol.scales:
        scaled = image
        if s != 1.0:
            target = (max(1, round(h * s)), max(1, round(w * s)))
            scaled = F.interpolate(image, size=target, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if protocol.flip else (False,):
            logits = view_logits(net, scaled.flip(-1) if mirrored else scaled, protocol)
            logits = resize_to(logits.float(), size)  # type: ignore[arg-type]
            if mirrored:
                logits = logits.flip(-1)
            if protocol.views == 1:
                return F.log_softmax(logits, dim=1)
            p = logits.softmax(dim=1)
            probs = p if probs is None else probs + p
    assert probs is not None
    return (probs / protocol.views).clamp_min(torch.finfo(probs.dtype).tiny).log()
