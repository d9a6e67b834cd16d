"""Numerics in one place: what ``trainer.precision: fast`` means on the machine that runs.

bf16 autocast is the fastest numerics of a processor that computes bf16 natively (a CPU with
AVX512-BF16 or AMX, a GPU with bf16 support), and a trap on one that does not: there oneDNN
emulates it, and the quickstart's training step ran at 2.1 images/s in bf16 vs 24.3 in float32
on an AVX2-only CPU (AMD EPYC, Zen 2; ``segbench benchmark --config experiments/quickstart.yaml``).
So the CPU recipes ask for ``fast`` and the machine decides: ``bf16-mixed`` where bf16 is native,
``32-true`` elsewhere. The value used is the run's ``trainer.precision`` in ``metrics.json``
(provenance) and is logged when the trainer is built. ``model.channels_last`` is independent of
it and pays on both kinds of CPU (float32 on that AVX2 CPU: 28.9 vs 22.9 images/s).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from lightning.pytorch import Trainer
from torch import Tensor, nn

from segbench.errors import ConfigError

log = logging.getLogger("segbench")

#: The precision value that resolves to the machine's fastest accurate numerics.
FAST = "fast"

#: ``fast`` and Lightning's precision values.
Precision = Literal["fast", "64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true",
                    "transformer-engine", "transformer-engine-float16",
                    64, 32, 16, "64", "32", "16", "bf16"]  # fmt: skip


def usable_device(name: str, option: str = "--device") -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:1``, ...) as a device this machine has, else a
    ConfigError naming ``option``."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{option} {name}: not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            + ("" if torch.cuda.is_available() else " (torch.cuda.is_available() is False)")
        )
    return device


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` (``"cpu"``, ``"cuda"``, ...) computes bf16 natively."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def device_of(accelerator: Any) -> str:
    """The device type a Lightning ``accelerator`` value trains on (``"auto"``: CUDA if any)."""
    name = str(accelerator if isinstance(accelerator, str) else "auto").lower()
    if name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu" if name in ("cpu", "auto") else name


def resolve_precision(precision: Any, accelerator: Any = "auto") -> Any:
    """``precision`` with ``"fast"`` replaced by ``"bf16-mixed"`` or ``"32-true"`` for the device
    that ``accelerator`` trains on; any other value unchanged."""
    if precision != FAST:
        return precision
    return "bf16-mixed" if native_bf16(device_of(accelerator)) else "32-true"


class SegbenchTrainer(Trainer):
    """Lightning's Trainer, whose ``precision`` also accepts ``"fast"`` (:func:`resolve_precision`).

    Args:
        precision: Lightning's precision (``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``, ...) or
            ``"fast"``: ``bf16-mixed`` where the training device computes bf16 natively (CPU with
            AVX512-BF16 or AMX, GPU with bf16), else ``32-true``.
        limit_train_batches: how much of the training set an epoch reads: an int is a number of
            batches, a float a fraction (``1`` is one batch, ``1.0`` all of them; Lightning's own
            signature, typed float first, would read ``1`` as ``1.0``). Default: all.
        limit_val_batches: the same for validation.
        limit_test_batches: the same for testing.
        limit_predict_batches: the same for prediction.
        kwargs: every other argument of Lightning's Trainer.
    """

    def __init__(
        self,
        *,
        precision: Precision | None = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        **kwargs: Any,
    ) -> None:
        resolved = resolve_precision(precision, kwargs.get("accelerator", "auto"))
        if precision == FAST:
            log.info("trainer.precision fast -> %s on this machine", resolved)
        super().__init__(
            precision=resolved,
            limit_train_batches=limit_train_batches,
            limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches,
            limit_predict_batches=limit_predict_batches,
            **kwargs,
        )


class _Subsample:
    """Forward pre-hook: the input sampled every ``stride`` pixels (:func:`to_channels_last`)."""

    def __init__(self, stride: tuple[int, int]) -> None:
        self.stride = stride

    def __call__(self, module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        sy, sx = self.stride
        return (args[0][:, :, ::sy, ::sx], *args[1:])


def to_channels_last(net: nn.Module) -> nn.Module:
    """``net`` with its weights in channels-last memory format.

    torch 2.14's CPU backward of a float32 1x1 convolution with stride > 1 and fewer than 16
    input channels (DRN's and ResNet's projection shortcuts at CPU width) corrupts memory in
    channels-last format (``tests/models/test_precision.py`` trains every architecture in it).
    Such a convolution is the same function as sampling its input every ``stride`` pixels and
    applying it with stride 1, which is what it becomes here (padding 0, so the output size is
    the same)."""
    net.to(memory_format=torch.channels_last)
    for m in net.modules():
        if (
            isinstance(m, nn.Conv2d)
            and m.kernel_size == (1, 1)
            and m.stride != (1, 1)
            and m.padding == (0, 0)
        ):
            m.register_forward_pre_hook(_Subsample(m.stride))  # type: ignore[arg-type]
            m.stride = (1, 1)
    return net
