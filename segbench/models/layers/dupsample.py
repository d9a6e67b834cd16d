"""DUpsample: data-dependent upsampling (Tian, He, Shen, Yan, CVPR 2019, arXiv 1903.02120, 3.1).

A network predicts ``x`` (k channels) at stride ``r``; :class:`DUpsample` turns it into
per-pixel class scores at full resolution: a 1x1 convolution by the label basis ``W`` (plus the
mean patch ``mu``) followed by a depth-to-space rearrangement of each ``N = K r^2``-vector into an
``r x r`` block of ``K``-vectors. ``W`` and ``mu`` are fitted to the training labels by
:mod:`segbench.models.layers.label_basis` (pure functions: patch layout, void handling, PCA and
SGD fits).

:meth:`DUpsample.fit_from_datamodule` runs the fit on a data module's training labels (the hook of
:meth:`segbench.models.base.SegmentationModel.setup_from_data`) through the data module's small
label API (``label_maps``, ``label_fingerprint``), cached on disk and shared across DDP processes by
:func:`segbench.cache.rank_zero_cached`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.cache import cache_root, rank_zero_cached
from segbench.errors import ConfigError
from segbench.models.layers.label_basis import (
    Basis,
    BasisFit,
    PatchSet,
    VoidHandling,
    collect_patches,
    fit_pca,
    fit_sgd,
)

log = logging.getLogger(__name__)

#: Bumped whenever a change to the fitting code changes the fitted basis (invalidates caches).
CACHE_VERSION = 1


@runtime_checkable
class LabelSource(Protocol):
    """What the fit needs of a data module (:class:`segbench.data.base.SegmentationDataModule`)."""

    num_classes: int
    ignore_index: int

    def label_maps(self, split: Literal["train"] = "train") -> Any: ...

    def label_fingerprint(self, split: Literal["train"] = "train") -> str: ...


# -- layout ---------------------------------------------------------------------------------------
def depth_to_space(x: Tensor, factor: int) -> Tensor:
    """``N x (C r^2) x h x w`` -> ``N x C x (h r) x (w r)``; input channel ``c r^2 + i r + j``
    goes to output channel ``c`` at ``(y r + i, x r + j)``. Correct for any ``h != w``."""
    return F.pixel_shuffle(x, factor)


# -- the layer ------------------------------------------------------------------------------------
class DUpsample(nn.Module):
    """``k``-channel maps at stride ``r`` -> ``K``-channel scores at full resolution through W.

    Before :meth:`fit_from_datamodule` (or loading a checkpoint) W is a random orthonormal
    basis and the layer is usable but meaningless; ``fitted`` records whether it was fitted.

    Args:
        in_channels: k, the compressed dimension (channels of the input map).
        num_classes: K.
        factor: r, the upsampling factor (the network's output stride).
        trainable: ``False``: W and mu are fixed buffers after fitting (the paper); ``True``:
            they are parameters trained jointly with the network, starting from the fit (the
            unofficial code).
        fit: ``"pca"`` (the paper's closed form) or ``"sgd"`` (reconstruction loss by SGD).
        void: how void pixels enter the fit (see the module docstring).
        sgd_steps: steps of the ``"sgd"`` fit.
        cache_dir: where fitted bases are cached (``None``: ``$SEGBENCH_CACHE`` or
            ``~/.cache/segbench``), under ``dupsample/``.
    """

    weight: Tensor  # N x k, a buffer or (trainable) a parameter
    bias: Tensor  # N
    fitted: Tensor  # a bool buffer

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        factor: int,
        *,
        trainable: bool = False,
        fit: BasisFit = "pca",
        void: VoidHandling = "zero",
        sgd_steps: int = 2000,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        n = num_classes * factor * factor
        if not 0 < in_channels <= n:
            raise ConfigError(f"compressed dimension {in_channels} must be in [1, K r^2 = {n}]")
        self.in_channels, self.num_classes, self.factor = in_channels, num_classes, factor
        self.trainable, self.fit, self.void = trainable, fit, void
        self.sgd_steps, self.cache_dir = sgd_steps, cache_dir
        weight = nn.init.orthogonal_(torch.empty(n, in_channels))
        bias = torch.zeros(n)
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)
        self.register_buffer("fitted", torch.tensor(False))
        #: How the basis was obtained in this process: "fitted", "cache", "broadcast" or None.
        self.basis_source: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        z = F.conv2d(x, self.weight[:, :, None, None], self.bias)
        return depth_to_space(z, self.factor)

    def set_basis(self, weight: Tensor, bias: Tensor) -> None:
        """Copy a fitted ``N x k`` W and ``N`` mu in and mark the layer fitted."""
        with torch.no_grad():
            self.weight.copy_(weight)
            self.bias.copy_(bias)
            self.fitted.fill_(True)

    def cache_path(self, fingerprint: str, datamodule: LabelSource) -> Path:
        fit = self.fit if self.fit == "pca" else f"sgd{self.sgd_steps}"
        name = (
            f"{type(datamodule).__name__}-{fingerprint}-r{self.factor}-K{self.num_classes}"
            f"-k{self.in_channels}-{fit}-{self.void}-v{CACHE_VERSION}.pt"
        )
        return cache_root(self.cache_dir) / "dupsample" / name

    def fit_basis(self, patches: PatchSet) -> Basis:
        """Fit W to ``patches`` with this layer's method."""
        if self.fit == "pca":
            return fit_pca(patches, self.in_channels)
        return fit_sgd(patches, self.in_channels, steps=self.sgd_steps)

    def fit_from_datamodule(self, datamodule: LabelSource) -> None:
        """Fit W on the training labels of ``datamodule`` (or load it from the cache).

        Under ``torch.distributed`` only rank 0 reads the data, fits and writes the cache; the
        result (or rank 0's error) is broadcast, so every process ends with the same W. A layer
        that is already fitted (e.g. initialised from a checkpoint) is left alone.
        """
        if bool(self.fitted):
            self.basis_source = "checkpoint"
            return

        def path() -> Path:
            if datamodule.num_classes != self.num_classes:
                raise ConfigError(
                    f"DUpsample built for {self.num_classes} classes, the data have "
                    f"{datamodule.num_classes}"
                )
            return self.cache_path(datamodule.label_fingerprint("train"), datamodule)

        def fit() -> dict[str, Tensor]:
            t0 = time.perf_counter()
            patches = collect_patches(
                datamodule.label_maps("train"),
                self.factor,
                self.num_classes,
                datamodule.ignore_index,
                self.void,
            )
            basis = self.fit_basis(patches)
            log.info(
                "DUpsample: %s basis (r=%d, K=%d, k=%d) fitted on %d distinct patches in %.1f s",
                self.fit,
                self.factor,
                self.num_classes,
                self.in_channels,
                len(patches.rows),
                time.perf_counter() - t0,
            )
            return {"weight": basis.weight, "bias": basis.mean}

        state, source = rank_zero_cached(path, fit, what="DUpsample basis")
        self.set_basis(state["weight"], state["bias"])
        self.basis_source = source

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels} -> {self.num_classes} x {self.factor}x{self.factor}, "
            f"trainable={self.trainable}, fit={self.fit}"
        )
