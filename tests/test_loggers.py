"""The loggers: metrics.csv keeps every row across resumed runs; TensorBoard and MLflow get the
scalars, hyperparameters and pictures W&B gets, and a killed and resumed run stays one run in
each (read back from the event files and the MLflow store; one test against a real MLflow
server)."""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from segbench.cli import main
from segbench.errors import ConfigError
from segbench.loggers import CSVMode, ResumableCSVLogger, check_loggers
from segbench.rundir import RunDir
from tests.helpers import REPO, segbench_log, tiny_args


def rows(path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_resumed_run_appends_without_losing_columns_or_rows(tmp_path):
    first = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    first.log_metrics({"train/loss": 1.0, "val/mIoU": 0.5}, step=0)
    first.save()
    second = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="", mode="resume")
    second.log_metrics({"train/loss": 0.5}, step=1)  # no val/mIoU yet after resuming
    second.save()
    second.log_metrics({"train/lr": 0.1}, step=2)  # a new column
    second.save()
    got = rows(tmp_path / "metrics.csv")
    assert [r["step"] for r in got] == ["0", "1", "2"]
    assert got[0]["val/mIoU"] == "0.5"
    assert got[1]["train/loss"] == "0.5"
    assert got[2]["train/lr"] == "0.1"


def test_a_resumed_run_drops_the_rows_logged_after_its_checkpoint(tmp_path):
    first = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    for step in range(5):  # the killed attempt logged steps 0-4; its checkpoint was at step 2
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.save()
    second = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="", mode="resume")
    for step in (3, 4, 5):  # the resumed run logs from step 3 on
        second.log_metrics({"train/loss": 10.0 + step}, step=step)
    second.save()
    got = rows(tmp_path / "metrics.csv")
    assert [r["step"] for r in got] == ["0", "1", "2", "3", "4", "5"]  # one row per step
    assert [r["train/loss"] for r in got][3:] == ["13.0", "14.0", "15.0"]


def test_a_fresh_run_starts_a_new_file(tmp_path):
    first = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.save()
    fresh = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    fresh.log_metrics({"val/mIoU": 0.5}, step=0)
    fresh.save()
    got = rows(tmp_path / "metrics.csv")
    assert got == [{"step": "0", "val/mIoU": "0.5"}]


def test_a_test_beside_a_training_fit_keeps_every_value_in_its_column(tmp_path):
    """A ``segbench test`` of a run still training writes the same metrics.csv as the fit.
    Lightning's writer kept the columns it knew at its start: the fit's new column (sorted in)
    shifted the test's values under other headers, and the test's own new column made its
    rewrite fail ("dict contains fields not in fieldnames")."""
    fit = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    fit.log_metrics({"train/loss": 1.0}, step=0)
    fit.save()
    test = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="", mode="append")
    _ = test.experiment  # started (it reads the file) before the fit's next column
    fit.log_metrics({"epoch": 0.0, "val/mIoU": 0.5}, step=1)
    fit.save()
    test.log_metrics({"test/mIoU": 0.4}, step=1)
    test.save()
    fit.log_metrics({"train/loss": 0.5}, step=2)
    fit.save()
    test.log_metrics({"test/loss": 0.7}, step=1)
    test.save()
    fit.log_metrics({"lr": 0.1}, step=3)
    fit.save()
    got = [{k: v for k, v in r.items() if v} for r in rows(tmp_path / "metrics.csv")]
    assert got == [
        {"step": "0", "train/loss": "1.0"},
        {"step": "1", "epoch": "0.0", "val/mIoU": "0.5"},
        {"step": "1", "test/mIoU": "0.4"},
        {"step": "2", "train/loss": "0.5"},
        {"step": "1", "test/loss": "0.7"},
        {"step": "3", "lr": "0.1"},
    ]


def test_commands_writing_one_run_record_at_once_lose_no_row(tmp_path):
    """Four processes append to one metrics.csv at once, each adding columns as it goes (the
    whole file rewritten each time): every row is kept, every value under its own column."""
    import multiprocessing

    start = multiprocessing.get_context("fork").Barrier(4)

    def write(w: int) -> None:  # in a process forked from this one (segbench imported)
        log = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="", mode="append")
        start.wait(timeout=60)  # all four write together
        for i in range(40):
            log.log_metrics({f"w{w}/k{i // 8}": float(i)}, step=100 * w + i)
            log.save()

    fork = multiprocessing.get_context("fork")
    writers = [fork.Process(target=write, args=(w,)) for w in range(4)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(timeout=120)
    assert [p.exitcode for p in writers] == [0, 0, 0, 0]
    got = [{k: v for k, v in r.items() if v} for r in rows(tmp_path / "metrics.csv")]
    expected = [
        {"step": str(100 * w + i), f"w{w}/k{i // 8}": f"{float(i)}"}
        for w in range(4)
        for i in range(40)
    ]
    assert sorted(got, key=lambda r: int(r["step"])) == expected


def test_hparams_yaml_is_never_left_half_written(tmp_path, monkeypatch):
    """Lightning wrote hparams.yaml by truncating it, then dumping: a kill in between left it
    empty. A write that dies part-way now leaves the earlier file whole."""
    from lightning.pytorch.core import saving

    logger = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="", mode="resume")
    logger.log_hyperparams({"lr": 0.01})
    before = (tmp_path / "hparams.yaml").read_text()

    class DiesMidWrite:
        @staticmethod
        def dump(data, stream=None, **kwargs):
            if stream is None:  # Lightning's check that a value can be written
                return ""
            stream.write("l")
            raise KeyboardInterrupt  # a kill mid-write

    monkeypatch.setattr(saving, "_OMEGACONF_AVAILABLE", False)
    monkeypatch.setattr(saving, "yaml", DiesMidWrite)
    with pytest.raises(KeyboardInterrupt):
        logger.log_hyperparams({"lr": 0.02})
    assert (tmp_path / "hparams.yaml").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["hparams.yaml"]  # no temporary file


def test_an_evaluation_leaves_the_fits_hparams_yaml_as_it_is(tmp_path):
    """A ``segbench validate`` / ``test`` / ``predict`` of a run (beside its fit or after it)
    logs the task's hyper-parameters only: it replaced the fit's hparams.yaml, which also holds
    the run's whole config (SaveRunConfig logs it flat), with them. It writes one only where the
    run has none."""
    fit = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    fit.log_hyperparams({"lr": 0.01})
    fit.log_hyperparams({"model.net.init_args.variant": "8s", "trainer.max_epochs": 3})
    before = (tmp_path / "hparams.yaml").read_text()
    assert "model.net.init_args.variant: 8s" in before
    validate = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="", mode="append")
    validate.log_hyperparams({"lr": 0.01})
    assert (tmp_path / "hparams.yaml").read_text() == before
    elsewhere = tmp_path / "elsewhere"  # a test into a directory without a fit: its own
    ResumableCSVLogger(save_dir=str(elsewhere), name="", version="", mode="append").log_hyperparams(
        {"lr": 0.01}
    )
    assert (elsewhere / "hparams.yaml").read_text() == "lr: 0.01\n"


def test_an_evaluation_beside_a_training_fit_is_not_logged_to_its_wandb_run(tmp_path, caplog):
    """A ``segbench test`` of a run still training opened the fit's W&B run (its stored id) in a
    second process: offline, found live, a second offline-run folder of that id (a sync may keep
    one history of the two); online, two writers of one run, which W&B says gives unexpected
    results. It is not logged to W&B while a fit holds the run, and says so; after, it is."""
    from lightning.pytorch.loggers import WandbLogger

    from segbench.loggers import make_loggers

    run = RunDir(tmp_path / "g" / "r")
    run.path.mkdir(parents=True)
    run.wandb_id(resume=False)
    cfg = SimpleNamespace(wandb="offline", project="p", group="g", name="r", tags=[])

    def wandb(mode: CSVMode) -> list[Any]:
        loggers = make_loggers(["wandb", "csv"], run=run, run_cfg=cfg, csv_mode=mode,
                               resume=mode != "new", purge_step=None)  # fmt: skip
        return [lg for lg in loggers if isinstance(lg, WandbLogger)]

    claim = run.writer()  # a fit training the run (this process)
    try:
        with caplog.at_level("WARNING", logger="segbench"):
            assert wandb("append") == []
        assert f"W&B: {run.path} is being trained by pid {os.getpid()} on " in caplog.text
        assert "this command is not logged to W&B" in caplog.text
    finally:
        claim.release()
    (after,) = wandb("append")  # the fit has ended: the test joins its W&B run
    assert after._wandb_init["id"] == run.wandb_id(resume=True)


# -- TensorBoard and MLflow -----------------------------------------------------------------------
needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason="tensorboard is not installed (pip install 'segbench[loggers]')",
)
needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None,
    reason="mlflow is not installed (pip install 'segbench[loggers]')",
)


def fit(args: list[str]) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "segbench.cli", "fit", *args], cwd=REPO, env=env
    ).returncode


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, its schema created once (~20 s) and copied per test."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def tensorboard_events(log_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


@needs_tensorboard
def test_an_evaluation_is_logged_at_the_step_of_its_checkpoint_not_at_step_0(tmp_path):
    """``segbench validate --ckpt_path best`` logged its metrics at step 0 (Lightning's step
    count of a command that only evaluates): TensorBoard, MLflow and W&B drew the best
    checkpoint's score as the first point of the run's curve. An evaluation is logged at the step
    the fit logged its validation of the same weights at; its metrics.csv row has no epoch, so
    the report's learning curve stays the fit's."""
    import json

    from segbench.study.runs import learning_curve

    extra = ["--run.loggers", "[tensorboard, csv]"]
    main(["fit", *tiny_args(tmp_path, name="evaluated", epochs=2, extra=extra)])
    run = tmp_path / "test" / "evaluated"
    fitted = {e.step: e.value for e in tensorboard_events(run / "tensorboard").Scalars("val/mIoU")}
    assert list(fitted) == [3, 7]  # each epoch's end: one before the checkpoint's step (4, 8)
    curve = learning_curve(run)
    config = ["--config", str(run / "config.yaml")]
    main(["validate", *config, "--ckpt_path", "best"])
    main(["test", *config, "--ckpt_path", "last"])

    best = json.loads((run / "metrics.json").read_text())["validate"]["checkpoint_step"]
    assert best in (4, 8)
    events = tensorboard_events(run / "tensorboard")
    val = [(e.step, e.value) for e in events.Scalars("val/mIoU")]
    assert val[:2] == list(fitted.items())
    assert val[2] == (best - 1, pytest.approx(fitted[best - 1], abs=1e-6))  # the same weights
    assert [e.step for e in events.Scalars("test/mIoU")] == [7]
    assert [e.step for e in events.Images("val/examples")] == [3, 7, best - 1]
    assert "step" not in events.Tags()["scalars"]
    assert learning_curve(run) == curve
    evaluations = [r for r in rows(run / "metrics.csv") if not r["epoch"]]
    assert [(r["step"], bool(r["val/mIoU"]), bool(r["test/mIoU"])) for r in evaluations] == [
        (str(best - 1), True, False),
        ("7", False, True),
    ]


@needs_tensorboard
@needs_mlflow
@pytest.mark.xdist_group("mlflow_store")  # its fixture: once
def test_tensorboard_and_mlflow_get_what_wandb_gets_and_a_killed_run_stays_one_run(
    tmp_path, mlflow_store
):
    from mlflow import MlflowClient

    shutil.copy(mlflow_store, tmp_path / "mlflow.db")
    loggers = ["--run.loggers", "[tensorboard, mlflow, csv]", "--run.tags", "[fcn, probe]"]
    args = tiny_args(tmp_path, name="logged", epochs=2, extra=loggers)
    kill = ["--trainer.callbacks+=tests.faults.kill.KillAtStep", "--trainer.callbacks.step=6"]
    assert fit([*args, *kill]) == -9  # killed in epoch 2 (4 steps an epoch), after a validation
    main(["fit", *args, "--ckpt_path", "last"])  # resumed in this process
    run = tmp_path / "test" / "logged"

    # TensorBoard: one log directory; scalars (the steps after the checkpoint purged, logged
    # once more), the hyperparameters, the validation pictures and the per-class IoU table.
    events = tensorboard_events(run / "tensorboard")
    tags = events.Tags()
    assert {"val/mIoU", "val/bIoU", "val/ECE", "val/IoU/pole", "train/loss_step"} <= set(
        tags["scalars"]
    )
    assert {"val/examples", "val/confusion"} <= set(tags["images"])
    assert [e.step for e in events.Scalars("val/mIoU")] == [3, 7]  # each epoch's, once
    steps = [e.step for e in events.Scalars("train/loss_step")]
    assert steps == sorted(set(steps)) == list(range(8))  # no step twice across the kill
    assert [e.step for e in events.Images("val/examples")] == [3, 7]  # with the metrics
    assert "val/per_class_IoU" in str(events.Tags().get("tensors", []))

    # MLflow: experiment = group, run name = name, tags, params, metrics, the same pictures;
    # the resumed process continued the same MLflow run.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    (logged,) = runs
    assert logged.info.run_id == (run / "mlflow_run_id").read_text().strip()
    assert logged.info.run_name == "logged"
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["tag.fcn"] == logged.data.tags["tag.probe"] == "true"
    assert logged.data.tags["segbench.group"] == "test"
    assert logged.data.tags["segbench.data"] == "SyntheticSegmentation"
    assert logged.data.params["model.net.init_args.width"] == "0.0625"
    history = client.get_metric_history(logged.info.run_id, "val/mIoU")
    assert sorted({m.step for m in history}) == [3, 7]
    assert {"val/bIoU", "val/ECE", "val/IoU/pole"} <= set(logged.data.metrics)
    images = [a.path for a in client.list_artifacts(logged.info.run_id, "images")]
    assert any(p.startswith("images/val~examples") for p in images)
    assert any(p.startswith("images/val~confusion") for p in images)
    table = [a.path for a in client.list_artifacts(logged.info.run_id, "val")]
    assert table == ["val/per_class_IoU.json"]

    # The CSV run record is there too, one row per step.
    with (run / "metrics.csv").open(newline="") as f:
        logged_steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]
    assert logged_steps == list(range(8))


@needs_tensorboard
@needs_mlflow
@pytest.mark.xdist_group("mlflow_store")  # its fixture: once
def test_the_commands_a_fit_prints_at_its_end_quote_their_paths(tmp_path, mlflow_store):
    """A fit ends with the commands that open its loggers' records (wandb sync, tensorboard,
    mlflow ui); under a run root with a space in its name they split into the wrong words when
    copied to a shell, as the paths were not quoted."""
    root = tmp_path / "my runs" / "résultats"
    root.mkdir(parents=True)
    shutil.copy(mlflow_store, root / "mlflow.db")
    loggers = ["--run.loggers", "[wandb, tensorboard, mlflow, csv]"]
    args = tiny_args(root, name="my run", wandb="offline", extra=loggers)
    with segbench_log() as lines:
        main(
            ["fit", *args, "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
        )
    (end,) = [line for line in lines if "run directory:" in line]
    commands = dict(re.findall(r"(wandb sync|tensorboard --logdir|mlflow ui) ([^`)\n]+)", end))
    assert set(commands) == {"wandb sync", "tensorboard --logdir", "mlflow ui"}
    (offline,) = shlex.split(commands["wandb sync"])
    assert offline == f"{root / 'test' / 'my run' / 'wandb'}/offline-run-*"
    assert shlex.split(commands["tensorboard --logdir"]) == [str(root)]
    assert shlex.split(commands["mlflow ui"]) == [
        "--backend-store-uri",
        f"sqlite:///{root}/mlflow.db",
    ]


def test_a_logger_whose_package_is_missing_fails_first_saying_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'segbench\[loggers\]'"):
        check_loggers(["csv", "mlflow"])
    check_loggers(["csv", "wandb"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_mlflow
@pytest.mark.xdist_group("mlflow_store")  # its fixture: once
def test_a_run_logs_to_a_real_mlflow_server(tmp_path, mlflow_store):
    """``mlflow server`` on 127.0.0.1 (its own store and artifact folder), the run pointed at
    it by ``run.mlflow_uri``: what the server holds afterwards."""
    from mlflow import MlflowClient

    shutil.copy(mlflow_store, tmp_path / "server.db")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # the server starts in seconds; allow a loaded machine minutes
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, "mlflow server exited"
                time.sleep(0.5)
        args = tiny_args(
            tmp_path, name="served", extra=["--run.loggers", "[mlflow]", "--run.mlflow_uri", uri]
        )
        main(["fit", *args])
        client = MlflowClient(uri)
        (served,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
        assert served.info.run_name == "served"
        assert "val/mIoU" in served.data.metrics
        assert any(
            a.path.startswith("images/val~examples")
            for a in client.list_artifacts(served.info.run_id, "images")
        )
        assert not (tmp_path / "mlflow.db").exists()  # nothing written to the local store
        assert (tmp_path / "test" / "served" / "metrics.csv").is_file()  # the CSV record anyway
    finally:
        server.terminate()
        server.wait(timeout=30)


@needs_mlflow
@pytest.mark.xdist_group("mlflow_store")  # its fixture: once
def test_an_evaluation_leaves_the_mlflow_runs_status_as_it_is(tmp_path, mlflow_store):
    """A ``segbench validate`` / ``test`` / ``predict`` logs into the fit's MLflow run. Found
    live: a validate beside a fit still training marked that run FINISHED, and it stayed
    FINISHED when the fit was then killed (a failed test marked a finished run FAILED). Only a
    fit ends its run now."""
    from mlflow import MlflowClient

    from segbench.loggers import make_loggers

    shutil.copy(mlflow_store, tmp_path / "mlflow.db")
    run = RunDir(tmp_path / "g" / "r")
    run.path.mkdir(parents=True)
    cfg = SimpleNamespace(
        wandb="disabled", root=str(tmp_path), group="g", name="r", tags=[], mlflow_uri=None
    )

    def mlflow(mode: CSVMode) -> Any:
        loggers = make_loggers(["mlflow"], run=run, run_cfg=cfg, csv_mode=mode,
                               resume=mode != "new", purge_step=None)  # fmt: skip
        return next(lg for lg in loggers if not isinstance(lg, ResumableCSVLogger))

    fit = mlflow("new")
    fit.log_metrics({"val/mIoU": 0.5}, step=3)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for status in ("success", "failed"):
        validate = mlflow("append")  # beside the fit
        assert validate.run_id == fit.run_id
        validate.log_metrics({"val/mIoU": 0.4}, step=0)
        validate.finalize(status)
        assert client.get_run(fit.run_id).info.status == "RUNNING"
    fit.finalize("success")
    assert client.get_run(fit.run_id).info.status == "FINISHED"
    mlflow("append").finalize("failed")  # a test of the finished run that failed
    assert client.get_run(fit.run_id).info.status == "FINISHED"


@needs_mlflow
@pytest.mark.xdist_group("mlflow_store")  # its fixture: once
def test_the_mlflow_store_is_opened_by_one_process_at_a_time(tmp_path, mlflow_store, monkeypatch):
    """MLflow creates (migrates) a local store as its client is made, in the logger's
    ``__init__``: three fits started at once on a new store under one ``run.root`` left two
    dead in the migration ('duplicate column name: step'). The client is made under the store's
    lock, as the experiment's first use is."""
    import fcntl

    from mlflow.tracking import MlflowClient

    from segbench.loggers import RunMLFlowLogger

    shutil.copy(mlflow_store, tmp_path / "mlflow.db")
    held: list[bool] = []
    real = MlflowClient.__init__

    def made(self, *args, **kwargs):
        with open(tmp_path / "mlflow.db.lock", "a") as other:  # another open file: as a process
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(True)
            else:
                held.append(False)
                fcntl.flock(other, fcntl.LOCK_UN)
        real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "__init__", made)
    RunMLFlowLogger(
        id_file=tmp_path / "mlflow_run_id",
        resume=False,
        experiment_name="g",
        run_name="r",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert held == [True]
