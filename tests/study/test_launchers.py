"""segbench sweep's launchers: N runs at once here for real, submitit's local executor for the
SLURM path, and the pure parts (device slots, threads, sbatch parameters) on their own."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segbench.errors import ConfigError, SegbenchError
from segbench.rundir import RunDir
from segbench.study.ablation import metric_problem
from segbench.study.launchers.base import device_slots, slot_envs, threads_per_job, visible_devices
from segbench.study.launchers.slurm import (
    import_submitit,
    resume_command,
    sbatch_script,
    slurm_fit_args,
    slurm_parameters,
    still_queued,
)
from tests.helpers import REPO, segbench_in_process, segbench_log, sweep_command, wait_at_step

GROUP = "par"
RUNS = ["fcn32s-s0", "fcn32s-s1", "fcn8s-s0", "fcn8s-s1"]


# -- pure parts --------------------------------------------------------------------------------
def test_each_concurrent_job_gets_its_own_devices():
    assert device_slots(["0", "1", "2", "3"], jobs=2, devices_per_job=2) == ["0,1", "2,3"]
    assert device_slots(["4", "6", "7"], jobs=3, devices_per_job=1) == ["4", "6", "7"]
    envs = slot_envs(jobs=2, devices_per_job=2, environ={}, cores=8, cuda_count=lambda: 4)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0,1", "2,3"]
    assert all(e["OMP_NUM_THREADS"] == "4" for e in envs)
    with pytest.raises(ConfigError, match="--devices_per_job 3: only 2 devices visible"):
        device_slots(["0", "1"], jobs=1, devices_per_job=3)
    with pytest.raises(ConfigError, match="--jobs 3 x --devices_per_job 2 needs 6 devices"):
        device_slots(["0", "1", "2", "3"], jobs=3, devices_per_job=2)


def test_visible_devices_come_from_the_option_then_the_environment_then_torch():
    env = {"CUDA_VISIBLE_DEVICES": "2,5"}
    assert visible_devices(["1", "3"], env, lambda: 8) == ["1", "3"]
    assert visible_devices(None, env, lambda: 8) == ["2", "5"]
    assert visible_devices(None, {}, lambda: 3) == ["0", "1", "2"]
    assert visible_devices(None, {"CUDA_VISIBLE_DEVICES": ""}, lambda: 3) == []


def test_cpu_threads_are_shared_out_between_concurrent_jobs():
    assert threads_per_job(1, 16, {}) is None  # one job: torch's own default
    assert threads_per_job(2, 16, {}) == 8
    assert threads_per_job(3, 2, {}) == 1  # never 0
    assert threads_per_job(2, 16, {"OMP_NUM_THREADS": "3"}) is None  # the user's choice stands
    envs = slot_envs(jobs=2, devices_per_job=None, environ={}, cores=2)
    assert envs == [{"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}] * 2


def test_sbatch_parameters_and_the_fit_layout_follow_the_options(tmp_path):
    params = slurm_parameters(
        job_name="segbench-g",
        partition="gpu",
        time_min=240,
        nodes=2,
        gpus_per_node=4,
        cpus_per_task=8,
        mem_gb=64,
        array_parallelism=3,
        account="lab",
        qos=None,
        setup=["module load cuda/12.1"],
    )
    assert params == {
        "job_name": "segbench-g",
        "time": 240,
        "nodes": 2,
        "ntasks_per_node": 4,  # one DDP process per GPU, as Lightning's SLURMEnvironment expects
        "signal_delay_s": 120,
        "partition": "gpu",
        "gpus_per_node": 4,
        "cpus_per_task": 8,
        "mem": "64GB",
        "array_parallelism": 3,
        "account": "lab",
        "setup": ["module load cuda/12.1"],
    }
    fit = slurm_fit_args(nodes=2, gpus_per_node=4)
    assert fit == [
        "--trainer.accelerator",
        "gpu",
        "--trainer.devices",
        "4",
        "--trainer.num_nodes",
        "2",
    ]
    cpu = slurm_parameters(**_cpu_kwargs())
    assert cpu["ntasks_per_node"] == 1
    assert "gpus_per_node" not in cpu
    folder = tmp_path / "my jobs é"  # the job's command quotes the folder, as submitit does
    script = sbatch_script(params, folder, count=5)
    (command,) = [line for line in script.splitlines() if "submitit.core._submit" in line]
    assert shlex.split(command)[-1] == f"{folder}/%j"
    for line in (
        "#SBATCH --array=0-4%3",
        "#SBATCH --partition=gpu",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --time=240",
        "#SBATCH --account=lab",
        "module load cuda/12.1",
    ):
        assert line in script
    assert "srun" in script
    with pytest.raises(ConfigError, match="--slurm_time"):
        slurm_parameters(**{**_cpu_kwargs(), "time_min": 0})


def _cpu_kwargs() -> dict:
    return dict(
        job_name="g",
        partition=None,
        time_min=30,
        nodes=1,
        gpus_per_node=0,
        cpus_per_task=None,
        mem_gb=None,
        array_parallelism=None,
        account=None,
        qos=None,
        setup=None,
    )


def test_a_requeued_fit_resumes_and_queued_runs_are_not_submitted_twice(tmp_path):
    cmd = ["python", "-m", "segbench.cli", "fit", "--run.overwrite", "true", "--x", "1"]
    resumed = ["python", "-m", "segbench.cli", "fit", "--ckpt_path", "last", "--x", "1"]
    assert resume_command(cmd) == resumed
    folder = tmp_path / "submitit"
    assert still_queued(folder, ["a-s0"]) == {}  # nothing submitted: no SLURM query
    folder.mkdir()
    (folder / "submitted.json").write_text(
        json.dumps({n: {"job_id": j} for n, j in [("a-s0", "11"), ("a-s1", "12"), ("b-s0", "13")]})
    )
    states = {"11": "RUNNING", "12": "COMPLETED", "13": "PENDING"}
    assert still_queued(folder, ["a-s0", "a-s1", "b-s0", "c-s0"], states.get) == {
        "a-s0": "job 11 RUNNING",
        "b-s0": "job 13 PENDING",
    }


def test_without_submitit_the_slurm_launcher_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'segbench\[slurm\]'"):
        import_submitit()


def test_bad_launcher_options_are_named(tmp_path):
    from segbench.study import sweep

    variant = tmp_path / "v.yaml"
    variant.write_text("{}\n")
    base = ["--group", "g", "--variants", str(variant), "--root", str(tmp_path), "--dry-run"]
    with pytest.raises(ConfigError, match="--no_wait is for --launcher slurm"):
        sweep.main([*base, "--no_wait"])
    with pytest.raises(ConfigError, match="--devices_per_job 2: only 1 devices visible"):
        sweep.main([*base, "--devices_per_job", "2", "--devices", "0"])
    with pytest.raises(SystemExit):
        sweep.main([*base, "--jobs", "0"])


def test_dry_run_prints_the_sbatch_file_for_the_slurm_launcher(tmp_path):
    from segbench.study import sweep

    variant = tmp_path / "v.yaml"
    variant.write_text("{}\n")
    with segbench_log() as lines:
        sweep.main(
            [
                *("--group", "g", "--variants", str(variant), "--seeds", "0", "1"),
                *("--base", str(REPO / "experiments" / "quickstart.yaml")),
                *("--root", str(tmp_path), "--launcher", "slurm", "--slurm_partition", "gpu"),
                *("--slurm_gpus_per_node", "2", "--slurm_nodes", "2", "--dry-run"),
            ]
        )
    text = "\n".join(lines)
    assert "#SBATCH --array=0-1%2" in text
    assert "#SBATCH --partition=gpu" in text
    fits = [line for line in lines if " fit " in line]
    assert len(fits) == 2
    assert all("--trainer.devices 2 --trainer.num_nodes 2" in f for f in fits)
    assert not (tmp_path / "g").exists()  # nothing submitted, nothing written


# -- for real: tiny fits -----------------------------------------------------------------------
def _sweep(tmp: Path, *options: str) -> subprocess.CompletedProcess[str]:
    cmd = sweep_command(tmp, GROUP, *options, seeds=("0", "1"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env=env, timeout=600)


def _span(run: Path) -> tuple[float, float]:
    """When the launcher started the run's process and when it exited, from the run's log (a
    tiny fit lasts about as long as its process takes to import torch and lightning, so the
    fits' own clocks can miss an overlap of the processes under load)."""
    text = (run.parent / "logs" / f"{run.name}.log").read_text()
    start = re.search(r"^== (\S+) start", text, re.MULTILINE).group(1)
    took = float(re.search(r"^== \S+ exit 0 after ([\d.]+) s", text, re.MULTILINE).group(1))
    begun = time.mktime(time.strptime(start, "%Y-%m-%dT%H:%M:%S"))
    return begun, begun + took


@pytest.fixture(scope="module")
def parallel_grid(tmp_path_factory):
    """Four tiny runs, two at a time."""
    tmp = tmp_path_factory.mktemp("sweep-jobs")
    first = _sweep(tmp, "--jobs", "2")
    spans = {
        n: _span(tmp / "runs" / GROUP / n) for n in RUNS if (tmp / "runs" / GROUP / n).exists()
    }
    return tmp, first, spans


@pytest.mark.xdist_group("parallel_grid")  # its fixture: once
def test_two_runs_at_once_all_finish_really_overlap_and_are_skipped_after(parallel_grid):
    tmp, first, spans = parallel_grid
    assert first.returncode == 0, first.stderr[-3000:]
    for name in RUNS:
        assert RunDir(tmp / "runs" / GROUP / name).state() == "done"
        log_text = (tmp / "runs" / GROUP / "logs" / f"{name}.log").read_text()
        assert "== " in log_text
        assert "exit 0" in log_text
    assert "| fcn32s | 32s | 2 |" in (tmp / "results" / f"{GROUP}.md").read_text()
    # Every number a run reports is a name an ablation's claim may use (what load checks).
    numbers = RunDir(tmp / "runs" / GROUP / "fcn8s-s0").results()
    assert {"test/bIoU", "test/ECE", "val/mIoU", "params"} <= set(numbers)
    assert [m for m in numbers if metric_problem(m)] == []
    # One line per start and finish, with progress, and no fit output on the sweep's stderr.
    assert first.stderr.count(": starting (OMP_NUM_THREADS=") == 4
    assert first.stderr.count(": finished in ") == 4
    assert "4/4 launched runs ended" in first.stderr
    assert "Epoch" not in first.stderr
    assert "test/mIoU" not in first.stderr
    # Parallel for real: by the fits' own clocks, runs overlapped, and never more than two.
    overlapping = [
        (a, b)
        for a in RUNS
        for b in RUNS
        if a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]
    ]
    assert overlapping
    for name in RUNS:
        start = spans[name][0]
        active = [o for o in RUNS if o != name and spans[o][0] <= start < spans[o][1] - 1]
        assert len(active) <= 1, (name, spans)

    again = segbench_in_process(sweep_command(tmp, GROUP, "--jobs", "2", seeds=("0", "1")))
    assert again.count("done, skipped") == 4
    assert "starting" not in again
    assert "resuming" not in again


@pytest.mark.xdist_group("parallel_grid")  # its fixture: once
def test_submitit_local_executor_resumes_a_partial_run_and_starts_a_new_one(parallel_grid):
    """The SLURM path (submitit) rehearsed with its local executor, on the same grid: one run
    made partial (its test after fit lost, its last checkpoint kept), one removed."""
    import shutil

    tmp, first, _ = parallel_grid
    assert first.returncode == 0, first.stderr[-3000:]
    runs = tmp / "runs" / GROUP
    partial = RunDir(runs / "fcn8s-s1")
    partial.update(lambda d: d["fit"].pop("test"))
    assert partial.state() == "partial"
    shutil.rmtree(runs / "fcn32s-s1")

    cmd = sweep_command(tmp, GROUP, "--launcher", "local", "--jobs", "2", "--slurm_time", "10",
                        seeds=("0", "1"))  # fmt: skip
    result = segbench_in_process(cmd)
    assert "[4/4] par/fcn8s-s1: resuming as local job" in result
    assert "[2/4] par/fcn32s-s1: submitted as local job" in result
    assert result.count("done, skipped") == 2
    for name in RUNS:
        assert RunDir(runs / name).state() == "done"
    assert (runs / "submitit").is_dir()
    assert "| fcn8s | 8s | 2 |" in (tmp / "results" / f"{GROUP}.md").read_text()


def test_a_terminated_sweep_stops_the_fits_it_started(tmp_path):
    """``kill`` (SIGTERM) on a sweep of parallel jobs ends its children too, as Ctrl-C does."""
    child = (
        "import os, pathlib, time; "
        f"pathlib.Path(r'{tmp_path}', f'pid-{{os.getpid()}}').touch(); time.sleep(120)"
    )
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from segbench.study.launchers.base import PlannedRun\n"
        "from segbench.study.launchers.local import ProcessLauncher\n"
        f"cmd = [sys.executable, '-c', {child!r}]\n"
        f"runs = [PlannedRun(f'r{{i}}', Path(r'{tmp_path}'), cmd, False, i, 3, 'g')"
        " for i in (1, 2, 3)]\n"
        f"ProcessLauncher(jobs=2, slots=[{{}}, {{}}], log_dir=Path(r'{tmp_path}'), poll_s=0.1)"
        ".launch(runs)\n"
    )
    sweep = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("pid-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = [int(p.name.split("-")[1]) for p in tmp_path.glob("pid-*")]
    assert len(pids) == 2  # two at once, the third waiting
    sweep.terminate()
    _, err = sweep.communicate(timeout=60)
    assert sweep.returncode != 0
    assert "KeyboardInterrupt" in err
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert len(list(tmp_path.glob("pid-*"))) == 2  # the third never started


def test_an_ablation_sweep_runs_only_the_variants_named(tmp_path, capsys):
    from segbench.study import sweep

    args = ["--ablation", "degridding", "--seeds", "0", "--root", str(tmp_path), "--dry-run"]
    with segbench_log() as lines:
        sweep.main([*args, "--variants", "step3_drn_c", "step0_drn_a"])
    text = "\n".join(lines)
    assert "step3_drn_c-s0" in text
    assert "step0_drn_a-s0" in text
    assert "step2_drn_b" not in text
    assert "step4_drn_d" not in text
    with pytest.raises(SystemExit):
        sweep.main([*args, "--variants", "step3_drn_x"])
    assert "--variants step3_drn_x: not in" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's prctl")
def test_a_sweep_killed_with_sigkill_takes_its_fits_with_it(tmp_path):
    """kill -9 of the sweep: its fit gets SIGTERM (it would otherwise run on, orphaned, beside
    the next sweep's), stops with its last checkpoint and lets go of its run."""
    import signal

    from segbench.rundir import WriterLock

    cmd, env, release = _waiting_sweep(tmp_path, "orphans")
    sweep = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    fit_pid = wait_at_step(release, sweep)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    release.touch()  # the fit goes on from step 2, sees the SIGTERM and stops
    run = tmp_path / "runs" / "orphans" / "fcn32s-s0"
    deadline = time.monotonic() + 120
    while True:
        try:
            WriterLock(run.with_name(f".{run.name}.writer"), "run").acquire().release()
            break
        except SegbenchError:
            assert time.monotonic() < deadline, "the orphaned fit still holds its run"
            time.sleep(0.2)
    assert _ends_within(fit_pid, 10.0)  # gone, not only unlocked
    assert json.loads((run / "metrics.json").read_text())["fit"]["finished"] is False


def _waiting_sweep(tmp_path: Path, group: str) -> tuple[list[str], dict[str, str], Path]:
    """``(command, environment, release file)`` of a sweep of FCN-32s (one run) whose fit waits
    after step 2 until the release file exists."""
    release = tmp_path / "release"
    cmd = sweep_command(tmp_path, group, variants=("32s",))
    cmd += ["--trainer.callbacks+=tests.faults.kill.WaitAtStep", "--trainer.callbacks.step=2",
            f"--trainer.callbacks.release={release}"]  # fmt: skip
    return cmd, {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}, release


def _ends_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` has ended (or ends within ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_the_same_sweep_started_twice_runs_once(tmp_path, capsys, monkeypatch):
    """Two sweeps of one group (a process, then this one): the second is refused at once,
    naming the first (its pid), while the first trains; the first finishes its run alone."""
    cmd, env, release = _waiting_sweep(tmp_path, "twice")
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_at_step(release, first)
        monkeypatch.chdir(tmp_path)
        capsys.readouterr()
        with segbench_log() as lines, pytest.raises(SystemExit) as second:
            segbench_in_process(cmd)
        assert second.value.code == 1
        assert len(lines) == 1
        assert f"is being written by pid {first.pid}" in lines[0]
        assert "usage:" not in capsys.readouterr().err
        release.touch()
        assert first.wait(timeout=600) == 0
    finally:
        release.touch()
        if first.poll() is None:
            first.kill()
    runs = sorted(p.parent.name for p in (tmp_path / "runs" / "twice").glob("*/metrics.json"))
    assert runs == ["fcn32s-s0"]
