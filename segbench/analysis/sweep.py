"""``segbench sweep``: an ablation = variants x seeds, then a report.

An ablation is declared beside its experiments, in ``experiments/<paper>/<set>/ablation.yaml``
(:class:`Ablation`), and run by name: ``segbench sweep --ablation gald --seeds 0 1 2`` (or
``make ablation-gald``); ``segbench sweep --list`` shows the ablations found. Without an
``ablation.yaml`` the same sweep is given by hand::

    segbench sweep --group parsenet-fusion --base experiments/parsenet/synthetic.yaml \\
        --variants experiments/parsenet/fcn.yaml experiments/parsenet/early.yaml \\
        --seeds 0 1 2 --out results/parsenet-fusion -- --trainer.max_epochs 20

Each run is ``segbench fit --config BASE... --config VARIANT --seed_everything SEED`` with
``run.group = GROUP``, ``run.name = <variant>-s<seed>``, tags ``[<variant>, GROUP]`` and
``run.test_after_fit``, in its own process (one failure does not stop the others). A sweep can be
stopped and started again: finished runs (test metrics present) are skipped and interrupted ones
resume from their last checkpoint. Arguments after ``--`` go to every ``fit``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segbench.analysis.report import report
from segbench.errors import ConfigError
from segbench.rundir import RunDir, RunState

log = logging.getLogger("segbench")

#: Where ablations are declared: ``experiments/<paper>/<set>/ablation.yaml``.
EXPERIMENTS = Path("experiments")


@dataclass
class Step:
    """A ``segbench`` tool run around the sweep: ``command`` with ``{placeholders}``.

    Placeholders: ``{dir}`` (the ablation's folder), ``{results}`` (``results/<group>``),
    ``{group}``; in ``after`` also ``{runs}`` (every run directory, as separate arguments); in
    ``after_each`` ``{run}`` and ``{name}`` (one run). ``only`` (a glob on the variant) limits
    ``after_each`` to some variants; ``when_env`` runs the step only if that variable is set.
    """

    command: list[str]
    only: str | None = None
    when_env: str | None = None


@dataclass
class Ablation:
    """One ``ablation.yaml``: what a sweep over a paper's variants runs and reports.

    Attributes:
        name: ``segbench sweep --ablation NAME`` / ``make ablation-NAME``.
        group: runs go to ``runs/<group>[-<scale>]/<variant>-s<seed>`` (the W&B group).
        description: one line for ``make help``.
        minutes_per_seed: CPU time of one seed on 2 idle cores, as measured (for planning).
        base: config files every variant starts from (relative to the folder).
        variants: glob of the variant files (relative to the folder).
        metrics: the report's columns.
        paper: the published numbers (relative to the folder), for the report.
        before: steps run once before the runs.
        after_each: steps run on each finished run, skipped when already recorded for its
            current best checkpoint.
        after: steps run once when every run is done, before the report.
        claims: the claims the ablation tests (read by the report; see the claims issue).
    """

    path: Path
    name: str
    group: str
    description: str = ""
    minutes_per_seed: float | None = None
    base: list[str] = field(default_factory=lambda: ["base.yaml"])
    variants: str = "variants/*.yaml"
    metrics: list[str] = field(default_factory=list)
    paper: str | None = None
    before: list[Step] = field(default_factory=list)
    after_each: list[Step] = field(default_factory=list)
    after: list[Step] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @classmethod
    def load(cls, path: Path) -> Ablation:
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping")
        known = set(cls.__dataclass_fields__) - {"path"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        for key in ("name", "group"):
            if key not in data:
                raise ConfigError(f"{path}: '{key}' is required")
        for key in ("before", "after_each", "after"):
            steps = []
            for step in data.get(key) or []:
                step = {"command": step} if isinstance(step, list) else step
                steps.append(Step(**step))
            data[key] = steps
        return cls(path=path, **data)

    def configs(self, scale: str) -> tuple[list[str], list[str]]:
        """The base files (with ``_scale_<scale>.yaml`` unless ``cpu``) and the variant files."""
        base = [str(self.folder / b) for b in self.base]
        if scale != "cpu":
            extra = self.folder / f"_scale_{scale}.yaml"
            if not extra.is_file():
                have = sorted(p.stem.removeprefix("_scale_") for p in self.folder.glob("_scale_*"))
                raise ConfigError(f"{self.path}: no scale '{scale}' (has: cpu, {', '.join(have)})")
            base.append(str(extra))
        variants = sorted(str(p) for p in self.folder.glob(self.variants))
        if not variants:
            raise ConfigError(f"{self.path}: no variant files match {self.variants}")
        return base, variants


def find_ablations(root: Path = EXPERIMENTS) -> dict[str, Ablation]:
    """Every ``<root>/<paper>/<set>/ablation.yaml``, by name."""
    found: dict[str, Ablation] = {}
    for path in sorted(root.glob("*/*/ablation.yaml")):
        ablation = Ablation.load(path)
        if ablation.name in found:
            raise ConfigError(
                f"ablation name '{ablation.name}' in {found[ablation.name].path} and {path}"
            )
        found[ablation.name] = ablation
    return found


def find_ablation(name: str, root: Path = EXPERIMENTS) -> Ablation:
    """By path, by name, or by paper folder when that paper has one ablation."""
    if name.endswith(".yaml"):
        return Ablation.load(Path(name))
    found = find_ablations(root)
    if name in found:
        return found[name]
    by_paper = [a for a in found.values() if a.folder.parent.name == name]
    if len(by_paper) == 1:
        return by_paper[0]
    raise ConfigError(f"no ablation '{name}' under {root}; found: {', '.join(found) or 'none'}")


def write_results(path: Path, group: str, table: str) -> None:
    """Put ``table`` (the sweep's report) between the ``<!-- sweep:GROUP ... -->`` and
    ``<!-- /sweep:GROUP -->`` marks of a paper's ``RESULTS.md`` (a new section at its end if it
    has none); the rest of the file, the reading of the numbers, is left as written."""
    from segbench.rundir import atomic_write_text

    text = path.read_text() if path.is_file() else "# Results\n"
    begin = f"<!-- sweep:{group}"
    end = f"<!-- /sweep:{group} -->"
    if begin in text and end in text:
        i = text.index("\n", text.index(begin)) + 1
        j = text.index(end)
        text = text[:i] + table.strip() + "\n" + text[j:]
    else:
        text = (
            text.rstrip()
            + f"\n\n## {group}\n\n{begin} (written by segbench sweep) -->\n"
            + table.strip()
            + f"\n{end}\n"
        )
    atomic_write_text(path, text)


def _expand(step: Step, values: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for arg in step.command:
        if arg == "{runs}":
            out += [str(r) for r in values["runs"]]
        else:
            out.append(arg.format(**{k: v for k, v in values.items() if k != "runs"}))
    return out


def _tool(args: list[str]) -> int:
    log.info("segbench %s", " ".join(args))
    return subprocess.call([sys.executable, "-m", "segbench.cli", *args])


def _recorded_for_current_checkpoint(run: RunDir, tool: str) -> bool:
    record = (run.read().get("records") or {}).get(tool) or {}
    best = run.checkpoint("best")
    return (
        bool(record) and best.is_file() and record.get("checkpoint_mtime") == best.stat().st_mtime
    )


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
) -> list[str]:
    stem = Path(variant).stem
    cmd = [sys.executable, "-m", "segbench.cli", "fit"]
    for cfg in [*base, variant]:
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


def main(argv: list[str]) -> None:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(
        prog="segbench sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ablation", help="an ablation's name, its paper, or its ablation.yaml")
    parser.add_argument("--list", action="store_true", help="list the ablations and stop")
    parser.add_argument("--scale", default="cpu", help="cpu, or NAME for _scale_NAME.yaml")
    parser.add_argument("--group", help="the ablation's name (W&B group, directory)")
    parser.add_argument("--variants", nargs="+", help="one YAML file per variant")
    parser.add_argument(
        "--base", nargs="*", default=[], help="YAML files every variant starts from"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--root", default="runs", help="runs go to ROOT/GROUP/<variant>-s<seed>")
    parser.add_argument("--out", help="report prefix (default results/GROUP)")
    parser.add_argument("--metrics", nargs="+", help="report columns (see segbench report)")
    parser.add_argument("--paper", help="published numbers for the report (see segbench report)")
    parser.add_argument("--experiments", default=str(EXPERIMENTS), help="where ablations are")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)

    root = Path(args.experiments)
    if args.list:
        for name, a in find_ablations(root).items():
            minutes = f" (CPU ~{a.minutes_per_seed:.0f} min/seed)" if a.minutes_per_seed else ""
            sys.stdout.write(f"ablation-{name:<20} {a.description}{minutes}  [{a.folder}]\n")
        return
    ablation: Ablation | None = None
    if args.ablation:
        ablation = find_ablation(args.ablation, root)
        base, variants = ablation.configs(args.scale)
        suffix = "" if args.scale == "cpu" else f"-{args.scale}"
        group = (args.group or ablation.group) + suffix
        metrics = args.metrics or ablation.metrics or None
        paper = args.paper or (str(ablation.folder / ablation.paper) if ablation.paper else None)
    else:
        if not (args.group and args.variants):
            parser.error("give --ablation NAME, or --group and --variants")
        base, variants, group = args.base, args.variants, args.group
        metrics, paper = args.metrics, args.paper
    for path in [*base, *variants]:
        if not Path(path).is_file():
            parser.error(f"config not found: {path}")
    out = args.out or f"results/{group}"
    values: dict[str, Any] = {"group": group, "results": out}
    if ablation is not None:
        values["dir"] = str(ablation.folder)
    plan = [(v, s) for v in variants for s in args.seeds]
    run_dirs = [Path(args.root) / group / f"{Path(v).stem}-s{s}" for v, s in plan]
    failures: list[str] = []
    start = time.perf_counter()
    for step in ablation.before if ablation else []:
        if step.when_env and not os.environ.get(step.when_env):
            continue
        if not args.dry_run and _tool(_expand(step, values)) != 0:
            failures.append(f"before: {step.command[0]}")
    for i, (variant, seed) in enumerate(plan, 1):
        name = f"{Path(variant).stem}-s{seed}"
        run_dir = Path(args.root) / group / name
        state = run_state(run_dir)
        tag = f"[{i}/{len(plan)}] {group}/{name}"
        if state == "done":
            log.info("%s: done, skipped", tag)
            continue
        cmd = fit_command(
            base=base,
            variant=variant,
            seed=seed,
            group=group,
            root=args.root,
            extra=extra,
            resume=state == "partial",
        )
        if args.dry_run:
            log.info("%s: %s", tag, " ".join(cmd))
            continue
        log.info("%s: %s", tag, "resuming" if state == "partial" else "starting")
        t0 = time.perf_counter()
        code = subprocess.call(cmd)
        took = time.perf_counter() - t0
        if code != 0:
            failures.append(name)
            log.error("%s: failed (exit %d) after %.0f s; see above", tag, code, took)
        else:
            log.info(
                "%s: finished in %.0f s (sweep: %.0f s so far)",
                tag,
                took,
                time.perf_counter() - start,
            )
    if args.dry_run:
        return
    log.info("sweep %s: %d runs in %.0f s", group, len(plan), time.perf_counter() - start)
    done = [d for d in run_dirs if run_state(d) == "done"]
    for step in ablation.after_each if ablation else []:
        tool = step.command[0]
        for run_dir in done:
            variant = run_dir.name.rsplit("-s", 1)[0]
            if step.only and not fnmatch.fnmatch(variant, step.only):
                continue
            if _recorded_for_current_checkpoint(RunDir(run_dir), tool):
                log.info("%s of %s: recorded for its checkpoint, skipped", tool, run_dir.name)
                continue
            if _tool(_expand(step, {**values, "run": run_dir, "name": run_dir.name})) != 0:
                failures.append(f"{tool} {run_dir.name}")
    if done:
        for step in ablation.after if ablation else []:
            if _tool(_expand(step, {**values, "runs": done})) != 0:
                failures.append(f"after: {step.command[0]}")
    text = report(
        [str(d) for d in run_dirs if RunDir(d).metrics_file.is_file()],
        metrics=metrics,
        out=out,
        paper=paper,
        title=group,
    )
    sys.stdout.write(text)
    log.info("report: %s.md / .csv / .png", out)
    if ablation is not None and args.scale == "cpu" and not args.out:
        results = ablation.folder.parent / "RESULTS.md"
        write_results(results, group, text)
        log.info("report table: %s", results)
    if failures:
        log.error("failed: %s", ", ".join(failures))
        sys.exit(1)
