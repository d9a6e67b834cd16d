"""What a sweep still has to run: one ``segbench fit`` command per variant x seed, finished runs
skipped, interrupted ones resumed from ``last.ckpt``; and the after-steps' commands."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segbench.cli.lightning import FINISHED_MAY_DIFFER, parse_fit
from segbench.config import config_changes
from segbench.errors import ConfigError
from segbench.rundir import RunDir, RunState
from segbench.study.ablation import Step
from segbench.study.launchers.base import PlannedRun

log = logging.getLogger("segbench")


def run_state(run_dir: Path) -> RunState:
    """``"done"`` (tested), ``"partial"`` (a last checkpoint to resume) or ``"new"``."""
    return RunDir(run_dir).state()


def fit_command(
    *,
    base: list[str],
    variant: str,
    seed: int,
    group: str,
    root: str,
    extra: list[str],
    resume: bool,
    after: Sequence[str] = (),
) -> list[str]:
    stem = Path(variant).stem
    cmd = [sys.executable, "-m", "segbench.cli", "fit"]
    for cfg in [*base, variant, *after]:
        cmd += ["--config", cfg]
    cmd += [
        "--seed_everything",
        str(seed),
        "--run.group",
        group,
        "--run.name",
        f"{stem}-s{seed}",
        "--run.root",
        root,
        "--run.tags",
        json.dumps([stem, group]),
        "--run.test_after_fit",
        "true",
    ]
    cmd += ["--ckpt_path", "last"] if resume else ["--run.overwrite", "true"]
    return cmd + extra


def plan_runs(
    *,
    base: list[str],
    variants: list[str],
    seeds: list[int],
    group: str,
    root: str,
    extra: list[str],
    queued: dict[str, str] | None = None,
    after: dict[str, list[str]] | None = None,
    finished: list[tuple[Path, list[str]]] | None = None,
) -> list[PlannedRun]:
    """The fits still to run, in grid order: finished runs skipped, interrupted ones resumed
    from ``last.ckpt``, and runs a ``--no_wait`` sweep left queued on SLURM not submitted twice.
    ``after``: config files composed after a variant's file (its tuned setting), by variant.
    ``finished`` receives each skipped finished run with the fit command that would have made it
    (:func:`check_finished` checks it was)."""
    grid = [(v, s) for v in variants for s in seeds]
    planned = []
    for i, (variant, seed) in enumerate(grid, 1):
        name = f"{Path(variant).stem}-s{seed}"
        run_dir = Path(root) / group / name
        tag = f"[{i}/{len(grid)}] {group}/{name}"
        state = run_state(run_dir)
        cmd = fit_command(
            base=base,
            variant=variant,
            seed=seed,
            group=group,
            root=root,
            extra=extra,
            resume=state == "partial",
            after=(after or {}).get(variant, []),
        )
        if state == "done":
            log.info("%s: done, skipped", tag)
            if finished is not None:
                finished.append((run_dir, cmd))
            continue
        if queued and name in queued:
            log.info("%s: still queued (%s), skipped", tag, queued[name])
            continue
        planned.append(PlannedRun(name, run_dir, cmd, state == "partial", i, len(grid), group))
    return planned


#: The options of :func:`fit_command` whose values differ between the seeds of a variant (the
#: rest of the command, and so the config, is the same).
_PER_RUN = ("--seed_everything", "--run.name", "--run.tags")


def recipe_mismatches(finished: list[tuple[Path, list[str]]], label: str = "recipe") -> list[str]:
    """Each finished run whose recorded config (``metrics.json``) differs from what its recipe's
    fit command would train in more than :data:`~segbench.cli.lightning.FINISHED_MAY_DIFFER`
    (where it was written and logged, the machine, the data's location): ``"RUN: key A (run)
    vs B (label); ..."``. Such a run (a smoke sweep's, with fit arguments after ``--``, or a
    recipe changed since) is not the recipe's, though it has a recipe run's name. The commands
    are parsed, not built: once a variant (0.4 s), its seeds differing in the seed alone."""
    problems = []
    parsed: dict[tuple[str, ...], dict[str, Any]] = {}
    for run_dir, cmd in finished:
        recorded = RunDir(run_dir).section("config")
        if not recorded:  # made before runs recorded their config
            continue
        args = cmd[cmd.index("fit") + 1 :]
        seed = int(args[args.index("--seed_everything") + 1])
        key = tuple(a for i, a in enumerate(args) if i == 0 or args[i - 1] not in _PER_RUN)
        if key not in parsed:
            parsed[key] = parse_fit(args)
        changes = config_changes(
            recorded, {**parsed[key], "seed_everything": seed}, FINISHED_MAY_DIFFER
        )
        if changes:
            said = "; ".join(
                f"{k} {old!r} (run) vs {new!r} ({label})" for k, (old, new) in changes.items()
            )
            problems.append(f"{run_dir}: {said}")
    return problems


def check_finished(finished: list[tuple[Path, list[str]]]) -> None:
    """Each finished run a sweep skips was trained as the sweep's own fit command would train it
    (:func:`recipe_mismatches`); otherwise a run of the same name trained with other settings
    would be reported as this sweep's. Raises a :class:`ConfigError` naming every such run."""
    problems = recipe_mismatches(finished, "sweep")
    if problems:
        raise ConfigError(
            f"{len(problems)} finished run(s) of this sweep's names were trained with other "
            "settings than the sweep's fit command, so the sweep would skip them and report "
            "them as its own: " + " | ".join(problems) + ". Nothing was launched. Remove them "
            "(or move them aside) to train them again with these settings, or give the sweep "
            "another --root."
        )


def expand_step(step: Step, values: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for arg in step.command:
        if arg == "{runs}":
            out += [str(r) for r in values["runs"]]
        else:
            out.append(arg.format(**{k: v for k, v in values.items() if k != "runs"}))
    return out


def recorded_for_current_checkpoint(run: RunDir, tool: str, options: list[str]) -> bool:
    """Whether ``run`` holds ``tool``'s record of its current best checkpoint, measured with
    ``options`` (:func:`~segbench.options.record_options`; a record made before records kept
    their options counts as made with them)."""
    record = (run.read().get("records") or {}).get(tool) or {}
    best = run.checkpoint("best")
    if not record or not best.is_file() or record.get("options") not in (None, options):
        return False
    if record.get("checkpoint_step") is None:  # a record made before steps were kept
        return bool(record.get("checkpoint_mtime") == best.stat().st_mtime)
    return Path(record["checkpoint"]).name == best.name and run.changed_since(record) is None
