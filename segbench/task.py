"""SegmentationTask: the one LightningModule every architecture and data set plugs into.

One batch through the task: ``{"image": N x 3 x H x W, "mask": N x H x W}`` -> ``net(image)``
-> ``{"out": logits, "aux": logits?}`` -> loss (cross-entropy or OHEM on ``out``, plus
``aux_weight`` x cross-entropy on ``aux``, plus the net's ``extra_losses``) -> optimiser step and
per-iteration learning-rate schedule. Validation and test predict each image under their stage's
evaluation protocol (:class:`segbench.inference.EvalProtocol`: whole image, sliding window,
multi-scale + flip), resized to the label's size, and accumulate one confusion matrix each
(:class:`segbench.metrics.SegmentationMetrics`), boundary IoU's band counts
(:class:`segbench.metrics.BoundaryIoU`), the calibration bins
(:class:`segbench.metrics.CalibrationError`) and the mean loss over valid pixels: torchmetrics
states, summed exactly across DDP processes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    PolynomialLR,
    SequentialLR,
    StepLR,
)
from torchmetrics import MeanMetric

from segbench.errors import CheckpointError, ConfigError, DivergenceError, MissingFileError
from segbench.inference import WHOLE_IMAGE, EvalProtocol, predict_log_probs
from segbench.losses import SegmentationLoss
from segbench.metrics import BoundaryIoU, CalibrationError, SegmentationMetrics
from segbench.models.base import SegmentationModel
from segbench.numerics import to_channels_last
from segbench.rundir import safe_load

log = logging.getLogger(__name__)

#: The optimiser when none is configured (the CLI shows it in ``--print_config``).
DEFAULT_OPTIMIZER: dict[str, Any] = {
    "class_path": "torch.optim.SGD",
    "init_args": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
}

Stage = Literal["val", "test"]


#: ``torch.compile``'s modes (``model.compile``).
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
#: ``torch.compile``'s backends (``model.compile_backend``): Inductor generates kernels; the
#: other two stop before it, as torch's guide to a compile problem bisects it.
CompileBackend = Literal["inductor", "aot_eager", "eager"]


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, **DEFAULT_OPTIMIZER["init_args"])


class SegmentationTask(L.LightningModule):
    """Train, evaluate and predict any segbench architecture on any segbench data set.

    Args:
        net: the network (``class_path`` in YAML); its ``forward`` returns ``{"out": ...}``
            and optionally ``"aux"``, logits at the input size.
        num_classes: K; set by the data module (linked by the CLI).
        ignore_index: label of void pixels; set by the data module.
        class_names: names for the per-class metrics; set by the data module.
        class_weights: per-class weights of the cross-entropy: ``None`` (unweighted), a list,
            or ``"median_frequency"``: median frequency balancing computed from the training
            split when training starts (the data module's ``median_frequency_weights``).
            Validation and test losses are always unweighted.
        aux_weight: weight of the auxiliary head's cross-entropy (GALD, PSPNet: 0.4); unused
            by nets without ``"aux"``.
        ohem_thresh: ``None`` for plain cross-entropy on ``out``; a probability threshold to
            use online hard example mining (GALD: 0.7). The auxiliary loss stays plain.
        ohem_min_kept: OHEM keeps at least this many pixels per batch (GALD: 100000).
        optimizer: the optimiser (``class_path`` in YAML; default SGD, lr 0.01, momentum 0.9,
            weight decay 1e-4).
        bias_lr_factor: the biases' learning rate as a multiple of the optimiser's (Caffe's
            ``lr_mult``; FCN: 2). Biases are the parameters named ``*.bias``: convolutions' and
            normalisation layers' shifts.
        bias_weight_decay: the biases' weight decay (FCN's reference code: 0); ``None``: the
            optimiser's. With both at their defaults the optimiser has one parameter group.
        lr_schedule: ``"poly"``: ``lr * (1 - it / max_it) ** poly_power`` stepped every
            iteration (DeepLab, GALD, DUpsampling; fyu/drn's poly steps every epoch);
            ``"step"``: ``lr * step_gamma ** (epoch // step_epochs)`` (fyu/drn's default, x0.1
            every ``--step`` epochs; applied at the iteration where the epoch begins);
            ``"cosine"``: ``lr * (1 + cos(pi * it / max_it)) / 2`` every iteration;
            ``"constant"``: fixed (FCN). All follow the warm-up, if any.
        poly_power: exponent of the poly schedule.
        step_epochs: epochs between the decays of the step schedule (fyu/drn README: 100).
        step_gamma: factor of each decay of the step schedule.
        warmup_iters: linear warm-up from ``warmup_factor * lr`` over this many iterations
            before the schedule (0: none).
        warmup_factor: starting fraction of the learning rate during warm-up.
        init_from: a checkpoint (``.ckpt`` of a segbench run, or a plain state dict) whose
            tensors initialise the net where names and shapes match, e.g. FCN-16s from FCN-32s
            (FCN's staged training), when a fit starts. Ignored when resuming with
            ``--ckpt_path``; ``validate``, ``test`` and ``predict`` take their weights from
            ``--ckpt_path`` alone.
        val_protocol: how validation images are predicted: ``mode`` whole or slide (with
            ``crop_size`` and ``stride``), ``scales`` and ``flip`` for test-time augmentation.
            Predictions are resized to the label's size before scoring. Default: the whole
            image, once.
        test_protocol: the same for the test and predict stages (e.g. multi-scale + flip for
            the final numbers while validation during training stays cheap).
        channels_last: keep the network's weights and its inputs in channels-last memory
            format (NHWC), which the CPU's and GPUs' fastest convolution kernels prefer; the
            numbers are the same up to floating-point rounding.
        boundary_ratio: the width of boundary IoU's band (``val/bIoU``, ``test/bIoU``) as a
            fraction of the image's diagonal (Cheng et al. 2021 use 2%).
        compile: compile the network with ``torch.compile`` when a ``fit`` / ``validate`` /
            ``test`` / ``predict`` starts (``true``: mode ``default``; or the mode by name).
            The network is compiled in place (``nn.Module.compile``), so its state-dict keys,
            checkpoints, exact resume, export and ``segbench.load`` are those of the eager
            network (no ``_orig_mod.`` prefix). The first steps of each input size pay the
            compilation; whether it pays on a machine: ``segbench benchmark --what compile``.
        compile_backend: ``torch.compile``'s backend when ``compile`` is on: ``inductor`` (the
            one that makes it faster; the mode applies to it only), or, to find which stage of a
            compile problem fails, ``aot_eager`` (graph capture and autograd tracing, no
            kernels) and ``eager`` (graph capture only). Neither of the two is faster than
            the network uncompiled.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        num_classes: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        class_weights: Sequence[float] | Literal["median_frequency"] | None = None,
        aux_weight: float = 0.4,
        ohem_thresh: float | None = None,
        ohem_min_kept: int = 100_000,
        optimizer: OptimizerCallable | None = None,
        bias_lr_factor: float = 1.0,
        bias_weight_decay: float | None = None,
        lr_schedule: Literal["poly", "step", "cosine", "constant"] = "poly",
        poly_power: float = 0.9,
        step_epochs: int = 100,
        step_gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_factor: float = 0.1,
        init_from: str | None = None,
        val_protocol: EvalProtocol = WHOLE_IMAGE,
        test_protocol: EvalProtocol = WHOLE_IMAGE,
        channels_last: bool = False,
        boundary_ratio: float = 0.02,
        compile: bool | CompileMode = False,
        compile_backend: CompileBackend = "inductor",
    ) -> None:
        super().__init__()
        _check_values(
            num_classes=num_classes,
            class_weights=class_weights,
            aux_weight=aux_weight,
            ohem_thresh=ohem_thresh,
            ohem_min_kept=ohem_min_kept,
            bias_lr_factor=bias_lr_factor,
            bias_weight_decay=bias_weight_decay,
            poly_power=poly_power,
            step_epochs=step_epochs,
            step_gamma=step_gamma,
            warmup_iters=warmup_iters,
            warmup_factor=warmup_factor,
        )
        self.save_hyperparameters(ignore=["net", "optimizer", "val_protocol", "test_protocol"])
        self.hparams.update(
            val_protocol=val_protocol.to_dict(), test_protocol=test_protocol.to_dict()
        )
        self.net = net
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = (
            list(class_names) if class_names else [str(i) for i in range(num_classes)]
        )
        self.class_weights_mode = class_weights if isinstance(class_weights, str) else None
        fixed_weights = None if isinstance(class_weights, str) else class_weights
        self.criterion = SegmentationLoss(
            ignore_index=ignore_index,
            class_weights=fixed_weights,
            ohem_thresh=ohem_thresh,
            ohem_min_kept=ohem_min_kept,
        )
        self.aux_criterion = SegmentationLoss(
            ignore_index=ignore_index, class_weights=fixed_weights
        )
        self.aux_weight = aux_weight
        self.optimizer_factory = optimizer or _default_optimizer
        self.bias_lr_factor, self.bias_weight_decay = bias_lr_factor, bias_weight_decay
        self.lr_schedule, self.poly_power = lr_schedule, poly_power
        self.step_epochs, self.step_gamma = step_epochs, step_gamma
        self.warmup_iters, self.warmup_factor = warmup_iters, warmup_factor
        self.init_from = init_from
        self.resuming = False  # set by segbench fit --ckpt_path: init_from is not read
        self.compile_mode: CompileMode | None = (
            ("default" if compile is True else compile) if compile else None
        )
        self.compile_backend = compile_backend
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            to_channels_last(self.net)
        self.protocols: dict[Stage, EvalProtocol] = {"val": val_protocol, "test": test_protocol}
        # ModuleDicts, so that Lightning moves them with the model; typed per stage for readers.
        self.metrics = cast(
            dict[Stage, SegmentationMetrics],
            nn.ModuleDict(
                {
                    s: SegmentationMetrics(num_classes, ignore_index, self.class_names)
                    for s in ("val", "test")
                }
            ),
        )
        self.boundary = cast(
            dict[Stage, BoundaryIoU],
            nn.ModuleDict(
                {
                    s: BoundaryIoU(num_classes, ignore_index, self.class_names, boundary_ratio)
                    for s in ("val", "test")
                }
            ),
        )
        self.calibration = cast(
            dict[Stage, CalibrationError],
            nn.ModuleDict({s: CalibrationError(15, ignore_index) for s in ("val", "test")}),
        )
        self.losses = cast(
            dict[Stage, MeanMetric], nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})
        )

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.compile_mode and getattr(self.net, "_compiled_call_impl", None) is None:
            # In place: the state-dict keys stay. Only Inductor takes a mode.
            inductor = self.compile_backend == "inductor"
            mode = {"mode": self.compile_mode} if inductor else {}
            self.net.compile(backend=self.compile_backend, **mode)
            log.info(
                "model.compile: the network is compiled (%s)",
                f"mode {self.compile_mode}" if inductor else f"backend {self.compile_backend}",
            )
        if stage != "fit":
            return
        # A resume takes every weight from its checkpoint: the file it started from is not
        # read, and may since have been moved, deleted or trained again.
        if self.init_from and not self.resuming:
            self.load_matching(self.init_from)
        # Lightning sets trainer.datamodule for each stage without declaring it on Trainer.
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.class_weights_mode == "median_frequency" and datamodule is not None:
            weights = torch.tensor(datamodule.median_frequency_weights())
            log.info(
                "median-frequency class weights: %s",
                dict(zip(self.class_names, [round(w, 3) for w in weights.tolist()], strict=True)),
            )
            self.criterion.weight = weights
            self.aux_criterion.weight = weights
        if isinstance(self.net, SegmentationModel) and datamodule is not None:
            self.net.setup_from_data(datamodule)

    def load_matching(self, path: str) -> None:
        """Copy the tensors of ``path`` whose names and shapes match the net's."""
        if not Path(path).is_file():
            raise MissingFileError(f"model.init_from: no checkpoint at {path}")
        try:
            state = safe_load(path)
        except CheckpointError as err:
            raise CheckpointError(f"model.init_from: {err}") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"model.init_from: {path} holds no state dict")
        state = state.get("state_dict", state)
        state = {k.removeprefix("net."): v for k, v in state.items()}
        own = self.net.state_dict()
        taken = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not taken:
            raise CheckpointError(
                f"model.init_from: no tensor of {path} fits {type(self.net).__name__}"
            )
        self.net.load_state_dict(taken, strict=False)
        left = sorted(set(own) - set(taken))
        log.info(
            "initialised %d/%d tensors from %s; kept initial values for %s",
            len(taken),
            len(own),
            path,
            left or "none",
        )

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``; a checkpoint of another network is a clear error."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as err:
            if "Error(s) in loading state_dict" not in str(err):
                raise
            details = " ".join(str(err).split())[:400]
            trainer = self._trainer  # attached while Lightning restores --ckpt_path
            path = getattr(trainer, "ckpt_path", None) if trainer is not None else None
            raise CheckpointError(
                f"{'the checkpoint' if path is None else path} does not fit this "
                f"{type(self.net).__name__} (was it trained with another architecture or "
                f"width?): {details}"
            ) from None

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimiser over the trainable parameters: one parameter group, or the
        weights' and the biases' where ``bias_lr_factor`` / ``bias_weight_decay`` set them
        apart."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        try:
            if self.bias_lr_factor == 1.0 and self.bias_weight_decay is None:
                return self.optimizer_factory([p for _, p in named])
            weights = [p for n, p in named if not n.endswith(".bias")]
            biases = [p for n, p in named if n.endswith(".bias")]
            optimizer = self.optimizer_factory([{"params": weights}, {"params": biases}])
        except ValueError as err:  # torch's own check of lr, momentum, betas, ...
            raise ConfigError(f"model.optimizer: {err}") from None
        group = optimizer.param_groups[1]
        group["lr"] *= self.bias_lr_factor
        if self.bias_weight_decay is not None:
            group["weight_decay"] = self.bias_weight_decay
        return optimizer

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = self.make_optimizer()
        total = max(1, int(self.trainer.estimated_stepping_batches))
        after_warmup = max(1, total - self.warmup_iters)
        main: LRScheduler
        if self.lr_schedule == "poly":
            main = PolynomialLR(optimizer, total_iters=after_warmup, power=self.poly_power)
        elif self.lr_schedule == "cosine":
            main = CosineAnnealingLR(optimizer, T_max=after_warmup)
        elif self.lr_schedule == "step":
            main = StepLR(optimizer, step_size=self.step_epochs * self._steps_per_epoch(),
                          gamma=self.step_gamma)  # fmt: skip
        else:
            main = ConstantLR(optimizer, factor=1.0, total_iters=0)
        scheduler: LRScheduler = main
        if self.warmup_iters > 0:
            warm = LinearLR(
                optimizer, start_factor=self.warmup_factor, total_iters=self.warmup_iters
            )
            scheduler = SequentialLR(optimizer, [warm, main], milestones=[self.warmup_iters])
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def _steps_per_epoch(self) -> int:
        """Optimiser steps per training epoch (after gradient accumulation)."""
        trainer = self.trainer
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise ConfigError("model.lr_schedule step needs a training loader of known length")
        return max(1, math.ceil(int(batches) / trainer.accumulate_grad_batches))

    # -- steps ----------------------------------------------------------------------------------
    def forward(self, image: Tensor) -> dict[str, Tensor]:
        return self.net(image.contiguous(memory_format=self.memory_format))

    def compute_loss(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """All loss terms; ``"loss"`` is their weighted sum."""
        target = batch["mask"]
        terms = {"ce": self.criterion(outputs["out"], target)}
        loss = terms["ce"]
        if "aux" in outputs and self.aux_weight > 0:
            terms["aux"] = self.aux_criterion(outputs["aux"], target)
            loss = loss + self.aux_weight * terms["aux"]
        if isinstance(self.net, SegmentationModel):
            for name, value in self.net.extra_losses(outputs, batch).items():
                terms[name] = value
                loss = loss + value
        terms["loss"] = loss
        return terms

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        terms = self.compute_loss(self(batch["image"]), batch)
        n = batch["image"].shape[0]
        loss = terms.pop("loss")
        self._check_finite(loss, terms, batch_idx)
        # Under DDP each value is reduced over the processes (a no-op in one process): a step's
        # value is the mean of every process's batch, an epoch's the mean over every sample.
        # Each process keeps its own running sums (those ExactResume saves); the reduction is
        # of copies.
        for name, value in {"loss": loss, **terms}.items():
            self.log(
                f"train/{name}",
                value,
                prog_bar=name == "loss",
                on_step=True,
                on_epoch=True,
                batch_size=n,
                sync_dist=True,
            )
        self.log(
            "train/lr",
            self.trainer.optimizers[0].param_groups[0]["lr"],
            on_step=True,
            on_epoch=False,
            batch_size=n,
        )
        return loss

    def _check_finite(self, loss: Tensor, terms: dict[str, Tensor], batch_idx: int) -> None:
        """Stop at once on a non-finite loss, before it reaches the weights (all processes)."""
        finite = bool(torch.isfinite(loss.detach()).all())
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        values = ", ".join(f"{k} = {float(v.detach()):.4g}" for k, v in terms.items())
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        raise DivergenceError(
            f"training diverged at step {self.trainer.global_step} (epoch "
            f"{self.current_epoch}, batch {batch_idx}): loss = {float(loss.detach()):.4g} "
            f"({values}) at learning rate {lr:.4g}. Nothing of this step was applied or saved: the "
            "checkpoints hold the last finite state. Lower the learning rate "
            "(model.optimizer.init_args.lr), add warm-up (model.warmup_iters) or clip gradients "
            "(trainer.gradient_clip_val)."
        )

    def predict_log_probs(
        self, image: Tensor, stage: Stage, size: tuple[int, int] | None = None
    ) -> Tensor:
        """Log-probabilities ``N x K x size`` of ``image`` under the stage's protocol."""
        image = image.contiguous(memory_format=self.memory_format)
        return predict_log_probs(self.net, image, self.protocols[stage], size)

    def _eval_step(self, stage: Stage, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        target = batch["mask"]
        log_probs = self.predict_log_probs(
            batch["image"], stage, (target.shape[-2], target.shape[-1])
        )
        valid = (target != self.ignore_index).sum()
        loss_sum = F.nll_loss(log_probs, target, ignore_index=self.ignore_index, reduction="sum")
        # Weighted by the number of valid pixels: the epoch value is the mean over every valid
        # pixel of the split, also when processes see different numbers of pixels.
        self.losses[stage].update(loss_sum / valid.clamp(min=1), weight=valid)
        pred = log_probs.argmax(1)
        self.metrics[stage].update(pred, target)
        self.boundary[stage].update(pred, target)
        self.calibration[stage].update(log_probs.exp(), target)
        return {"pred": pred}

    def _log_stage(self, stage: Stage) -> dict[str, Tensor]:
        results = {f"{stage}/{k}": v for k, v in self.metrics[stage].compute().items()}
        results.update({f"{stage}/{k}": v for k, v in self.boundary[stage].compute().items()})
        results[f"{stage}/ECE"] = self.calibration[stage].compute()
        results[f"{stage}/loss"] = self.losses[stage].compute()
        for metric in (self.metrics, self.boundary, self.calibration, self.losses):
            metric[stage].reset()
        # Values are already reduced over processes by torchmetrics: no sync_dist here.
        miou = f"{stage}/mIoU"
        self.log(miou, results[miou], prog_bar=True)
        self.log_dict({k: v for k, v in results.items() if k != miou})
        return results

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_stage("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

    def predict_tiles(self, tile: int | None, above_pixels: float, probs: bool) -> None:
        """``segbench predict --tile``: images over ``above_pixels`` are predicted in tiles of
        ``tile`` pixels a side (see :meth:`predict_tiled`); ``probs``: keep their
        probabilities (float16)."""
        if tile is not None and tile < 16:
            raise ConfigError(f"--tile {tile}: a tile needs at least 16 pixels a side")
        self._tile, self._tile_above, self._tile_probs = tile, above_pixels, probs

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Label maps (``N x H x W``) and log-probabilities under the test protocol, with the
        file names. Images read by ``segbench predict --images`` are predicted at their own
        size (``original``) whatever size the data module scales them to; images over
        ``--max_megapixels`` with ``--tile``, in tiles (``probs`` instead of ``log_probs``)."""
        if batch.get("image") is None:  # no image of the batch could be read
            return {"pred": None, "log_probs": None, "name": []}
        original = batch.get("original")
        image = batch["image"]
        height, width = (original if original is not None else image).shape[-2:]
        size = (int(height), int(width))
        tile = getattr(self, "_tile", None)
        if tile and size[0] * size[1] > self._tile_above:
            pred, probs = self.predict_tiled(image, size, tile)
            return {"pred": pred, "probs": probs, "name": batch.get("name")}
        log_probs = self.predict_log_probs(image, "test", size)
        return {"pred": log_probs.argmax(1), "log_probs": log_probs, "name": batch.get("name")}

    def predict_tiled(
        self, image: Tensor, size: tuple[int, int], tile: int
    ) -> tuple[Tensor, Tensor | None]:
        """Labels ``N x size`` (uint8 up to 256 classes) of a large image, tile by tile.

        The output is cut into ``tile x tile`` tiles; each is predicted under the test protocol
        from the image region it covers widened by ``tile // 4`` pixels on every side (the
        network's context across the tile's border), and only the tile's own pixels are kept.
        Memory holds the image, the labels and one widened tile's activations, whatever the
        image's size. With ``save_probs`` also the probabilities, float16 ``N x K x size``.
        """
        height, width = size
        n, margin = image.shape[0], tile // 4
        ry, rx = image.shape[-2] / height, image.shape[-1] / width  # data-module scale
        dtype = torch.uint8 if self.num_classes <= 256 else torch.int64
        pred = torch.empty((n, height, width), dtype=dtype)
        keep = getattr(self, "_tile_probs", False)
        probs = (
            torch.empty((n, self.num_classes, height, width), dtype=torch.float16) if keep else None
        )
        starts = [(y, x) for y in range(0, height, tile) for x in range(0, width, tile)]
        shown = -1
        for i, (y0, x0) in enumerate(starts):
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            top, left = max(0, y0 - margin), max(0, x0 - margin)
            bottom, right = min(height, y1 + margin), min(width, x1 + margin)
            crop = image[
                ..., round(top * ry) : round(bottom * ry), round(left * rx) : round(right * rx)
            ]
            log_probs = self.predict_log_probs(crop, "test", (bottom - top, right - left))
            inner = log_probs[..., y0 - top : y1 - top, x0 - left : x1 - left]
            pred[..., y0:y1, x0:x1] = inner.argmax(1).cpu().to(dtype)
            if probs is not None:
                probs[..., y0:y1, x0:x1] = inner.exp().cpu().to(torch.float16)
            done = 10 * (i + 1) // len(starts)
            if done != shown:
                shown = done
                log.info("tiles: %d of %d (%d%%)", i + 1, len(starts), 100 * (i + 1) // len(starts))
        return pred, probs


def _check_values(
    *,
    num_classes: int,
    class_weights: Sequence[float] | str | None,
    aux_weight: float,
    ohem_thresh: float | None,
    ohem_min_kept: int,
    bias_lr_factor: float,
    bias_weight_decay: float | None,
    poly_power: float,
    step_epochs: int,
    step_gamma: float,
    warmup_iters: int,
    warmup_factor: float,
) -> None:
    """Reject values that cannot train, naming the config key."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes} (set by the data)")
    if class_weights is not None and not isinstance(class_weights, str):
        if len(class_weights) != num_classes:
            raise ConfigError(
                f"model.class_weights has {len(class_weights)} values for the data's "
                f"{num_classes} classes: give one weight per class, in label order"
            )
        if any(w < 0 for w in class_weights):
            raise ConfigError(f"model.class_weights must be non-negative, got {class_weights}")
    checks = [
        ("model.aux_weight", aux_weight, aux_weight >= 0, "must be 0 or more"),
        (
            "model.ohem_thresh",
            ohem_thresh,
            ohem_thresh is None or 0 < ohem_thresh <= 1,
            "is a probability in (0, 1] (or null for plain cross-entropy)",
        ),
        ("model.ohem_min_kept", ohem_min_kept, ohem_min_kept >= 0, "must be 0 or more"),
        ("model.bias_lr_factor", bias_lr_factor, bias_lr_factor >= 0, "must be 0 or more"),
        (
            "model.bias_weight_decay",
            bias_weight_decay,
            bias_weight_decay is None or bias_weight_decay >= 0,
            "must be 0 or more (or null for the optimiser's)",
        ),
        ("model.poly_power", poly_power, poly_power > 0, "must be positive"),
        ("model.step_epochs", step_epochs, step_epochs >= 1, "must be at least 1"),
        ("model.step_gamma", step_gamma, 0 < step_gamma <= 1, "is a factor in (0, 1]"),
        ("model.warmup_iters", warmup_iters, warmup_iters >= 0, "must be 0 or more"),
        ("model.warmup_factor", warmup_factor, 0 < warmup_factor <= 1, "is a fraction in (0, 1]"),
    ]
    for key, value, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{key} {rule}, got {value}")
