"""segbench tune: the search space and its errors, a tiny study (pruning, results), a killed study
continued, and two processes sharing one study file."""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segbench.cli.lightning import parse_fit
from segbench.errors import ConfigError, MissingFileError
from segbench.study import tune
from tests.helpers import REPO, segbench_in_process, tiny_args, wait_at_step

optuna = pytest.importorskip("optuna")

SPACE = {
    "metric": "val/mIoU",
    "space": {
        "model.optimizer.init_args.lr": {"low": 0.01, "high": 0.1, "log": True},
        "model.optimizer.init_args.weight_decay": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
    },
}


def space_file(tmp: Path, data: object = None, name: str = "space.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(SPACE if data is None else data))
    return path


def fit_args(tmp: Path, epochs: int = 2) -> list[str]:
    """The tiny run's ``segbench fit`` arguments without its ``run.*`` keys (tune names runs)."""
    args = tiny_args(tmp, epochs=epochs)
    return [
        a
        for i, a in enumerate(args)
        if not (a.startswith("--run.") or (i and args[i - 1].startswith("--run.")))
    ] + ["--run.wandb", "disabled"]


def tune_command(tmp: Path, *options: str, epochs: int = 2, extra: tuple[str, ...] = ()):
    args = fit_args(tmp, epochs)
    return [
        sys.executable, "-m", "segbench.cli", "tune", "--config", args[1],
        "--space", str(space_file(tmp)), "--root", str(tmp / "runs"), *options,
        "--", *args[2:], *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({**SPACE, "metrik": "x"}, "unknown keys metrik"),
        ({**SPACE, "metric": "test/mIoU"}, "validation metrics only"),
        ({**SPACE, "mode": "median"}, "mode 'median'"),
        ({"space": {}}, "at least one config key"),
        ({"space": {"a.b": {"low": 1, "high": 1}}}, r"a\.b: an empty range"),
        ({"space": {"a.b": {"low": 0, "high": 1, "log": True}}}, r"a\.b: a log scale needs"),
        ({"space": {"a.b": {"choices": []}}}, r"a\.b: choices is a non-empty list"),
        ({"space": {"a.b": {"low": 1, "hi": 2}}}, r"a\.b: give low and high.*unknown: hi"),
        ({"space": {"a.b": {"low": 0.5, "high": 2, "type": "int"}}}, "whole low and high"),
        ({"space": {"a.b": 3}}, r"a\.b: give \{low, high\}"),
    ],
)
def test_space_errors_name_the_file_and_the_key(tmp_path, data, named):
    path = space_file(tmp_path, data)
    with pytest.raises(ConfigError, match=named) as err:
        tune.SearchSpace.load(path)
    assert str(path) in str(err.value)


def test_a_space_reads_each_kind_of_distribution(tmp_path):
    data = {
        "metric": "val/loss",
        "space": {
            "a.lr": {"low": 0.001, "high": 0.1, "log": True},
            "a.n": {"low": 8, "high": 32, "step": 8, "type": "int"},
            "a.c": {"choices": ["x", "y"]},
        },
    }
    space = tune.SearchSpace.load(space_file(tmp_path, data))
    assert space.direction == "minimize"  # a loss, unless told
    lr, n, c = (space.params[f"a.{k}"] for k in ("lr", "n", "c"))
    assert (lr.low, lr.high, lr.log) == (0.001, 0.1, True)
    assert (n.low, n.high, n.step) == (8, 32, 8)
    assert c.choices == ("x", "y")
    assert tune.nested({"a.b.c": 1, "a.d": 2}) == {"a": {"b": {"c": 1}, "d": 2}}
    assert tune.fit_overrides({"a.b": 0.5, "c": "x", "d": [1, 2]}) == [
        "--a.b", "0.5", "--c", "x", "--d", "[1, 2]",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("space", "named"),
    [
        ({"space": {"model.optimizer.init_args.lrr": {"low": 0.1, "high": 1}}}, "does not parse"),
        ({**SPACE, "metric": "val/IoU/unicorn"}, r"val/IoU/unicorn is not logged.*bird"),
    ],
)
def test_a_bad_key_or_metric_fails_before_any_trial(tmp_path, space, named):
    cmd = tune_command(tmp_path)
    args = cmd[cmd.index("tune") + 1 :]
    args[args.index("--space") + 1] = str(space_file(tmp_path, space, "bad.yaml"))
    with pytest.raises(ConfigError, match=named):
        tune.main(args)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "space", sorted((REPO / "experiments").rglob("*.tune.yaml")), ids=lambda p: p.name
)
def test_every_search_space_in_experiments_fits_its_base_config(space):
    """``X.tune.yaml`` searches ``X.yaml``: every key parses there, and the base's own values
    lie inside the space (trial 0 is the untuned recipe)."""
    loaded = tune.SearchSpace.load(space)
    base = space.with_name(space.name.replace(".tune.yaml", ".yaml"))
    values = tune.check_space(loaded, ["--config", str(base)])
    assert all(tune._inside(loaded.params[k], v) for k, v in values.items()), values


def test_a_missing_space_file_is_named(tmp_path):
    with pytest.raises(MissingFileError, match=r"nope\.yaml: no such file"):
        tune.main(["--config", "x.yaml", "--space", str(tmp_path / "nope.yaml")])


#: The pruner of the studies made without fits below.
PRUNER = {"name": "none", "warmup": 1, "threshold": None, "direction": "maximize"}
#: What the studies of the sampler tests record as their trials' training (no fit runs there).
TRAINS = {"trainer.max_epochs": 2}
#: The quickstart's own values of SPACE's keys: a study's base trial.
BASE = {"model.optimizer.init_args.lr": 0.05, "model.optimizer.init_args.weight_decay": 1.0e-4}


def proposals(study: object, space: tune.SearchSpace, n: int) -> list[tuple[float, ...]]:
    """The values of ``n`` trials asked of ``study`` (as ``tune`` asks) and told a made-up result
    of them: a quick stand-in for their fits."""
    asked = []
    for _ in range(n):
        trial = study.ask(space.params)  # type: ignore[attr-defined]
        values = tuple(trial.params[k] for k in sorted(space.params))
        study.tell(trial, -abs(math.log(values[0] / 0.03)))  # type: ignore[attr-defined]
        asked.append(values)
    return asked


def test_a_fresh_study_of_one_worker_proposes_what_its_seed_did_before(tmp_path):
    """The first worker of a fresh study seeds its sampler with --seed itself: a study of one
    process proposes the same values as before, past TPE's 10 random trials too."""
    space = tune.SearchSpace.load(space_file(tmp_path))
    study, slot = tune.join_study(
        tmp_path / "g", "g", space, sampler="tpe", seed=7, pruner=PRUNER, trains=TRAINS
    )
    proposed = proposals(study, space, 12)
    slot.release()
    before = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=7))
    assert proposals(before, space, 12) == proposed
    again, slot = tune.join_study(
        tmp_path / "h", "h", space, sampler="tpe", seed=7, pruner=PRUNER, trains=TRAINS
    )
    assert proposals(again, space, 12) == proposed
    slot.release()


def test_a_continued_study_proposes_new_values(tmp_path):
    """A study stopped after 4 trials and continued (the same command again, after an end or
    a kill -9): the new process's proposals are new. Seeded with --seed alone, its first was
    trial 0's values again."""
    space = tune.SearchSpace.load(space_file(tmp_path))
    first, slot = tune.join_study(
        tmp_path / "g", "g", space, sampler="tpe", seed=7, pruner=PRUNER, trains=TRAINS
    )
    done = proposals(first, space, 4)
    slot.release()  # the process ends
    again, slot = tune.join_study(
        tmp_path / "g", "g", space, sampler="tpe", seed=7, pruner=PRUNER, trains=TRAINS
    )
    more = proposals(again, space, 4)
    slot.release()
    assert not set(more) & set(done), (done, more)
    assert len(set(more)) == 4


def test_two_workers_started_together_propose_different_trials(tmp_path):
    """Two processes join an empty study before either asks: they hold worker slots 0 and 1,
    only the first queues the base trial, and their samplers draw differently (both were seeded
    with --seed: the same trials, twice)."""
    space = tune.SearchSpace.load(space_file(tmp_path))
    group = tmp_path / "g"
    first, _ = tune.claim_slot(group)  # the first process, its slot claimed, its study not opened
    b, b_slot = tune.join_study(
        group, "g", space, sampler="tpe", seed=7, pruner=PRUNER, trains=TRAINS, base=BASE
    )
    assert b_slot.path.name == ".tune-slot-1"
    assert not b.trials  # the base trial is the first worker's to queue
    first.release()
    a, a_slot = tune.join_study(
        group, "g", space, sampler="tpe", seed=7, pruner=PRUNER, trains=TRAINS, base=BASE
    )
    assert a_slot.path.name == ".tune-slot-0"
    asked = [p for _ in range(3) for study in (a, b) for p in proposals(study, space, 1)]
    assert asked[0] == tuple(BASE[k] for k in sorted(BASE))
    assert len(set(asked)) == 6, asked
    a_slot.release()
    b_slot.release()
    _, slot = tune.join_study(
        group, "g", space, sampler="tpe", seed=7, pruner=PRUNER, trains=TRAINS
    )
    assert slot.path.name == ".tune-slot-0"  # a lone process after them: the first slot
    slot.release()


def run_tune(cmd: list[str], capsys) -> tuple[str, str]:
    """``segbench tune`` in this process (its trials' fits are processes of their own, as
    always): what it printed on stdout, and what it logged."""
    capsys.readouterr()
    logged = segbench_in_process(cmd)
    return capsys.readouterr().out, logged


def trials_of(group_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((group_dir / "trials.csv").open()))


def test_a_study_runs_its_trials_starts_from_the_base_and_writes_what_it_found(tmp_path, capsys):
    # Under a folder whose name has a space and an accent: best.yaml's command quotes its paths.
    root = tmp_path / "a study é"
    root.mkdir()
    out, logged = run_tune(tune_command(root, "--trials", "2", "--pruner", "none"), capsys)
    assert logged.count("starting") == 2  # a line per trial's fit (none in the call below)
    group = root / "runs" / "space-tune"
    rows = trials_of(group)
    assert [r["state"] for r in rows] == ["complete", "complete"]
    # trial 0 is the base config's own values (quickstart: lr 0.05, weight decay 1e-4)
    assert float(rows[0]["model.optimizer.init_args.lr"]) == 0.05
    assert float(rows[0]["model.optimizer.init_args.weight_decay"]) == 1.0e-4
    for row in rows:  # each trial is an ordinary run with its trial's values
        run = group / f"trial-{int(row['trial']):03d}"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["optimizer"]["init_args"]["lr"] == float(
            row["model.optimizer.init_args.lr"]
        )
        metrics = json.loads((run / "metrics.json").read_text())
        assert float(row["val/mIoU (best)"]) == metrics["fit"]["best_val"]["val/mIoU"]
        assert metrics["trial"]["number"] == int(row["trial"])
    best = max(rows, key=lambda r: float(r["val/mIoU (best)"]))
    chosen = yaml.safe_load((group / "best.yaml").read_text())
    # best.yaml's header gives a command that trains the best trial beside the trials: under
    # the base config's own run name it would meet that config's earlier run
    command = (group / "best.yaml").read_text().splitlines()[1].removeprefix("#   segbench fit ")
    config = parse_fit(shlex.split(command))
    assert Path(config["run.root"]) / config["run.group"] / config["run.name"] == group / "best"
    assert config["model.optimizer.init_args.lr"] == float(best["model.optimizer.init_args.lr"])
    assert chosen["model"]["optimizer"]["init_args"]["lr"] == float(
        best["model.optimizer.init_args.lr"]
    )
    for figure in ("history.png", "parallel.png", "importances.png"):
        assert (group / figure).stat().st_size > 0
    assert "2 trials: 2 complete, 0 pruned (0 of them diverged), 0 failed" in out
    # the same command again: the study is full, nothing runs
    records = {p: p.stat().st_mtime_ns for p in group.glob("trial-*/metrics.json")}
    dead = group / ".tune-elsewhere-99999.worker"  # a tune killed with -9, none of its trials left
    dead.write_text("pid 99999 on elsewhere\n")
    _, again = run_tune(tune_command(root, "--trials", "2", "--pruner", "none"), capsys)
    assert not list(group.glob(".tune-*.worker"))  # its own and the dead one's are removed
    assert "starting" not in again
    assert len(trials_of(group)) == 2
    assert {p: p.stat().st_mtime_ns for p in group.glob("trial-*/metrics.json")} == records


def test_a_pruned_trial_stops_early_and_is_recorded_as_pruned(tmp_path, capsys):
    # Every value is below the threshold: each trial is pruned at its first validation after
    # the warm-up epoch, one epoch before its schedule's end.
    cmd = tune_command(
        tmp_path, "--trials", "2", "--pruner", "threshold", "--threshold", "1.5", "--warmup", "1",
        epochs=3,
    )  # fmt: skip
    out, _ = run_tune(cmd, capsys)
    group = tmp_path / "runs" / "space-tune"
    assert [(r["state"], r["pruned at epoch"]) for r in trials_of(group)] == [("pruned", "1")] * 2
    for n in (0, 1):
        metrics = json.loads((group / f"trial-{n:03d}" / "metrics.json").read_text())
        assert metrics["trial"]["pruned_at_epoch"] == 1
        assert metrics["fit"]["completed_epochs"] == 2  # of 3
    assert not (group / "best.yaml").exists()  # nothing completed
    assert "2 trials: 0 complete, 2 pruned" in out


class DiedError(Exception):
    """The ``tune`` process dying where it would tell the study a trial's result."""


def test_a_trial_whose_run_ended_before_its_tune_died_is_told_not_trained_again(
    tmp_path, capsys, monkeypatch
):
    """``tune`` stops between a trial's fit (pruned at epoch 1 of 3) and telling the study, so
    the study holds the trial as running. The same command tells the study what the run
    recorded; it used to resume the run from its last.ckpt, train a third epoch and be pruned
    again at epoch 2, which the study then stored."""
    cmd = tune_command(
        tmp_path, "--trials", "1", "--pruner", "threshold", "--threshold", "1.5", "--warmup", "1",
        epochs=3,
    )  # fmt: skip

    def die(self: tune.Tuner, trial: object) -> None:
        raise DiedError

    with monkeypatch.context() as patched:
        patched.setattr(tune.Tuner, "tell", die)
        with pytest.raises(DiedError):
            run_tune(cmd, capsys)
    group = tmp_path / "runs" / "space-tune"
    study = optuna.load_study(study_name=None, storage=tune.journal(group / tune.STUDY_FILE))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING]
    metrics_file = group / "trial-000" / "metrics.json"
    recorded = metrics_file.read_text()
    assert json.loads(recorded)["trial"]["pruned_at_epoch"] == 1
    _, logged = run_tune(cmd, capsys)
    assert [(r["state"], r["pruned at epoch"]) for r in trials_of(group)] == [("pruned", "1")]
    assert metrics_file.read_text() == recorded
    assert "space-tune/trial-000" not in logged  # the launcher names each run it launches
    assert "trial 0: left running by a stopped tune after its run had ended" in logged


def test_a_diverging_trial_is_told_as_pruned_so_the_sampler_avoids_it(tmp_path, capsys):
    space = {"space": {"model.optimizer.init_args.lr": {"choices": [1.0e6]}}}
    cmd = tune_command(tmp_path, "--trials", "1", "--pruner", "none", "--base_trial", "false")
    cmd[cmd.index("--space") + 1] = str(space_file(tmp_path, space, "space.yaml"))
    out, _ = run_tune(cmd, capsys)
    group = tmp_path / "runs" / "space-tune"
    assert [(r["state"], r["pruned at epoch"]) for r in trials_of(group)] == [
        ("pruned", "diverged")
    ]
    record = json.loads((group / "trial-000" / "metrics.json").read_text())["trial"]
    assert record["diverged_at_step"] >= 0
    assert "1 pruned (1 of them diverged)" in out


def test_a_changed_space_is_refused_on_an_existing_study(tmp_path):
    cmd = tune_command(tmp_path, "--trials", "2", "--pruner", "none", epochs=1)
    args = cmd[cmd.index("tune") + 1 :]
    # The study as the command's first run makes it (its trials' fits add nothing to the check):
    # opened again with the same space, as the command opens it, it is taken.
    space = tune.SearchSpace.load(space_file(tmp_path))
    group = tmp_path / "runs" / "space-tune"
    fit_args = [*args[:2], *args[args.index("--") + 1 :]]
    trains = tune.trained_config(fit_args, space)
    tune.open_study(group, group.name, space, pruner=PRUNER, trains=trains)
    tune.open_study(group, group.name, space, pruner=PRUNER, trains=trains)
    changed = {**SPACE, "mode": "last"}
    space_file(tmp_path, changed)
    with pytest.raises(ConfigError, match=r"study.journal was made with another search \(mode"):
        tune.main(args)
    assert not (group / "trial-000").exists()


def test_a_page_written_while_a_trial_runs_says_so(tmp_path):
    """Two processes share a study: the first to end writes tune.md while the other's trial
    still runs; the page says the trial runs and that it is rewritten at the last one's end."""
    space = tune.SearchSpace.load(space_file(tmp_path))
    group = tmp_path / "g"
    study, slot = tune.join_study(group, "g", space, sampler="tpe", seed=7, pruner=PRUNER,
                                  trains=TRAINS)  # fmt: skip
    proposals(study, space, 2)
    study.ask(space.params)  # another process's trial, running
    tune.write_results(study, space, group, [])
    page = (group / "tune.md").read_text()
    assert "3 trials: 2 complete, 0 pruned (0 of them diverged), 0 failed." in page
    assert "1 still running, in another `tune` process or left by a stopped one" in page
    slot.release()


def test_what_a_study_found_is_written_as_one_version(tmp_path, monkeypatch):
    """best.yaml, trials.csv, tune.md and the figures were written one after another: a kill
    between two of them left a tune.md of the earlier trials beside a best.yaml of the later.
    A kill now leaves part of the new version and none of the earlier one."""
    import os

    space = tune.SearchSpace.load(space_file(tmp_path))
    group = tmp_path / "g"
    study, slot = tune.join_study(group, "g", space, sampler="tpe", seed=7, pruner=PRUNER,
                                  trains=TRAINS)  # fmt: skip
    proposals(study, space, 2)
    tune.write_results(study, space, group, [])
    earlier = {p.name: p.read_bytes() for p in group.iterdir() if not p.name.startswith(".")}
    assert {"best.yaml", "trials.csv", "tune.md", "history.png"} <= set(earlier)
    proposals(study, space, 2)
    replace, renamed = os.replace, []

    def killed_at_the_third(src, dst):
        if len(renamed) == 2:
            raise KeyboardInterrupt  # a kill between the renames
        renamed.append(dst)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        tune.write_results(study, space, group, [])
    left = {p.name: p.read_bytes() for p in group.iterdir() if not p.name.startswith(".")}
    assert len(renamed) == 2
    assert not [name for name in left if name in earlier and left[name] == earlier[name]]
    if "tune.md" in left:  # renamed before the kill: the new page
        assert "4 trials" in left["tune.md"].decode()
    slot.release()


def test_a_study_refuses_trials_trained_otherwise_than_its_own(tmp_path, capsys):
    """A study records what its trials train; the same study continued with another budget (or
    seed, data, network) would compare trials of both as one search, and is refused before any
    trial. Where a run is written or logged may differ."""
    run_tune(tune_command(tmp_path, "--trials", "1", "--pruner", "none", epochs=1), capsys)
    group = tmp_path / "runs" / "space-tune"
    cmd = tune_command(tmp_path, "--trials", "2", "--pruner", "none", epochs=2)
    with pytest.raises(ConfigError) as refused:
        tune.main(cmd[cmd.index("tune") + 1 :])
    said = str(refused.value)
    assert said.startswith(f"{group / tune.STUDY_FILE}: its trials were trained with other")
    assert "trainer.max_epochs 1 (study) vs 2 (this command)" in said
    assert "continue it with the arguments it was made with" in said
    assert len(trials_of(group)) == 1
    assert not (group / "trial-001").exists()
    # Where the runs are logged is no difference in what they train: the study is taken (the
    # check comes before any trial; a budget already spent trains none).
    logged_elsewhere = ("--run.tags", "[again]", "--run.checkpoint_every_minutes", "5")
    cmd = tune_command(tmp_path, "--trials", "1", "--pruner", "none", epochs=1,
                       extra=logged_elsewhere)  # fmt: skip
    run_tune(cmd, capsys)
    assert [r["state"] for r in trials_of(group)] == ["complete"]
    # a study made before studies recorded this takes the command's settings as its own
    study = optuna.load_study(study_name=None, storage=tune.journal(group / tune.STUDY_FILE))
    study.set_user_attr(tune.TRAINS_ATTR, None)
    cmd = tune_command(tmp_path, "--trials", "1", "--pruner", "none", epochs=1,
                       extra=("--seed_everything", "5"))  # fmt: skip
    _, logged = run_tune(cmd, capsys)
    assert "made before studies recorded what their trials train" in logged
    assert len(trials_of(group)) == 1
    study = optuna.load_study(study_name=None, storage=tune.journal(group / tune.STUDY_FILE))
    assert study.user_attrs[tune.TRAINS_ATTR]["seed_everything"] == 5


@pytest.mark.slow  # make test-slow: three tune processes and their fits (about a minute)
@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's prctl")
def test_a_tune_killed_with_sigkill_is_continued_by_the_same_command(tmp_path):
    release = tmp_path / "release"
    # step 5: in epoch 2 (4 steps an epoch), after epoch 1 wrote last.ckpt
    wait = ("--trainer.callbacks+=tests.faults.kill.WaitAtStep", "--trainer.callbacks.step=5",
            f"--trainer.callbacks.release={release}")  # fmt: skip
    cmd = tune_command(tmp_path, "--trials", "2", "--pruner", "none", extra=wait)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    wait_at_step(release, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    release.touch()  # trial 0's fit goes on, gets the SIGTERM of its parent's death and stops
    group = tmp_path / "runs" / "space-tune"
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]  # the same command: trial 0 resumed, then 1
    rows = trials_of(group)
    assert [(r["trial"], r["state"]) for r in rows] == [("0", "complete"), ("1", "complete")]
    first_trial = json.loads((group / "trial-000" / "metrics.json").read_text())
    assert len(first_trial["provenance"]["attempts"]) == 2  # killed, then resumed
    assert first_trial["fit"]["finished"] is True


@pytest.mark.slow  # make test-slow: two tune processes side by side
def test_two_processes_share_one_study(tmp_path):
    cmd = tune_command(tmp_path, "--trials", "3", "--pruner", "none", epochs=1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    errors = [w.communicate(timeout=600)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    group = tmp_path / "runs" / "space-tune"
    study = optuna.load_study(study_name=None, storage=tune.journal(group / tune.STUDY_FILE))
    numbers = [t.number for t in study.trials]
    # Both ask until the study holds 3 trials; asked at the same moment, each may add one more.
    assert 3 <= len(numbers) <= 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    values = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(values)) == len(values), values  # each worker draws its own (one base trial)
    for n in numbers:  # each trial trained once, by one process
        metrics = json.loads((group / f"trial-{n:03d}" / "metrics.json").read_text())
        assert len(metrics["provenance"]["attempts"]) == 1


def test_the_study_figures_name_the_metric_and_the_keys_in_full():
    """Optuna's own plots said "Objective Value", cut the keys to "model.optimizer.i..." and
    numbered trials 0.5, 1.5; segbench draws the history and importances itself."""
    import optuna
    from matplotlib.figure import Figure

    from segbench.study.tune import draw_history, draw_importances
    from segbench.trial import METRIC_ATTR

    study = optuna.create_study(study_name="s", direction="maximize")
    study.set_user_attr(METRIC_ATTR, "val/mIoU")
    lr = optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)
    wd = optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    for i, value in enumerate([0.2, 0.5, 0.4, 0.6]):
        study.add_trial(optuna.trial.create_trial(
            params={"model.optimizer.init_args.lr": 0.01 * (i + 1),
                    "model.optimizer.init_args.weight_decay": 1e-4 / (i + 1)},
            distributions={"model.optimizer.init_args.lr": lr,
                           "model.optimizer.init_args.weight_decay": wd},
            value=value,
        ))  # fmt: skip
    fig = Figure()
    draw_history(fig, study)
    (ax,) = fig.axes
    assert ax.get_ylabel() == "val/mIoU"
    assert ax.get_xlabel() == "trial"
    assert all(float(t).is_integer() for t in ax.get_xticks())
    (best,) = [line for line in ax.get_lines() if "best" in line.get_label()]
    assert list(best.get_ydata()) == [0.2, 0.5, 0.5, 0.6]
    fig = Figure()
    draw_importances(fig, study)
    (ax,) = fig.axes
    names = {t.get_text() for t in ax.get_yticklabels()}
    assert names == {"optimizer.lr", "optimizer.weight_decay"}
    assert "val/mIoU" in ax.get_xlabel()
