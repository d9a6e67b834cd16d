"""``segbench sweep``: an ablation = variants x seeds, then a report.

::

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
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from segbench.analysis.report import report
from segbench.rundir import RunDir, RunState

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
    parser.add_argument("--group", required=True, help="the ablation's name (W&B group, directory)")
    parser.add_argument("--variants", nargs="+", required=True, help="one YAML file per variant")
    parser.add_argument(
        "--base", nargs="*", default=[], help="YAML files every variant starts from"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--root", default="runs", help="runs go to ROOT/GROUP/<variant>-s<seed>")
    parser.add_argument("--out", help="report prefix (default results/GROUP)")
    parser.add_argument("--metrics", nargs="+", help="report columns (see segbench report)")
    parser.add_argument("--paper", help="published numbers for the report (see segbench report)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)

    for path in [*args.base, *args.variants]:
        if not Path(path).is_file():
            parser.error(f"config not found: {path}")
    plan = [(v, s) for v in args.variants for s in args.seeds]
    failures: list[str] = []
    start = time.perf_counter()
    for i, (variant, seed) in enumerate(plan, 1):
        name = f"{Path(variant).stem}-s{seed}"
        run_dir = Path(args.root) / args.group / name
        state = run_state(run_dir)
        tag = f"[{i}/{len(plan)}] {args.group}/{name}"
        if state == "done":
            log.info("%s: done, skipped", tag)
            continue
        cmd = fit_command(
            base=args.base,
            variant=variant,
            seed=seed,
            group=args.group,
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
    log.info("sweep %s: %d runs in %.0f s", args.group, len(plan), time.perf_counter() - start)
    out = args.out or f"results/{args.group}"
    run_dirs = [Path(args.root) / args.group / f"{Path(v).stem}-s{s}" for v, s in plan]
    text = report(
        [str(d) for d in run_dirs if RunDir(d).metrics_file.is_file()],
        metrics=args.metrics,
        out=out,
        paper=args.paper,
        title=args.group,
    )
    sys.stdout.write(text)
    log.info("report: %s.md / .csv / .png", out)
    if failures:
        log.error("failed runs: %s", ", ".join(failures))
        sys.exit(1)
