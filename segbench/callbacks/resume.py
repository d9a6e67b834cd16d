"""A resumed run continues as the uninterrupted one: :class:`ExactResume` (the random generators,
the loader's position, the epoch's running sums) and :class:`ResumeWithChanges` (a resume whose
optimiser settings or schedule were changed on purpose).
"""

from __future__ import annotations

import copy
import logging
import random
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.optim.lr_scheduler import ReduceLROnPlateau

from segbench.rundir import RunDir

log = logging.getLogger("segbench")


class ExactResume(Callback):
    """What Lightning does not restore by itself: every random generator of every process, and
    the training loader's position when the run uses the loop's ``estimated_stepping_batches``.

    * The generators (torch, CUDA, NumPy, Python) of each process go into every checkpoint and
      are restored at the start of training (after the sanity check and the loaders' set-up,
      which draw nothing from the global generators: the loaders have their own), so the step
      after a resume draws what the uninterrupted run drew there (dropout, OHEM ties).
    * The loader's position (:class:`segbench.data.base.ResumableLoader`): Lightning hands a
      stateful loader its state when it sets the loader up, but the task's schedule asks for
      ``trainer.estimated_stepping_batches`` in ``configure_optimizers``, which sets the loader
      up before the loop state is restored, so that hand-over never happens. It is done here,
      and the loader's iterator is made anew from the restored position.
    * The epoch's running sums of the values logged with ``on_epoch=True`` (``train/loss_epoch``
      and its terms), which Lightning keeps outside its checkpoints: a checkpoint written
      mid-epoch holds each process's sums, and the resumed run adds them to its own after its
      first step, so the interrupted epoch's mean is the uninterrupted run's, to the bit.
    """

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None
        self._sums: dict[str, Any] | None = None
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def _epoch_sums(self) -> dict[str, Any] | None:
        """This process's running sums of the epoch-level training values, mid-epoch only."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return None
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop.batch_progress.current.ready >= trainer.num_training_batches:
            return None  # the epoch's end: the resumed run starts a new epoch
        sums = {}
        for key, metric in epoch_loop._results.items():
            if metric.is_tensor and metric.meta.on_epoch and not metric.has_reset:
                mean = metric.meta.is_mean_reduction
                sums[key] = {
                    "value": metric.value.detach().cpu().clone(),
                    "count": metric.cumulated_batch_size.detach().cpu().clone() if mean else None,
                }
        return {"epoch": trainer.current_epoch, "metrics": sums}

    def _add_sums(self, trainer: L.Trainer) -> None:
        """After the resumed run's first step: add the checkpoint's sums to the fresh ones
        (``saved + this step`` is the uninterrupted run's ``sum + this step``, to the bit)."""
        pending, self._sums = self._sums, None
        if not pending or pending["epoch"] != trainer.current_epoch:
            return
        results = trainer.fit_loop.epoch_loop._results
        for key, saved in pending["metrics"].items():
            metric = results.get(key)
            if metric is None:
                continue
            value = saved["value"].to(metric.value.device, metric.value.dtype)
            meta = metric.meta
            if meta.is_max_reduction or meta.is_min_reduction:
                metric.value = meta.reduce_fx(value, metric.value)
            else:
                metric.value = value + metric.value
            if saved["count"] is not None:
                count = saved["count"].to(metric.cumulated_batch_size.device)
                metric.cumulated_batch_size = count + metric.cumulated_batch_size

    @staticmethod
    def _capture() -> dict[str, Any]:
        state = np.random.get_state(legacy=True)
        assert isinstance(state, tuple)  # the legacy form: (kind, keys, pos, has_gauss, cached)
        kind, keys, pos, has_gauss, cached = state
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate(),
        }

    @staticmethod
    def _apply(state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))

    def state_dict(self) -> dict[str, Any]:
        own = {**self._capture(), "epoch_sums": self._epoch_sums()}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, own)
            return {"ranks": states}
        return {"ranks": [own]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks") or []
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self._to_restore = ranks[rank] if rank < len(ranks) else None
        if ranks and self._to_restore is None:
            log.warning(
                "the checkpoint holds the random state of %d processes, this run has more: "
                "process %d continues with a fresh one (the resume is not bit-exact)",
                len(ranks),
                rank,
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fit_loop = trainer.fit_loop
        if fit_loop.restarting and fit_loop._combined_loader_states_to_load:
            fit_loop._load_combined_loader_states()
            assert fit_loop._data_fetcher is not None  # set up before on_train_start
            iter(fit_loop._data_fetcher)  # the iterator, from the restored position
        if self._to_restore is not None:
            self._sums = self._to_restore.get("epoch_sums")
            self._apply(self._to_restore)
            self._to_restore = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._sums is not None:
            self._add_sums(trainer)


class ResumeWithChanges(Callback):
    """A resume with ``run.resume_with_changes``: the new config's optimiser settings and
    learning-rate schedule replace the checkpoint's from its step on, and the changes are
    recorded in this attempt's ``provenance``.

    Lightning makes the optimiser and the schedule from the (new) config before ``on_fit_start``
    and loads the checkpoint's state over them after it. Their fresh state is kept here at
    ``on_fit_start``; at ``on_train_start``, after the load, every parameter group takes its
    fresh settings back and the fresh schedule is stepped as often as the checkpoint's had been,
    so each learning rate from here on is the one the new config gives at that step, as if it
    had held from the start. The optimiser's per-parameter state (momentum buffers) stays the
    checkpoint's.

    Args:
        run: the run directory.
        changes: config key -> ``[recorded value, new value]``.
    """

    def __init__(self, run: RunDir, changes: dict[str, list[Any]]) -> None:
        self.run, self.changes = run, changes
        self._groups: list[list[dict[str, Any]]] = []
        self._schedules: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._groups = [
            copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in o.param_groups])
            for o in trainer.optimizers
        ]
        self._schedules = [
            copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs
        ]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        before = [g["lr"] for o in trainer.optimizers for g in o.param_groups]
        for optimizer, groups in zip(trainer.optimizers, self._groups, strict=True):
            for group, fresh in zip(optimizer.param_groups, groups, strict=True):
                group.update(copy.deepcopy(fresh))
        for config, fresh in zip(trainer.lr_scheduler_configs, self._schedules, strict=True):
            scheduler = config.scheduler
            # segbench's schedules step by optimiser step; a metric-driven one cannot be replayed
            assert not isinstance(scheduler, ReduceLROnPlateau), "cannot replay ReduceLROnPlateau"
            steps = scheduler.last_epoch - fresh["last_epoch"]
            scheduler.load_state_dict(copy.deepcopy(fresh))
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(steps):
                    scheduler.step()
        after = [g["lr"] for o in trainer.optimizers for g in o.param_groups]
        log.info(
            "learning rate at step %d: %s (the checkpoint's: %s)",
            trainer.global_step,
            ", ".join(f"{lr:.6g}" for lr in after),
            ", ".join(f"{lr:.6g}" for lr in before),
        )
        if trainer.is_global_zero:
            record = {"changes": self.changes, "changed_at_step": trainer.global_step}

            def note(data: dict[str, Any]) -> None:
                attempts = data.setdefault("provenance", {}).setdefault("attempts", [{}])
                attempts[-1].update(record)

            self.run.update(note)
