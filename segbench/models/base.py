"""The contract every segbench architecture follows.

A segmentation network is ``backbone -> (neck) -> head -> upsampler``. Whatever its parts, it is
an ``nn.Module`` whose ``forward(image)`` returns a dict:

* ``"out"``: raw logits ``N x K x H x W`` at the input size (never softmaxed);
* optionally ``"aux"``: auxiliary logits, also at the input size.

The keys never depend on ``self.training``, so code that reads them (the task, the analysis tools,
exported models) sees the same structure in training and evaluation.

Two hooks let an architecture ask the task for something without the task knowing the
architecture: :meth:`SegmentationModel.setup_from_data` (a data-driven initialisation before
training, e.g. DUpsampling's W) and :meth:`SegmentationModel.extra_losses` (loss terms beyond
the per-output cross-entropy).

Architectures are found, not listed: every concrete subclass of :class:`SegmentationModel` in a
module of ``segbench.models`` registers itself (:func:`architectures`), is exported as
``segbench.models.<Name>`` (its ``class_path`` in YAML) and is tested by the contract tests
(``tests/models/test_architectures.py``) with the small arguments it declares in
:attr:`SegmentationModel.test_kwargs`. Adding ``segbench/models/mynet.py`` needs no other edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    import lightning as L


class SegmentationModel(nn.Module):
    """Base class of segbench architectures.

    Subclasses set :attr:`output_stride` (the stride of the coarsest map the head classifies)
    and implement ``forward``.
    """

    output_stride: int = 1
    #: Constructor arguments (besides ``num_classes``) of a small instance that runs a step on a
    #: CPU in a fraction of a second, for the contract tests; ``{}`` if the defaults are small.
    test_kwargs: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, *, register: bool = True, **kwargs: Any) -> None:
        """Register the architecture; ``class X(Base, register=False)`` for a network that
        follows another contract (an ImageNet classifier built on a segmentation model)."""
        super().__init_subclass__(**kwargs)
        if register and not cls.__name__.startswith("_"):
            _REGISTRY[cls.__name__] = cls

    def setup_from_data(self, datamodule: L.LightningDataModule) -> None:
        """Called by the task once, before the first training step, on every process.

        The default does nothing. Override it for initialisations that need the training data.
        """

    def extra_losses(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Loss terms the task adds to the cross-entropy of ``out`` (and ``aux``).

        Returns a dict ``{name: scalar}``; each is logged as ``train/<name>`` and summed into the
        loss. The default returns no terms.
        """
        return {}


_REGISTRY: dict[str, type[SegmentationModel]] = {}


def architectures() -> dict[str, type[SegmentationModel]]:
    """Every architecture: the :class:`SegmentationModel` subclasses defined in the modules of
    ``segbench.models`` (each module is imported once), by class name, sorted."""
    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not module.ispkg and module.name != "base":
            importlib.import_module(f"{package}.{module.name}")
    return dict(sorted(_REGISTRY.items()))


def pad_to_multiple(x: Tensor, multiple: int, value: float = 0.0) -> tuple[Tensor, tuple[int, int]]:
    """Pad ``x`` (``N x C x H x W``) at the bottom and right to a multiple of ``multiple``.

    Returns the padded tensor and the original ``(H, W)`` so the caller can crop its output back.
    Padding with 0 after normalisation means padding with the data set's mean colour.

    While traced (``segbench export``) the pad is always in the graph, a function of the input's
    size: a Python branch would be fixed at the export size, and the exported model would skip
    the padding (and return smaller logits) at other sizes.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw or torch.jit.is_tracing():
        x = F.pad(x, (0, pw, 0, ph), value=value)
    return x, (h, w)


def resize_to(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear resize of logits to ``size`` (``align_corners=False``), a no-op at that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
