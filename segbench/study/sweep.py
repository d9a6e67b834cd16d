"""``segbench sweep``: an ablation = variants x seeds, then a report.

An ablation is declared beside its experiments, in ``experiments/<paper>/<set>/ablation.yaml``
(:class:`Ablation`), and run by name: ``segbench sweep --ablation gald --seeds 0 1 2`` (or
``make ablation-gald``); ``segbench sweep --list`` shows the ablations found. Without an
``ablation.yaml`` the same sweep is given by hand::

    segbench sweep --group parsenet-fusion --base experiments/parsenet/synthetic/base.yaml \\
        --variants experiments/parsenet/synthetic/variants/fcn32s.yaml \\
        experiments/parsenet/synthetic/variants/parsenet_early.yaml \\
        --seeds 0 1 2 --out results/parsenet-fusion -- --trainer.max_epochs 20

Each run is ``segbench fit --config BASE... --config VARIANT --seed_everything SEED`` with
``run.group = GROUP``, ``run.name = <variant>-s<seed>``, tags ``[<variant>, GROUP]`` and
``run.test_after_fit``, in its own process (one failure does not stop the others). A sweep can be
stopped and started again: finished runs (test metrics present) are skipped and interrupted ones
resume from their last checkpoint; a finished run is skipped only if its recorded config is what
its fit command would train (else the sweep stops before launching anything, naming the run and
keys). Arguments after ``--`` go to every ``fit``; the runs are then not the recipe's, and their
report goes beside them (``ROOT/GROUP.md``, ``.json``, ...) instead of ``results/GROUP``, and not
into the paper's ``RESULTS.md``. Before any run is launched, the first
run's config is built once with them (a key ``fit`` refuses stops the sweep there, named) and its
data's classes check the ablation's per-class metrics; runs that fail all the same end the sweep
with how many failed and their exit codes.

The runs can go at once (:mod:`segbench.study.launchers`): ``--jobs N`` runs N here, each with
its own GPUs (``--devices_per_job D``) or its share of the CPU cores, logging to
``ROOT/GROUP/logs/<run>.log``; ``--launcher slurm`` submits them to SLURM through submitit (a job
array; ``--slurm_partition``, ``--slurm_time``, ``--slurm_gpus_per_node``, ``--slurm_nodes`` for
multi-node DDP, ...), and waits for them, or returns at once with ``--no_wait`` (the same command
later writes the report). ``--dry-run`` prints what any launcher would run::

    segbench sweep --ablation drn --seeds 0 1 2 --jobs 2 --devices_per_job 1
    segbench sweep --ablation drn --seeds 0 1 2 --launcher slurm --slurm_partition gpu \\
        --slurm_gpus_per_node 1 --slurm_time 240

A tuned sweep (``--tune``, for an ablation with a ``tune:`` block, :class:`TuneSpec`) first tunes
each variant on the validation split (``segbench tune``: one study per variant in
``ROOT/GROUP-tune-<variant>``, its trials at the tuning seed), then trains the claim seeds of
each variant at its own best setting (its ``best.yaml`` composed after the variant's file) into
``ROOT/GROUP-tuned``, tests each once, and judges the claims; the report says which setting each
variant got, and puts the claims as judged at the recipe's shared setting beside::

    segbench sweep --ablation degridding --variants step0_drn_a step3_drn_c --tune --seeds 0 1 2
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from segbench.cli.lightning import build
from segbench.options import command_parser, record_options
from segbench.rundir import RunDir, WriterLock
from segbench.study import tune
from segbench.study.ablation import (
    EXPERIMENTS,
    Ablation,
    TuneSpec,
    find_ablation,
    find_ablations,
)
from segbench.study.launchers import add_launcher_options, make_launcher
from segbench.study.launchers.slurm import still_queued
from segbench.study.plan import (
    check_finished,
    expand_step,
    fit_command,
    plan_runs,
    recorded_for_current_checkpoint,
    run_state,
)
from segbench.study.publish import publish_results, read_results
from segbench.study.render import render_report
from segbench.study.report import build_report

log = logging.getLogger("segbench")


def _tool(args: list[str]) -> int:
    log.info("segbench %s", " ".join(args))
    return subprocess.call([sys.executable, "-m", "segbench.cli", *args])


def main(argv: list[str]) -> None:
    """``segbench sweep``; the group's claim (see :func:`_main`) is let go when it returns."""
    claims: list[WriterLock] = []
    try:
        _main(argv, claims)
    finally:
        for claim in claims:
            claim.release()


#: The fit arguments the sweep gives each run (:func:`~segbench.study.plan.fit_command`): given
#: again after ``--`` they would send the run elsewhere than where the sweep looks for it.
SWEEP_SETS = ("--run.root", "--run.group", "--run.name", "--seed_everything", "--ckpt_path")


def _main(argv: list[str], claims: list[WriterLock]) -> None:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = command_parser(
        "segbench sweep",
        __doc__ or "",
        # Short: an error prints it above its one line (the full one would list every option
        # over 19 lines); --help gives them all.
        usage="%(prog)s (--ablation NAME | --group G --variants V.yaml ...) [--seeds S ...] "
        "[--scale NAME] [--jobs N] [options] [-- FIT ARGUMENTS]   (--help: every option)",
    )
    parser.add_argument(
        "--ablation", help="an ablation's name, its paper, or its ablation.yaml", type=str
    )
    parser.add_argument("--list", action="store_true", help="list the ablations and stop")
    parser.add_argument(
        "--scale", default="cpu", help="cpu, or NAME for _scale_NAME.yaml", type=str
    )
    parser.add_argument("--group", help="the ablation's name (W&B group, directory)", type=str)
    parser.add_argument(
        "--variants",
        nargs="+",
        help="one YAML file per variant; with --ablation, the names of the variants to run "
        "(default: all; the report shows every variant that has finished runs)",
        type=str,
    )
    parser.add_argument(
        "--base", nargs="*", default=[], help="YAML files every variant starts from", type=str
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--root", default="runs", help="runs go to ROOT/GROUP/<variant>-s<seed>", type=str
    )
    parser.add_argument(
        "--out",
        help="report prefix (default results/GROUP; ROOT/GROUP, beside the runs, when given fit "
        "arguments after --: those runs are not the recipe's)",
        type=str,
    )
    parser.add_argument(
        "--metrics", nargs="+", help="report columns (see segbench report)", type=str
    )
    parser.add_argument(
        "--paper", help="published numbers for the report (see segbench report)", type=str
    )
    parser.add_argument(
        "--experiments", default=str(EXPERIMENTS), help="where ablations are", type=str
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands (and sbatch file) only"
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="tune each variant on val first (the ablation's tune: block), then train the "
        "seeds at each variant's best setting into ROOT/GROUP-tuned",
    )
    add_launcher_options(parser)
    args = parser.parse_args(argv)
    owned = [a for a in extra if a.split("=", 1)[0] in SWEEP_SETS]
    if owned:
        parser.error(
            f"{' '.join(owned)} after --: the sweep sets each run's {', '.join(SWEEP_SETS)} "
            "itself (runs go to ROOT/GROUP/VARIANT-sSEED: give --root, --group, --seeds)"
        )
    seeds = list(dict.fromkeys(args.seeds))  # a seed given twice is one run, not two
    if seeds != args.seeds:
        log.warning("--seeds %s: each seed once: %s", args.seeds, seeds)
        args.seeds = seeds

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
        reported = variants
        if args.variants:
            known = {Path(v).stem: v for v in variants}
            unknown = [v for v in args.variants if v not in known]
            if unknown:
                parser.error(
                    f"--variants {' '.join(unknown)}: not in {ablation.path} "
                    f"(its variants: {', '.join(known)})"
                )
            variants = [known[v] for v in args.variants]
        suffix = "" if args.scale == "cpu" else f"-{args.scale}"
        group = (args.group or ablation.group) + suffix
        metrics = args.metrics or ablation.metrics or None
        paper = args.paper or (str(ablation.folder / ablation.paper) if ablation.paper else None)
    else:
        if not (args.group and args.variants):
            parser.error("give --ablation NAME, or --group and --variants")
        base, variants, group = args.base, args.variants, args.group
        reported = variants
        metrics, paper = args.metrics, args.paper
    for path in [*base, *variants]:
        if not Path(path).is_file():
            parser.error(f"config not found: {path}")
    shared_group = group  # the group of the same ablation at the recipe's shared setting
    if args.tune:
        if ablation is None or ablation.tune is None:
            parser.error(
                "--tune: give an ablation with a tune: block (space, trials, seed; "
                + (f"{ablation.path} has none)" if ablation else "--ablation NAME)")
            )
        group += "-tuned"
    launcher = make_launcher(args, group)
    # One sweep of a group at a time (held until this command ends; a dead holder's is taken
    # over): a second would start the same fits again beside the first's.
    if not args.dry_run:
        lock = WriterLock(Path(args.root) / f".{group}.sweep", f"sweep {Path(args.root) / group}")
        claims.append(lock.acquire())
    # Fit arguments after -- (FIT_ARGS) make runs other than the recipe's: their report goes
    # beside them (ROOT/GROUP.md), never over the recipe's in results/ (nor into RESULTS.md).
    out = args.out or (str(Path(args.root) / group) if extra else f"results/{group}")
    values: dict[str, Any] = {"group": group, "results": out}
    if ablation is not None:
        values["dir"] = str(ablation.folder)

    def names_of(files: list[str]) -> list[str]:
        return [f"{Path(v).stem}-s{s}" for v in files for s in args.seeds]

    names = names_of(variants)
    run_dirs = [Path(args.root) / group / name for name in names]
    # Every variant's finished runs are reported, also those another command ran.
    report_dirs = [Path(args.root) / group / name for name in names_of(reported)]
    queued: dict[str, str] = {}
    if args.launcher == "slurm" and not args.dry_run:
        queued = still_queued(Path(args.root) / group / "submitit", names)
    if any(run_state(d) != "done" for d in run_dirs):
        check_fit_args(ablation, base, variants[0], args.seeds[0], launcher.fit_args, extra)
    failures: list[str] = []
    failed_runs: list[str] = []
    start = time.perf_counter()
    for step in ablation.before if ablation else []:
        if step.when_env and not os.environ.get(step.when_env):
            continue
        if not args.dry_run and _tool(expand_step(step, values)) != 0:
            failures.append(f"before: {step.command[0]}")
    tuned: dict[str, dict[str, Any]] = {}
    if args.tune and ablation is not None and ablation.tune is not None:
        tuned, failed = tune_variants(
            ablation, ablation.tune, base, variants, args, extra, shared_group
        )
        failures += failed
        variants = [v for v in variants if Path(v).stem in tuned]
    finished: list[tuple[Path, list[str]]] = []
    planned = plan_runs(
        base=base,
        variants=variants,
        seeds=args.seeds,
        group=group,
        root=args.root,
        extra=[*launcher.fit_args, *extra],
        queued=queued,
        after={v: [tuned[Path(v).stem]["config"]] for v in variants} if args.tune else None,
        finished=finished,
    )
    check_finished(finished)
    if args.dry_run:
        for line in launcher.describe(planned):
            log.info("%s", line)
        return
    if planned:
        failed_runs = launcher.launch(planned)
    if args.no_wait and planned:
        return
    if queued:
        log.info(
            "sweep %s: %d runs still queued on SLURM (%s); run the same command again once "
            "they have finished for the after-steps and the report",
            group,
            len(queued),
            ", ".join(queued),
        )
        return
    log.info(
        "sweep %s: %d runs (%d launched) in %.0f s",
        group,
        len(names),
        len(planned),
        time.perf_counter() - start,
    )
    done = [d for d in run_dirs if run_state(d) == "done"]
    for step in ablation.after_each if ablation else []:
        tool = step.command[0]
        for run_dir in done:
            variant = run_dir.name.rsplit("-s", 1)[0]
            if step.only and not fnmatch.fnmatch(variant, step.only):
                continue
            command = expand_step(step, {**values, "run": run_dir, "name": run_dir.name})
            options = record_options(command[1:], [str(run_dir)])
            if recorded_for_current_checkpoint(RunDir(run_dir), tool, options):
                log.info("%s of %s: recorded for its checkpoint, skipped", tool, run_dir.name)
                continue
            if _tool(command) != 0:
                failures.append(f"{tool} {run_dir.name}")
    if done:
        for step in ablation.after if ablation else []:
            if _tool(expand_step(step, {**values, "runs": done})) != 0:
                failures.append(f"after: {step.command[0]}")
    reported = [str(d) for d in report_dirs if RunDir(d).metrics_file.is_file()]
    if failed_runs:
        failures.append(f"{len(failed_runs)} of {len(planned)} runs: {', '.join(failed_runs)}")
    if not reported and failures:  # nothing to report: what failed is the last word
        _fail(failures)
    tested = ablation.claims if ablation is not None else []
    tuning = tuned_data(ablation, tuned, shared_group, extra, args.root)
    data = build_report(reported, metrics=metrics, out=out, paper=paper, title=group,
                        claims=tested, tuned=tuning, fit_args=extra)  # fmt: skip
    sys.stdout.write(render_report(data, tested))
    log.info("report: %s.md / .json / .csv / .png / _curves.png", out)
    if not args.out and extra:
        log.info(
            "the runs were given extra fit arguments (%s): their report is beside them, not in "
            "results/%s%s, where the recipe's goes",
            " ".join(extra),
            group,
            f" nor in {ablation.folder.parent / 'RESULTS.md'}" if ablation is not None else "",
        )
    elif ablation is not None and not args.out:  # every scale: its group names it (-long, ...)
        results = ablation.folder.parent / "RESULTS.md"
        if publish_results(results, group, data, tested):
            log.info("report table: %s (its data: %s)", results, results.with_suffix(".json"))
    if failures:
        _fail(failures)


def _fail(failures: list[str]) -> NoReturn:
    log.error("failed: %s", "; ".join(failures))
    sys.exit(1)


def check_fit_args(
    ablation: Ablation | None,
    base: list[str],
    variant: str,
    seed: int,
    launcher_args: list[str],
    extra: list[str],
) -> None:
    """The first run's fit arguments, checked once before any run is launched: arguments fit
    refuses (a misspelt key after ``--``) would fail every run, each printing fit's usage. The
    data's classes then check the ablation's per-class metrics (:meth:`Ablation.check_names`)."""
    cmd = fit_command(base=base, variant=variant, seed=seed, group="check", root="runs",
                      extra=[*launcher_args, *extra], resume=False)  # fmt: skip
    said = f" ({' '.join(extra)} after --)" if extra else ""
    log.info("checking the config of %s-s%d before launching anything", Path(variant).stem, seed)
    _, datamodule, _ = build(
        cmd[cmd.index("fit") + 1 :],
        f"segbench fit refuses the arguments of {Path(variant).stem}-s{seed}{said}, so every "
        "run would fail; nothing was launched",
    )
    if ablation is not None:
        ablation.check_names(list(getattr(datamodule, "class_names", ()) or ()) or None)


#: How to go on when a variant's study refuses the sweep's trials (:func:`tune.check_trains`).
TUNE_OTHERWISE = (
    "give the sweep the fit arguments after -- (and the tune: block's fit_args) its studies were "
    "made with, or another --group (new studies, new runs)"
)


def tune_variants(
    ablation: Ablation,
    spec: TuneSpec,
    base: list[str],
    variants: list[str],
    args: Any,
    extra: list[str],
    shared_group: str,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Tune each variant (``segbench tune`` into ``ROOT/GROUP-tune-<variant>``, continued where a
    study stopped) and return its best trial as data (:func:`segbench.study.tune.best_of`), by
    variant; with ``--dry-run`` only say what would run. A variant whose study has no complete
    trial is left out of the claim runs, named in the failures."""
    assert ablation.space is not None
    space = tune.SearchSpace.load(ablation.space)
    found: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    studies: dict[str, tuple[str, list[str]]] = {}
    for variant in variants:
        fit_args = [a for c in [*base, variant] for a in ("--config", c)]
        fit_args += ["--seed_everything", str(spec.seed), *spec.fit_args, *extra]
        studies[Path(variant).stem] = (f"{shared_group}-tune-{Path(variant).stem}", fit_args)
    # Every variant's study is checked before any tunes: one of them refused after others had
    # tuned for hours would leave the sweep half done.
    for study, fit_args in studies.values():
        tune.check_study(Path(args.root) / study, fit_args, space,
                         f"{TUNE_OTHERWISE}. Nothing was tuned or trained")  # fmt: skip
    for stem, (study, fit_args) in studies.items():
        if args.dry_run:
            log.info(
                "tune %s: %d trials of segbench fit %s %s into %s",
                stem,
                spec.trials,
                " ".join(fit_args),
                f"over {ablation.space}",
                Path(args.root) / study,
            )
            found[stem] = {"config": str(Path(args.root) / study / "best.yaml")}
            continue
        group_dir = tune.run_study(
            fit_args=fit_args,
            space=space,
            group=study,
            root=Path(args.root),
            trials=spec.trials,
            launcher=make_launcher(args, study),
            jobs=args.jobs,
            sampler="tpe",
            seed=spec.seed,
            pruner=spec.pruner,
            warmup=spec.warmup,
            threshold=None,
            otherwise=TUNE_OTHERWISE,
        )
        best = tune.best_of(group_dir)
        if best is None:
            failures.append(f"tune {stem}: no trial completed ({group_dir / 'tune.md'})")
            continue
        log.info("tune %s: trial %d, %s %.4f: %s", stem, best["trial"], best["metric"],
                 best["value"], best["params"])  # fmt: skip
        found[stem] = best
    return found, failures


def tuned_data(
    ablation: Ablation | None,
    tuned: dict[str, dict[str, Any]],
    shared_group: str,
    extra: Sequence[str] = (),
    root: str = "runs",
) -> dict[str, Any] | None:
    """What a tuned report says of its tuning: the space, trials and seed, each variant's best
    setting, and the claims as judged at the recipe's shared setting: from the paper's
    ``RESULTS.json``, where that sweep was published, or, for a sweep given fit arguments after
    ``--`` (``extra``), from the shared setting's sweep given the same ones
    (``ROOT/SHARED_GROUP.json``): the published verdicts are of other runs."""
    if not tuned or ablation is None or ablation.tune is None:
        return None
    source = Path(root) / f"{shared_group}.json"
    if extra:
        shared = json.loads(source.read_text()) if source.is_file() else {}
        if shared.get("fit_args") != list(extra):
            shared = {}
    else:
        shared = read_results(ablation.folder.parent / "RESULTS.json").get(shared_group) or {}
    return {
        "ablation": ablation.name,
        "space": str(ablation.space),
        "trials": ablation.tune.trials,
        "seed": ablation.tune.seed,
        "fit_args": list(ablation.tune.fit_args),
        "variants": tuned,
        "shared_group": shared_group,
        "shared_source": str(source) if extra else None,
        "shared_fit_args": list(extra),
        "shared_claims": shared.get("claims", []),
    }
