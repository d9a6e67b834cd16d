"""Runs that lose nothing: true last checkpoints, exact resume after SIGKILL, loud divergence,
a W&B that never blocks, a full disk, overwrite and smoke runs, foreign code refused."""

from __future__ import annotations

import csv
import errno
import fcntl
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from segbench import errors, loggers
from segbench.cli import main
from segbench.errors import BusyError, ConfigError, SegbenchError
from segbench.rundir import RunDir, atomic_write_files, checkpoint_step, text_writer
from tests.helpers import REPO, tiny_args, write_png


def fit(args: list[str]) -> None:
    main(["fit", *args])


def fails(args: list[str], capsys) -> str:
    """Run the command, expect the user-error exit (1), return what it printed on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 1
    return capsys.readouterr().err


def section(run_dir: Path, name: str = "fit") -> dict:
    return json.loads((run_dir / "metrics.json").read_text())[name]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def epochs_done(ckpt: dict) -> int:
    return ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]


# -- checkpoints that mean what they say --------------------------------------------------------
def test_last_checkpoint_is_the_final_state_and_a_finished_run_is_not_retrained(tiny, capsys):
    # 3 epochs, validation every 2nd: the best checkpoint is epoch 2's, the last is the end.
    args = tiny(epochs=3, extra=["--trainer.check_val_every_n_epoch", "2"])
    fit(args)
    run = RunDir(tiny.root / "test" / "tiny")
    steps = section(run.path)["global_step"]
    last, best = load(run.checkpoint("last")), load(run.checkpoint("best"))
    assert last["global_step"] == steps
    assert epochs_done(last) == 3
    assert best["global_step"] == 2 * steps // 3
    before = run.checkpoint("last").stat().st_mtime_ns, run.csv.read_bytes()
    capsys.readouterr()
    fit([*args, "--ckpt_path", "last"])
    assert "nothing to resume" in capsys.readouterr().err
    assert (run.checkpoint("last").stat().st_mtime_ns, run.csv.read_bytes()) == before
    assert section(run.path)["global_step"] == steps


def test_last_checkpoint_also_every_n_steps(tiny):
    # 16 images / batch 4 = 4 steps per epoch; killed after step 3 of 4, the last save is step 2.
    args = tiny(extra=["--run.checkpoint_every_n_steps", "2"])
    args += ["--trainer.callbacks+=tests.faults.kill.KillAtStep", "--trainer.callbacks.step=3"]
    run = RunDir(tiny.root / "test" / "tiny")
    proc = subprocess.run(
        [sys.executable, "-m", "segbench.cli", "fit", *args], cwd=REPO, capture_output=True
    )
    assert proc.returncode == -9
    assert load(run.checkpoint("last"))["global_step"] == 2
    assert not list(run.checkpoints.glob(".*tmp*"))  # no temporary file left behind


def test_a_save_due_before_a_validation_is_made_one_batch_later_and_once(tiny, monkeypatch):
    """4 batches an epoch, validated after every 2, saved every 2 steps: the saves due at steps
    2 and 6 come before a validation (a resume would skip it) and are made at steps 3 and 7;
    the one due at step 4, the epoch's last batch, is the end-of-epoch save, not made again."""
    from segbench.callbacks import LastCheckpoint

    saved: list[int] = []
    real = LastCheckpoint._save

    def recording(self, trainer, **kwargs):
        saved.append(trainer.global_step)
        real(self, trainer, **kwargs)

    monkeypatch.setattr(LastCheckpoint, "_save", recording)
    every = ["--trainer.val_check_interval", "2", "--run.checkpoint_every_n_steps", "2"]
    fit(tiny(epochs=2, extra=every))
    assert saved == [3, 4, 7, 8]


# -- exact resume ---------------------------------------------------------------------------------
#: Augmentation (flip, scale, crop) and dropout: the data path and the step both draw random
#: numbers, so the resume is only exact if every generator and the data order are restored.
RANDOM = [
    "--data.init_args.num_train",
    "32",
    "--data.init_args.augment",
    '{"scale_range": [0.75, 1.25], "crop_size": [48, 48], "flip": true}',
    "--model.net.init_args.dropout",
    "0.3",
    "--run.test_after_fit",
    "true",
    "--run.checkpoint_every_n_steps",
    "3",
]


def run_process(args: list[str]) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "segbench.cli", "fit", *args], cwd=REPO, env=env
    ).returncode


def assert_identical_runs(a: Path, b: Path) -> None:
    fa, fb = section(a), section(b)
    for key in ("val", "best_val", "test", "global_step", "completed_epochs"):
        assert fa[key] == fb[key], key
    wa, wb = load(a / "checkpoints" / "last.ckpt"), load(b / "checkpoints" / "last.ckpt")
    for name, tensor in wa["state_dict"].items():
        assert torch.equal(tensor, wb["state_dict"][name]), name


def csv_steps(run_dir: Path) -> list[int]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    """Every row of metrics.csv, with its empty cells left out."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [{k: v for k, v in r.items() if v} for r in csv.DictReader(f)]


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    # 8 steps per epoch, 2 epochs, validated every half epoch (after steps 4, 8, 12 and 16);
    # killed after step 13 (mid-epoch 2), resumed with --ckpt_path last.
    extra = [*RANDOM, "--trainer.val_check_interval", "0.5"]
    whole = tiny_args(tmp_path, name="whole", epochs=2, extra=extra)
    killed = tiny_args(tmp_path, name="killed", epochs=2, extra=extra)
    assert run_process(whole) == 0
    kill = ["--trainer.callbacks+=tests.faults.kill.KillAtStep", "--trainer.callbacks.step=13"]
    assert run_process([*killed, *kill]) == -9
    interrupted = load(tmp_path / "test" / "killed" / "checkpoints" / "last.ckpt")
    # The every-3-steps save: at step 9, not 12. A save before a validation was resumed past
    # it (Lightning counts it done), so the resumed run never saw that validation's score and
    # a later, worse one replaced best.ckpt.
    assert interrupted["global_step"] == 9
    assert run_process([*killed, "--ckpt_path", "last"]) == 0
    assert_identical_runs(tmp_path / "test" / "whole", tmp_path / "test" / "killed")
    best = [
        load(tmp_path / "test" / run / "checkpoints" / "best.ckpt") for run in ("whole", "killed")
    ]
    assert best[0]["global_step"] == best[1]["global_step"]
    # metrics.csv: one row per step, as if never interrupted.
    steps = csv_steps(tmp_path / "test" / "killed")
    assert steps == sorted(set(steps)) == csv_steps(tmp_path / "test" / "whole")
    # Every logged value, the interrupted epoch's train/loss_epoch included, to the last digit.
    assert csv_rows(tmp_path / "test" / "killed") == csv_rows(tmp_path / "test" / "whole")


@pytest.mark.slow
def test_sigkill_at_20_random_moments_every_resume_finishes_exactly(tmp_path):
    # 4 epochs of 8 steps, a checkpoint every step. The run is killed 20 times: the i-th process
    # at a random time after the start of a random step (sorted, so each process gets further),
    # which lands in the forward or backward pass, a checkpoint's write, validation or the
    # loader; each is resumed with --ckpt_path last. The result is the uninterrupted run's:
    # the weights, every metric and every row of metrics.csv.
    import random

    extra = [*RANDOM, "--run.checkpoint_every_n_steps", "1"]
    whole = tiny_args(tmp_path, name="whole", epochs=4, extra=extra)
    killed = tiny_args(tmp_path, name="killed", epochs=4, extra=extra)
    assert run_process(whole) == 0
    rng = random.Random(20)
    # From step 1 (the first process has saved one) to 29 of 32, within ~2 steps' time.
    steps = sorted(rng.sample(range(1, 30), 20))
    for i, step in enumerate(steps):
        delay = rng.uniform(0.0, 0.15)
        kill = [
            "--trainer.callbacks+=tests.faults.kill.KillDuringStep",
            f"--trainer.callbacks.step={step}",
            f"--trainer.callbacks.delay={delay}",
        ]
        resume = ["--ckpt_path", "last"] if i else []
        assert run_process([*killed, *resume, *kill]) == -9, (i, step, delay)
    assert run_process([*killed, "--ckpt_path", "last"]) == 0
    assert_identical_runs(tmp_path / "test" / "whole", tmp_path / "test" / "killed")
    assert csv_rows(tmp_path / "test" / "killed") == csv_rows(tmp_path / "test" / "whole")
    record = json.loads((tmp_path / "test" / "killed" / "metrics.json").read_text())
    attempts = record["provenance"]["attempts"]
    assert len(attempts) == 21
    checkpoints = tmp_path / "test" / "killed" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]


def test_the_last_checkpoint_of_an_epoch_knows_the_best_one_written_then(tmp_path):
    """At an epoch's end best.ckpt is written before last.ckpt, and last.ckpt holds the best
    checkpoint's state as it is after that epoch: a resume from it neither overwrites a better
    best.ckpt with a worse one nor writes best-v1.ckpt beside a best.ckpt it does not know."""
    args = tiny_args(tmp_path, name="run", epochs=1, extra=RANDOM)
    fit(args)
    run = tmp_path / "test" / "run"
    last = load(run / "checkpoints" / "last.ckpt")
    (state,) = [v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert state["best_model_path"] == str(run / "checkpoints" / "best.ckpt")
    assert float(state["best_model_score"]) == section(run)["best_val"]["val/mIoU"]


def test_a_moved_run_resumes_knowing_its_best_checkpoint(tmp_path, monkeypatch):
    """A run directory moved (or copied) and resumed there: Lightning dropped the best
    checkpoint's record (its folder was another), so the resumed run's next validation
    replaced best.ckpt whatever its score, and a worse model became the run's best while
    metrics.json still named the better validation. The record follows the directory now."""
    from segbench.metrics import SegmentationMetrics

    # 2 epochs of 4 steps, killed in the second: last.ckpt is epoch 1's end (step 4).
    args = tiny_args(tmp_path / "here", epochs=2)
    kill = ["--trainer.callbacks+=tests.faults.kill.KillAtStep", "--trainer.callbacks.step=5"]
    assert run_process([*args, *kill]) == -9
    moved = tmp_path / "there" / "test" / "tiny"
    shutil.copytree(tmp_path / "here" / "test" / "tiny", moved)
    first = section(moved)["best_val"]
    assert first["step"] == 4
    assert load(moved / "checkpoints" / "best.ckpt")["global_step"] == 4

    real = SegmentationMetrics.compute

    def worse(self):  # the resumed epoch scores below the first, whatever it learnt
        return {**real(self), "mIoU": torch.tensor(-1.0)}

    monkeypatch.setattr(SegmentationMetrics, "compute", worse)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        fit(
            [
                "--config",
                str(moved / "config.yaml"),
                "--trainer.callbacks=[]",
                "--ckpt_path",
                "last",
            ]
        )
    assert not [w for w in said if "dirpath has changed" in str(w.message)]
    assert section(moved)["global_step"] == 8
    assert section(moved)["best_val"] == first
    assert load(moved / "checkpoints" / "best.ckpt")["global_step"] == 4  # not replaced
    last = load(moved / "checkpoints" / "last.ckpt")
    (state,) = [v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert state["best_model_path"] == str(moved / "checkpoints" / "best.ckpt")
    assert float(state["best_model_score"]) == first["val/mIoU"]


@pytest.mark.slow
def test_sigkill_with_loader_workers_then_resume_is_bit_identical(tmp_path):
    extra = [*RANDOM, "--data.init_args.num_workers", "2", "--data.init_args.num_train", "64"]
    whole = tiny_args(tmp_path, name="whole", epochs=3, extra=extra)
    killed = tiny_args(tmp_path, name="killed", epochs=3, extra=extra)
    assert run_process(whole) == 0
    kill = ["--trainer.callbacks+=tests.faults.kill.KillAtStep", "--trainer.callbacks.step=23"]
    assert run_process([*killed, *kill]) == -9
    assert run_process([*killed, "--ckpt_path", "last"]) == 0
    assert_identical_runs(tmp_path / "test" / "whole", tmp_path / "test" / "killed")


# -- divergence -----------------------------------------------------------------------------------
def test_a_diverging_run_stops_at_once_and_saves_nothing_nan(tiny, capsys):
    args = tiny(epochs=3, extra=["--run.checkpoint_every_n_steps", "1"])
    err = fails(["fit", *args, "--model.optimizer.init_args.lr", "1e6"], capsys)
    assert "training diverged at step" in err
    assert "Traceback" not in err
    run = RunDir(tiny.root / "test" / "tiny")
    for path in run.checkpoints.glob("*.ckpt"):  # whatever was saved is finite
        state = load(path)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    assert not run.checkpoint("best").exists()  # no validation ran: nothing is "best"
    assert section(run.path).get("finished") is False


# -- W&B never blocks ------------------------------------------------------------------------------
@pytest.fixture
def silent_server():
    """A local TCP server that accepts connections and never answers (bounded: 30 s)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(30)
    conns: list[socket.socket] = []

    def accept() -> None:
        try:
            while len(conns) < 8:
                conns.append(server.accept()[0])
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    for c in conns:
        c.close()
    server.close()


@pytest.fixture
def wandb_key(monkeypatch):
    from segbench.cli import configure_logging

    configure_logging()  # segbench's warnings on stderr, also when these tests run alone
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(loggers, "WANDB_PROBE_SECONDS", 0.5)


def test_wandb_auto_falls_back_to_offline_when_the_server_does_not_answer(
    wandb_key, silent_server, monkeypatch, capsys
):
    monkeypatch.setenv("WANDB_BASE_URL", silent_server)
    assert loggers.choose_wandb_mode("auto") == "offline"
    assert "did not answer" in capsys.readouterr().err
    with pytest.raises(SegbenchError, match="did not answer"):
        loggers.choose_wandb_mode("online")


def test_wandb_refused_connection_and_no_key(wandb_key, monkeypatch, capsys, tmp_path):
    # HOME=/nonexistent below hides ~/.netrc; W&B's own folders stay writable.
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    assert loggers.choose_wandb_mode("auto") == "offline"
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setenv("HOME", "/nonexistent")
    with pytest.raises(ConfigError, match="no W&B API key"):
        loggers.choose_wandb_mode("online")
    assert loggers.choose_wandb_mode("auto") == "offline"
    # WANDB_MODE=online in the environment does not make auto fail without a key.
    monkeypatch.setenv("WANDB_MODE", "online")
    capsys.readouterr()
    assert loggers.choose_wandb_mode("auto") == "offline"
    assert "WANDB_MODE=online but no API key: logging offline" in capsys.readouterr().err
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert loggers.choose_wandb_mode("auto") == "disabled"


def test_wandb_that_cannot_write_its_folders_is_left_out_or_refused_at_start(
    tiny, monkeypatch, capsys
):
    """W&B stages the tables a run logs in its data folder (WANDB_DATA_DIR, by default under
    the home folder): with a home this user cannot write (HOME=/nonexistent, found as a
    non-root user) a fit trained its first epoch, then died at the validation with 'permission
    denied: /nonexistent ... (run.root, --root, --out)'. Now ``auto`` logs without W&B, saying
    so, and ``offline`` / ``online`` fail at once naming the folder. The folder lies under a
    file here, which root cannot write either."""
    from segbench.cli import configure_logging

    configure_logging()
    blocked = tiny.root / "a-file"
    blocked.write_text("x")
    monkeypatch.setenv("WANDB_DATA_DIR", str(blocked / "wandb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    capsys.readouterr()
    fit(tiny(wandb="auto", extra=["--trainer.limit_val_batches", "1"]))
    err = capsys.readouterr().err
    assert f"W&B cannot write its folder {blocked / 'wandb'} (WANDB_DATA_DIR)" in err
    assert "logging without W&B" in err
    run = RunDir(tiny.root / "test" / "tiny")
    assert run.section("fit")["finished"]  # trained through its validations
    assert not (run.path / "wandb").exists()
    with pytest.raises(ConfigError, match=r"run.wandb offline: W&B cannot write .*WANDB_DATA_DIR"):
        loggers.choose_wandb_mode("offline")


def test_wandb_answering_server_means_online(wandb_key, monkeypatch):
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.handle_request, daemon=True).start()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
    assert loggers.choose_wandb_mode("auto") == "online"
    server.server_close()


# -- a full disk ----------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot mount a small tmpfs to fill ({err}); needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_on_checkpoint_names_the_file_and_keeps_the_previous(small_disk, capsys):
    constant = ["--model.lr_schedule", "constant"]  # so that the resume may train longer
    args = tiny_args(small_disk, epochs=1, extra=constant)
    fit(args)
    run = RunDir(small_disk / "test" / "tiny")
    last = run.checkpoint("last")
    before = last.read_bytes()
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - len(before) // 2))
    err = fails(
        ["fit", *tiny_args(small_disk, epochs=2, extra=constant), "--ckpt_path", "last"], capsys
    )
    assert "disk full while writing" in err
    assert "MB free" in err
    assert last.read_bytes() == before  # the previous checkpoint is intact
    assert not list(run.checkpoints.glob(".*tmp*"))
    assert load(last)["global_step"] == section(run.path)["global_step"]


def test_a_place_this_user_cannot_write_is_one_line_naming_it(tiny, capsys, monkeypatch):
    """A run root without write permission (or on a read-only file system) is a user error that
    names the folder, not a traceback. The run root lies in a folder without write permission;
    as root the permission bits do not bind, so there the denial is made where the folder is
    created."""
    locked = tiny.root / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root
        mkdir = Path.mkdir

        def denied(self: Path, *args, **kwargs):
            if self == locked or locked in self.parents:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", denied)
    try:
        err = fails(["fit", *tiny_args(locked / "runs")], capsys)
    finally:
        locked.chmod(0o755)
    assert f"{locked}" in err
    assert "permission denied: give this user access" in err
    assert "Traceback" not in err
    read_only = OSError(errno.EROFS, "Read-only file system", "/mnt/ro/runs")
    assert errors.user_error(read_only) is read_only
    assert errors.user_message(read_only).startswith("/mnt/ro/runs: read-only file system:")
    assert errors.user_error(PermissionError(errno.EACCES, "Permission denied")) is None  # no path


# -- the run directory: overwrite, smoke tests, re-fits -----------------------------------------
def test_overwrite_keeps_the_old_run_until_the_new_one_trains(tiny, capsys):
    fit(tiny())
    run = RunDir(tiny.root / "test" / "tiny")
    old = run.checkpoint("last").read_bytes()
    bad = tiny(extra=["--run.overwrite", "true", "--model.init_from", "/nonexistent.ckpt"])
    assert "no checkpoint at /nonexistent.ckpt" in fails(["fit", *bad], capsys)
    assert run.checkpoint("last").read_bytes() == old  # put back
    fit(tiny(extra=["--run.overwrite", "true", "--seed_everything", "1"]))
    assert run.checkpoint("last").read_bytes() != old  # the new run's
    assert not list(run.path.parent.glob(".tiny.replaced-*"))


def test_a_smoke_run_leaves_the_run_directory_alone(tiny, monkeypatch):
    import tempfile

    tmp = tiny.root / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    fit(tiny(extra=["--trainer.fast_dev_run", "true"]))
    assert not (tiny.root / "test" / "tiny").exists()
    assert not list(tmp.iterdir())  # its temporary directory is gone, with nothing beside it
    fit(tiny())  # the real run is not refused


def test_a_fresh_fit_into_a_directory_without_checkpoints_starts_clean(tiny):
    run = RunDir(tiny.root / "test" / "tiny")
    run.path.mkdir(parents=True)
    (run.path / "metrics.json").write_text(json.dumps({"fit": {"best_val": {"val/mIoU": 0.99}}}))
    fit(tiny())
    assert section(run.path)["best_val"]["val/mIoU"] < 0.99


def test_records_from_concurrent_tools_are_all_kept(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_section("fit", {"test": {"test/mIoU": 0.5}})

    def record(i: int) -> None:
        for _ in range(5):
            run.record(f"tool{i}", {"x": float(i)}, checkpoint="best.ckpt")

    threads = [threading.Thread(target=record, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = run.read()
    assert sorted(data["records"]) == [f"tool{i}" for i in range(6)]
    assert data["fit"]["test"]["test/mIoU"] == 0.5


def test_files_written_together_are_never_left_as_a_mix_of_two_versions(tmp_path, monkeypatch):
    """A model and its side-car, a table and its figure, are one version: a kill after the
    first rename (here: the second rename raises) leaves part of the new set and none of the
    old; a write that fails before any rename leaves the whole old set; no temporary file."""
    table, figure = tmp_path / "r.md", tmp_path / "r.png"
    atomic_write_files({table: text_writer("old table"), figure: text_writer("old figure")})

    def fails(f):
        f.write(b"half a fig")
        raise OSError("killed mid-write")

    with pytest.raises(OSError, match="mid-write"):
        atomic_write_files({table: text_writer("new table"), figure: fails})
    assert (table.read_text(), figure.read_text()) == ("old table", "old figure")

    replace, calls = os.replace, []

    def dies_at_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill between the two renames
        replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_at_second)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_files({table: text_writer("new table"), figure: text_writer("new figure")})
    assert table.read_text() == "new table"
    assert not figure.exists()  # not the old figure beside the new table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.md"]


def test_a_temporary_file_left_by_a_kill_is_removed_by_the_next_write(tmp_path):
    """Found by SIGKILLing (and SIGTERMing) the analysis tools mid-write: each kill left its
    .metrics.json.tmp-* in the run directory for good (a checkpoint's size, for a fit). The next
    write of the same file removes those of dead processes of this host, and only those."""
    target = tmp_path / "metrics.json"
    killed = subprocess.run(
        [sys.executable, "-c", "import os, signal\n"
         "from segbench.rundir import atomic_paths\n"
         f"with atomic_paths({str(target)!r}) as (tmp,):\n"
         "    tmp.write_text('half')\n"
         "    os.kill(os.getpid(), signal.SIGKILL)\n"],
        cwd=REPO,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    (left,) = tmp_path.glob(".metrics.json.tmp-*")
    alive = tmp_path / f".metrics.json.tmp-{socket.gethostname()}-{os.getpid()}-abcdef"
    elsewhere = tmp_path / ".metrics.json.tmp-otherhost-1-abcdef"
    other = tmp_path / f".other.json.tmp-{socket.gethostname()}-999999999-abcdef"
    for path in (alive, elsewhere, other):
        path.write_text("")
    RunDir(tmp_path).write_section("fit", {"finished": True})
    assert not left.exists()
    assert all(p.exists() for p in (alive, elsewhere, other))
    assert RunDir(tmp_path).section("fit") == {"finished": True}


def test_a_temporary_file_of_the_older_hostless_name_goes_once_an_hour_untouched(tmp_path):
    """Before the host was in the name (``.NAME.tmp-PID-RANDOM``), a killed writer's file cannot
    be told from a running writer's on another host; once untouched for an hour it is left
    behind, and the next write of its file removes it. A recent one, and a host-named one that
    looks alike, stay."""
    target = tmp_path / "metrics.json"
    old = tmp_path / ".metrics.json.tmp-4242-0a1b2c"
    recent = tmp_path / ".metrics.json.tmp-4243-0a1b2c"
    numeric_host = tmp_path / ".metrics.json.tmp-12345-999999-0a1b2c"  # host "12345", live?
    for path in (old, recent, numeric_host):
        path.write_text("half")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    os.utime(numeric_host, (hours_ago, hours_ago))
    RunDir(tmp_path).write_section("fit", {"finished": True})
    assert not old.exists()
    assert recent.exists()
    assert numeric_host.exists()
    assert json.loads(target.read_text())["fit"] == {"finished": True}


def test_writing_many_files_into_a_folder_lists_it_once(tmp_path, monkeypatch):
    """The cleanup of killed writers' temporary files listed the folder at every write, so N
    predictions into one folder cost N listings of a growing folder (N^2); it lists a folder once
    per process, at its first write."""
    from segbench import rundir

    listed: list[str] = []
    scandir = os.scandir

    def counting(path):
        listed.append(str(path))
        return scandir(path)

    monkeypatch.setattr(rundir.os, "scandir", counting)
    for i in range(5):
        rundir.atomic_write_text(tmp_path / f"{i}.png", "x")
    assert listed == [str(tmp_path)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i}.png" for i in range(5)]


# -- loading never runs foreign code ---------------------------------------------------------------
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(tiny, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"net.x": torch.zeros(1)}, "payload": _Evil(marker)}, evil)
    with pytest.raises(pickle.UnpicklingError):  # it is a real exploit: weights_only refuses
        torch.load(evil, weights_only=True)
    err = fails(["fit", *tiny(extra=["--model.init_from", str(evil)])], capsys)
    assert "refused" in err
    assert str(evil) in err
    err = fails(["fit", *tiny(), "--ckpt_path", str(evil)], capsys)
    assert "refused" in err
    fit(tiny())
    run_dir = tiny.root / "test" / "tiny"
    err = fails(["erf", str(run_dir), "--ckpt", str(evil), "--images", "1"], capsys)
    assert "refused" in err
    assert not marker.exists()  # no code of the file ran


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on CPU is exercised on Linux")
def test_sigkill_under_ddp_then_resume_is_bit_identical(tmp_path):
    # Two processes: each one's random generators and its share of the data order come back.
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    extra = [*RANDOM, *ddp, "--data.init_args.num_train", "64"]
    whole = tiny_args(tmp_path, name="whole", epochs=2, extra=extra)
    killed = tiny_args(tmp_path, name="killed", epochs=2, extra=extra)
    assert run_process(whole) == 0
    kill = ["--trainer.callbacks+=tests.faults.kill.KillAtStep", "--trainer.callbacks.step=11"]
    assert run_process([*killed, *kill]) != 0
    assert load(tmp_path / "test" / "killed" / "checkpoints" / "last.ckpt")["global_step"] == 9
    assert run_process([*killed, "--ckpt_path", "last"]) == 0
    assert_identical_runs(tmp_path / "test" / "whole", tmp_path / "test" / "killed")
    # Every logged value, each one reduced over both processes; the interrupted epoch's
    # train/loss_epoch adds each process's saved sums to its own before the reduction.
    assert csv_rows(tmp_path / "test" / "killed") == csv_rows(tmp_path / "test" / "whole")


# -- one writer per run directory ------------------------------------------------------------------
def fit_held_at_step_2(args: list[str], release: Path, **popen: object) -> subprocess.Popen:
    """A ``fit`` process that stops after optimiser step 2 until ``release`` exists; returns
    once it is waiting there."""
    process = subprocess.Popen(
        [sys.executable, "-m", "segbench.cli", "fit", *args, "--trainer.callbacks+=tests.faults."
         "kill.WaitAtStep", "--trainer.callbacks.step=2", f"--trainer.callbacks.release={release}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, **popen,
    )  # fmt: skip
    while not Path(f"{release}.waiting").exists():
        assert process.poll() is None, "the fit died before step 2"
        time.sleep(0.1)
    return process


def test_a_second_fit_into_a_run_being_trained_is_refused_and_a_dead_holder_is_taken_over(
    tmp_path, capsys
):
    """Two processes (the test's and a fit's): while the fit trains, a second fit of the same
    run (fresh, resumed or overwriting) is refused, naming the holder, and changes nothing; once
    the holder is killed, its claim is taken over."""
    args = tiny_args(tmp_path, epochs=2, extra=["--run.checkpoint_every_n_steps", "1"])
    run = RunDir(tmp_path / "test" / "tiny")
    release = tmp_path / "release"
    holder = fit_held_at_step_2(args, release)
    try:
        config = run.config.read_text()
        for extra in ([], ["--run.overwrite", "true"], ["--ckpt_path", "last"]):
            err = fails(["fit", *args, *extra], capsys)
            assert f"run {run.path} is being written by pid {holder.pid}" in err, extra
            assert "Traceback" not in err
            assert run.config.read_text() == config  # nothing of the holder's run was touched
        holder.kill()
        holder.wait()
    finally:
        release.touch()
        if holder.poll() is None:
            holder.kill()
    fit([*args, "--run.overwrite", "true", "--trainer.max_epochs", "1"])
    assert section(run.path)["completed_epochs"] == 1


def held_at_evaluation(args: list[str], release: Path) -> subprocess.Popen:
    """A ``segbench test`` / ``predict`` process (``args``) that stops after its first batch
    until ``release`` exists; returns once it is waiting there (its stderr piped)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "segbench.cli", *args, "--trainer.callbacks+=tests.faults.kill."
         "WaitAtEvaluation", f"--trainer.callbacks.release={release}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    while not Path(f"{release}.waiting").exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.1)
    return process


@pytest.mark.parametrize("command", ["test", "predict"])
def test_a_fit_overwriting_a_run_that_a_command_is_reading_is_refused(tmp_path, capsys, command):
    """Two processes: while a ``segbench test`` (or ``predict``) of a run's best checkpoint
    runs, ``fit --run.overwrite true`` of that run is refused, naming the reader, and moves
    nothing; the reader then records into its own run. (The overwrite used to move the run aside
    under it: the test then wrote the old model's numbers into the new run's metrics.json, with
    the new best.ckpt's step, and the predictions into the new run's folder.)"""
    args = tiny_args(tmp_path)
    run = RunDir(tmp_path / "test" / "tiny")
    fit(args)
    release = tmp_path / "release"
    extra = ["--images", str(tmp_path / "images")] if command == "predict" else []
    if command == "predict":
        (tmp_path / "images").mkdir()
        for i in range(2):
            write_png(tmp_path / "images" / f"{i}.png", np.zeros((64, 64, 3), np.uint8))
    reader = held_at_evaluation([command, "--config", str(run.config), "--ckpt_path", "best",
                                 *extra], release)  # fmt: skip
    try:
        before = run.metrics_file.read_text()
        err = fails(["fit", *args, "--run.overwrite", "true"], capsys)
        assert f"run {run.path} is being read by pid {reader.pid}" in err
        assert f"cli/__main__.py {command} --config" in err, err  # the reader's command
        assert "Traceback" not in err
        assert run.metrics_file.read_text() == before  # the run was not moved
        assert not list(run.path.parent.glob(".tiny.replaced-*"))
    finally:
        release.touch()
        _, out = reader.communicate(timeout=120)
    assert reader.returncode == 0, out[-2000:]
    assert not list(run.path.parent.glob(".tiny.reader-*"))  # the reader's claim went with it
    fit([*args, "--run.overwrite", "true"])  # now that it has ended


def test_a_test_of_a_run_training_on_keeps_the_step_it_loaded(tmp_path):
    """Three processes: ``segbench test --ckpt_path last`` of a run held mid-training, which
    trains on to step 8 while the test measures. The test section keeps the step of the file it
    loaded (it read the file again when it ended, and kept step 8: the earlier model's numbers
    read as the finished run's), so a report leaves them out."""
    args = tiny_args(tmp_path, epochs=2, extra=["--run.checkpoint_every_n_steps", "1"])
    run = RunDir(tmp_path / "test" / "tiny")
    fit_release, test_release = tmp_path / "fit-release", tmp_path / "test-release"
    trainer = fit_held_at_step_2(args, fit_release)
    loaded = checkpoint_step(run.checkpoint("last"))
    try:
        tester = held_at_evaluation(
            ["test", "--config", str(run.config), "--ckpt_path", "last"], test_release
        )
        try:
            fit_release.touch()
            assert trainer.wait(timeout=120) == 0
        finally:
            test_release.touch()
            _, err = tester.communicate(timeout=120)
    finally:
        fit_release.touch()
        if trainer.poll() is None:
            trainer.kill()
    assert tester.returncode == 0, err[-2000:]
    test = section(run.path, "test")
    assert loaded is not None
    assert loaded < 8
    assert test["checkpoint_step"] == loaded
    assert f"of step {loaded}, and last.ckpt is now of step 8" in (run.changed_since(test) or "")


def test_a_fit_overwriting_a_run_that_an_analysis_tool_has_loaded_is_refused(tmp_path, capsys):
    """An analysis tool (or ``export``) that has loaded a run's checkpoint holds the run until
    it ends: its ``--record`` would otherwise land in the new run's metrics.json."""
    args = tiny_args(tmp_path)
    run = RunDir(tmp_path / "test" / "tiny")
    fit(args)
    tool = subprocess.Popen(
        [sys.executable, "-c", "from segbench.analysis.loading import load_model; import sys; "
         f"load_model([{str(run.path)!r}]); print('loaded', flush=True); sys.stdin.read()"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert tool.stdout is not None
        assert tool.stdout.readline() == "loaded\n"
        err = fails(["fit", *args, "--run.overwrite", "true"], capsys)
        assert f"run {run.path} is being read by pid {tool.pid}" in err
        assert run.has_checkpoints()
        assert not list(run.path.parent.glob(".tiny.replaced-*"))
    finally:
        tool.communicate("", timeout=60)
    fit([*args, "--run.overwrite", "true"])  # once it has ended, its claim is gone


@pytest.mark.parametrize("name", ["../../escaped", "..", "a/b", ""])
def test_a_run_name_is_one_directory_inside_the_root(tiny, name, capsys):
    err = fails(["fit", *tiny(name=name)], capsys)
    assert "run.name" in err
    assert "one directory name" in err
    assert not (tiny.root.parent / "escaped").exists()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_fit_saves_the_step_it_stopped_at_and_resumes(tmp_path, signum, code):
    """SIGTERM (kill, timeout, a scheduler) and Ctrl-C stop a fit after the step under way and
    save it there (no periodic checkpoint is due at step 2); the run is marked interrupted, exits
    128 + the signal, and resumes. (That such a save resumes bit for bit: the next test.)"""
    args = tiny_args(tmp_path, epochs=2, extra=RANDOM)
    run = RunDir(tmp_path / "test" / "tiny")
    release = tmp_path / "release"
    fit_ = fit_held_at_step_2(args, release, stderr=subprocess.PIPE, text=True)
    fit_.send_signal(signum)  # handled once the step returns
    release.touch()
    _, err = fit_.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert fit_.returncode == code, err[-2000:]
    assert f"stopped by {name} at step 2, saved there" in err
    assert "resume it with the same command and --ckpt_path last" in err
    assert load(run.checkpoint("last"))["global_step"] == 2
    assert section(run.path)["finished"] is False
    assert section(run.path, "provenance")["attempts"][-1]["interrupted"] == name
    fit([*args, "--ckpt_path", "last"])
    assert section(run.path)["finished"] is True
    attempts = section(run.path, "provenance")["attempts"]
    assert [a.get("interrupted") for a in attempts] == [name, None]


@pytest.mark.parametrize(
    ("where", "validation", "saved_at"),
    [
        # 16 images in batches of 4, 2 accumulated: 2 optimiser steps an epoch; the signal after
        # batch 0 (half a step) waits for the step's end.
        (["--trainer.callbacks.batch=0"], [], 1),
        # during epoch 0's validation (after its batch 1 of 3): the epoch's end, after 2 steps.
        (["--trainer.callbacks.val_batch=1"], [], 2),
        # after step 1, which a validation follows (every 2 batches): a resume from there would
        # skip that validation, so the next state that can be saved is taken, the epoch's end.
        (["--trainer.callbacks.batch=1"], ["--trainer.val_check_interval", "2"], 2),
    ],
    ids=["mid-accumulation", "during-validation", "before-a-validation"],
)
def test_a_stop_asked_where_the_state_cannot_be_saved_waits_for_the_next_one(
    tmp_path, where, validation, saved_at
):
    """An interrupt half-way through an accumulated step, during validation or just before one,
    stops at the end of that step or epoch, saved there (the save an interrupt makes at a step's
    end, as above), and the resume ends as an uninterrupted run does, to the last bit."""
    accumulate = ["--trainer.accumulate_grad_batches", "2", "--data.init_args.val_batch_size", "4"]
    accumulate += validation
    whole = tiny_args(tmp_path, name="whole", epochs=2, extra=accumulate)
    args = tiny_args(tmp_path, epochs=2, extra=accumulate)
    signal_ = [
        "--trainer.callbacks+=tests.faults.kill.SignalAt",
        f"--trainer.callbacks.signum={int(signal.SIGTERM)}",
        *where,
    ]
    with pytest.raises(SystemExit) as exit_:
        fit([*args, *signal_])
    assert exit_.value.code == 143
    run = RunDir(tmp_path / "test" / "tiny")
    assert load(run.checkpoint("last"))["global_step"] == saved_at
    fit([*args, "--ckpt_path", "last"])
    fit(whole)
    for key in ("val", "best_val", "global_step", "completed_epochs"):
        assert section(run.path)[key] == section(tmp_path / "test" / "whole")[key], key
    a, b = (
        load(run.checkpoint("last")),
        load(tmp_path / "test" / "whole" / "checkpoints" / "last.ckpt"),
    )
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name


# -- other commands stopped by a signal ------------------------------------------------------------
def segbench_process(argv: list[str], before: str = "") -> subprocess.CompletedProcess:
    """``segbench ARGV`` as the console script runs it (``main()`` reading ``sys.argv``), in a
    process of its own, after the Python lines ``before`` (a fault to inject)."""
    script = (
        f"import sys\n{before}\nfrom segbench.cli import main\n"
        f"sys.argv = {['segbench', *argv]!r}\nmain()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_test_stopped_by_sigterm_exits_143_and_records_nothing(tiny):
    """Lightning stops a test on SIGTERM with a SystemExit of code 0: ``segbench test`` killed
    half-way through the test split exited 0, as if it had finished. It exits 143 with one line
    saying so, run as the console script or from Python, and the run's record is as it was."""
    fit(tiny())
    run = RunDir(tiny.root / "test" / "tiny")
    record = run.metrics_file.read_bytes(), run.csv.read_bytes()
    # 6 test images in batches of 4: the signal comes after the first of two batches.
    test = ["test", "--config", str(run.config), "--ckpt_path", "best",
            "--trainer.callbacks+=tests.faults.kill.SignalAt",
            f"--trainer.callbacks.signum={int(signal.SIGTERM)}",
            "--trainer.callbacks.test_batch=0"]  # fmt: skip
    stopped = segbench_process(test)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert stopped.stderr.splitlines()[-1] == (
        "segbench test: stopped by SIGTERM before it finished; nothing partial was recorded"
    )
    assert (run.metrics_file.read_bytes(), run.csv.read_bytes()) == record
    with pytest.raises(SystemExit) as exit_:
        main(test)
    assert exit_.value.code == 143
    assert (run.metrics_file.read_bytes(), run.csv.read_bytes()) == record
    assert not list(run.path.glob(".*.tmp-*"))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_analysis_tool_stopped_mid_write_leaves_its_earlier_files_and_no_temporary_file(
    tmp_path, signum, code
):
    """An analysis tool SIGTERMed while writing its figure died at once (exit -15, no message)
    and left its three temporary files in --out for good; Ctrl-C printed a traceback. Both end
    the tool with 128 + the signal and one line; the earlier version of its files is whole."""
    out = tmp_path / "out"
    out.mkdir()
    earlier = {name: f"earlier {name}" for name in ("erf.md", "erf.json", "erf.png")}
    for name, text in earlier.items():
        (out / name).write_text(text)
    signal_mid_write = (
        "import os, signal\n"
        "from segbench.analysis import tool\n"
        "drawing_writer = tool.drawing_writer\n"
        "def dies_mid_write(*args):\n"
        "    write = drawing_writer(*args)\n"
        "    def half(f):\n"
        "        f.write(b'half a figure')\n"
        f"        os.kill(os.getpid(), {int(signum)})\n"
        "        return write(f)\n"
        "    return half\n"
        "tool.drawing_writer = dies_mid_write\n"
    )
    argv = ["erf", *tiny_args(tmp_path), "--layer", "backbone.fc7", "--images", "1", "--patch",
            "16", "--stride", "16", "--canvas", "0", "--out", str(out)]  # fmt: skip
    stopped = segbench_process(argv, before=signal_mid_write)
    name = signal.Signals(signum).name
    assert stopped.returncode == code, stopped.stderr[-2000:]
    assert stopped.stderr.splitlines()[-1] == (
        f"segbench erf: stopped by {name} before it finished; nothing partial was recorded"
    )
    assert "Traceback" not in stopped.stderr
    assert {p.name: p.read_text() for p in out.iterdir()} == earlier


def test_a_refused_resume_leaves_the_run_record_as_it_was(tiny, capsys):
    """Resuming an FCN-8s run as FCN-16s fails on the checkpoint; config.yaml (what every tool
    and the documented resume command read) still describes the run that exists."""
    args = tiny(epochs=1, extra=["--model.lr_schedule", "constant"])  # may train on
    fit(args)
    run = RunDir(tiny.root / "test" / "tiny")
    config, metrics = run.config.read_text(), run.metrics_file.read_text()
    err = fails(["fit", *args, "--ckpt_path", "last", "--trainer.max_epochs", "2",
                 "--model.net.init_args.variant", "16s"], capsys)  # fmt: skip
    assert "last.ckpt" in err
    assert run.config.read_text() == config
    assert "variant: 8s" in config
    assert json.loads(run.metrics_file.read_text())["config"] == json.loads(metrics)["config"]
    fit([*args, "--ckpt_path", "last", "--trainer.max_epochs", "2"])  # the same run resumes
    assert section(run.path)["completed_epochs"] == 2


def test_a_resume_with_other_settings_is_refused_naming_them(tiny, capsys):
    """The checkpoint's optimiser state would keep the old learning rate while the record said
    the new one: refused, nothing of the run changed. Settings that do not change the training
    (loader workers, logging, validation) may change."""
    args = tiny(epochs=2, extra=["--run.checkpoint_every_n_steps", "1"])
    kill = ["--trainer.callbacks+=tests.faults.kill.KillAtStep", "--trainer.callbacks.step=3"]
    assert run_process([*args, *kill]) == -9
    run = RunDir(tiny.root / "test" / "tiny")
    config, metrics = run.config.read_text(), run.metrics_file.read_text()
    err = fails(["fit", *args, "--ckpt_path", "last", "--model.optimizer.init_args.lr", "0.5",
                 "--seed_everything", "3"], capsys)  # fmt: skip
    assert "model.optimizer.init_args.lr 0.05 -> 0.5" in err
    assert "seed_everything 0 -> 3" in err
    assert "--model.init_from" in err
    assert run.config.read_text() == config
    assert run.metrics_file.read_text() == metrics
    fit([*args, "--ckpt_path", "last", "--data.init_args.num_workers", "1",
         "--trainer.log_every_n_steps", "5", "--run.test_after_fit", "true"])  # fmt: skip
    assert section(run.path)["finished"] is True


def csv_column(run_dir: Path, column: str) -> dict[int, str]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return {int(r["step"]): r[column] for r in csv.DictReader(f) if r.get(column)}


def test_a_resume_with_changes_applies_them_for_real_and_records_them(tiny, capsys):
    """``run.resume_with_changes``: a new learning rate and a longer poly schedule take effect
    from the checkpoint's step on, exactly as in a run that had them from the start; the
    attempt records them. The seed (the checkpoint's random state) still cannot change."""
    extra = ["--run.checkpoint_every_n_steps", "1"]
    fresh = tiny(name="fresh", epochs=3, extra=[*extra, "--model.optimizer.init_args.lr", "0.1"])
    fit(fresh)
    args = tiny(epochs=2, extra=extra)
    kill = ["--trainer.callbacks+=tests.faults.kill.KillAtStep", "--trainer.callbacks.step=5"]
    assert run_process([*args, *kill]) == -9
    run = RunDir(tiny.root / "test" / "tiny")
    changes = ["--ckpt_path", "last", "--run.resume_with_changes", "true"]
    err = fails(["fit", *args, *changes, "--seed_everything", "3"], capsys)
    assert "seed_everything 0 -> 3 cannot change" in err
    fit([*args, *changes, "--model.optimizer.init_args.lr", "0.1", "--trainer.max_epochs", "3"])
    lr, lr_fresh = (
        csv_column(run.path, "train/lr"),
        csv_column(tiny.root / "test" / "fresh", "train/lr"),
    )
    record = json.loads(run.metrics_file.read_text())
    attempt = record["provenance"]["attempts"][-1]
    assert attempt["changes"] == {
        "model.optimizer.init_args.lr": [0.05, 0.1],
        "trainer.max_epochs": [2, 3],
    }
    assert attempt["changed_at_step"] == 4  # the save before the kill (4 steps an epoch)
    assert sorted(lr) == sorted(lr_fresh) == list(range(12))
    assert all(lr[s] != lr_fresh[s] for s in range(4))  # before the resume: 0.05, 2 epochs
    assert all(lr[s] == lr_fresh[s] for s in range(4, 12))  # after: 0.1 over 3 epochs, exactly
    assert "changes" not in record["provenance"]["attempts"][0]
    assert record["config"]["model.optimizer.init_args.lr"] == 0.1
    assert "lr: 0.1" in run.config.read_text()
    assert section(run.path)["finished"] is True


def test_a_batch_size_changes_on_a_resume_only_at_an_epoch_end(tiny, capsys):
    """Lightning counts an epoch's progress in batches: a resume with another batch size in the
    middle of an epoch would skip or repeat samples, so it is refused, naming why; from the
    checkpoint of an epoch's end the change applies (2 batches of 8 an epoch from then on)."""
    extra = ["--run.checkpoint_every_n_steps", "1", "--model.lr_schedule", "constant"]
    args = tiny(epochs=3, extra=extra)
    kill = ["--trainer.callbacks+=tests.faults.kill.KillAtStep", "--trainer.callbacks.step=6"]
    assert run_process([*args, *kill]) == -9
    changes = ["--ckpt_path", "last", "--run.resume_with_changes", "true"]
    err = fails(["fit", *args, *changes, "--data.init_args.batch_size", "8"], capsys)
    assert "data.init_args.batch_size 4 -> 8 in the middle of an epoch" in err
    fit([*tiny(epochs=2, extra=extra), "--ckpt_path", "last"])  # on to the end of epoch 1
    fit([*args, *changes, "--data.init_args.batch_size", "8"])
    done = section(tiny.root / "test" / "tiny")
    assert done["finished"] is True
    assert done["global_step"] == 4 + 4 + 2  # epoch 2 in batches of 8


def test_a_finished_run_trained_on_drops_its_test_until_it_tests_again(tiny):
    """A finished, tested run resumed for more epochs (``run.resume_with_changes``) and killed
    part-way kept its old model's ``fit.test``: the report read it as the new model's number
    and the sweep counted the run as done, so it never finished. The test goes when training
    goes on; the run is ``partial`` until its own test is written again."""
    tested = ["--run.test_after_fit", "true"]
    fit(tiny(epochs=1, extra=tested))
    run = RunDir(tiny.root / "test" / "tiny")
    assert section(run.path)["test"]
    assert run.state() == "done"
    more = ["--ckpt_path", "last", "--run.resume_with_changes", "true", "--trainer.max_epochs", "2"]
    kill = ["--trainer.callbacks+=tests.faults.kill.KillAtStep", "--trainer.callbacks.step=6"]
    assert run_process([*tiny(epochs=1, extra=tested), *more, *kill]) == -9
    assert "test" not in section(run.path)
    assert "test" not in run.results()
    assert run.state() == "partial"
    fit([*tiny(epochs=2, extra=tested), "--ckpt_path", "last"])
    assert section(run.path)["test"]
    assert run.state() == "done"


def test_a_run_this_user_cannot_write_beside_is_read_without_a_claim(tmp_path, monkeypatch):
    """A reader's claim is a file beside the run; someone else's runs, or a read-only copy, have
    no room for it. An analysis tool without --record (or segbench.load) only reads: it failed
    there with 'permission denied' once readers claimed runs, and reads without a claim now."""
    import errno

    import segbench.rundir as rundir

    run = RunDir(tmp_path / "group" / "run")
    run.path.mkdir(parents=True)
    run.path.parent.chmod(0o555)
    if os.access(run.path.parent, os.W_OK):  # root: the bits do not bind; the claim is denied

        def denied(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

        monkeypatch.setattr(rundir, "file_lock", denied)
    try:
        assert run.reader() is None
    finally:
        run.path.parent.chmod(0o755)
    assert not list(tmp_path.rglob(".*reader*"))


def test_a_look_at_a_claim_does_not_refuse_the_fit_taking_it(tmp_path, monkeypatch):
    """report and export look at a run's claim (RunDir.training_by) by locking it for a moment;
    a fit claiming the run at that moment was refused as if another fit trained it. A claim
    found held is tried again before it is refused; one really held is still refused."""
    import fcntl as real

    import segbench.rundir as rundir

    run = RunDir(tmp_path / "group" / "run")
    flock, looks = real.flock, [1]

    def looked_at_once(file, op):
        if looks and op & real.LOCK_EX:
            looks.pop()
            raise BlockingIOError  # held by a look, for a moment
        return flock(file, op)

    monkeypatch.setattr(rundir.fcntl, "flock", looked_at_once)
    claim = run.writer()
    assert run.training_by() is not None
    with pytest.raises(BusyError, match="is being written by pid"):
        run.writer()
    claim.release()


def test_the_record_lock_is_taken_again_by_its_holder_and_holds_off_other_threads(tmp_path):
    """A block holding the run's record writes several files, each write taking the lock too
    (:meth:`RunDir.update`): the holder's thread takes it again at once; another thread waits."""
    run = RunDir(tmp_path)
    taken = threading.Event()

    def other() -> None:
        with run.record_lock():
            taken.set()

    with run.record_lock():
        run.write_section("validate", {"metrics": {}})  # inside: no deadlock
        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        assert not taken.wait(0.3)  # held off while this thread holds it
    thread.join(timeout=60)
    assert taken.is_set()
    assert run.section("validate") == {"metrics": {}}


def test_an_evaluation_writes_its_confusion_files_and_section_under_one_hold(tmp_path, monkeypatch):
    """Two evaluations of one stage at once (two ``segbench validate`` of a run) each wrote their
    confusion files, then their section, each under its own hold of the record: one's files
    could end beside the other's section. Both are now written under one hold."""
    from segbench.callbacks import records
    from segbench.rundir import file_lock

    main(["fit", *tiny_args(tmp_path)])
    run = RunDir(tmp_path / "test" / "tiny")
    seen: list[bool] = []
    write = records.write_confusion

    def probing(*args, **kwargs):  # is the record held while the files are written?
        with open(run.path / ".metrics.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                seen.append(True)
            else:
                fcntl.flock(f, fcntl.LOCK_UN)
                seen.append(False)
        write(*args, **kwargs)

    monkeypatch.setattr(records, "write_confusion", probing)
    main(["validate", "--config", str(run.config), "--ckpt_path", "last"])
    assert seen == [True]
    assert run.section("validate")["checkpoint"].endswith("last.ckpt")
    with file_lock(run.path / ".metrics.lock"):  # released after
        pass
