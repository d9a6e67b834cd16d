"""How ``segbench sweep`` runs its fits: one after the other, N at once, or as SLURM jobs.

:mod:`.base`: the contract and the slots shared by all; :mod:`.local`: child processes here;
:mod:`.slurm`: SLURM through submitit.

The sweep plans its runs (finished ones skipped, interrupted ones resumed with ``--ckpt_path
last``) and hands the list of ``segbench fit`` commands to a launcher; the launcher only executes
them and says which failed. Three launchers, one contract:

* :class:`ProcessLauncher` (``--launcher subprocess``, the default): ``--jobs N`` fits at once as
  child processes on this machine. ``--jobs 1`` is the plain sequential loop, its output on the
  terminal. With ``N > 1`` each fit writes to ``<root>/<group>/logs/<run>.log`` and the sweep
  prints one line per start and finish. Each concurrent job gets a *slot*: its own
  ``CUDA_VISIBLE_DEVICES`` (``--devices_per_job D``: D device ids each, out of the visible ones)
  and its share of the CPU threads (``OMP_NUM_THREADS`` = cores // N, which torch reads at start),
  so N jobs neither share a GPU nor oversubscribe the cores.
* :class:`SubmititLauncher` (``--launcher slurm``): the same fits as SLURM jobs through submitit,
  a job array by default (``--slurm_array_parallelism`` at once), one job per run with
  ``--slurm_no_array``. Each SLURM task runs :class:`FitJob`, which runs the fit as a child process
  that inherits the task's environment, so Lightning's ``SLURMEnvironment`` finds ``SLURM_NTASKS``,
  ``SLURM_PROCID``, ``SLURM_LOCALID`` and the node list: a multi-node DDP run is ``--slurm_nodes
  M --slurm_gpus_per_node G`` (G tasks per node, ``--trainer.num_nodes M --trainer.devices G``).
  A job that reaches its time limit is requeued by submitit and resumes from ``last.ckpt``.
* ``--launcher local`` / ``debug``: submitit's ``LocalExecutor`` (each fit a job on this machine,
  ``--jobs`` at once) and ``DebugExecutor`` (in the sweep's process, one at a time): the SLURM
  path rehearsed where there is no SLURM.

The log files stay outside the run directories because a fresh ``fit --run.overwrite true``
moves an existing run directory aside, and a log file in it would go with it.
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import Namespace

from segbench.errors import ConfigError
from segbench.options import CommandParser, positive_int
from segbench.study.launchers.base import LAUNCHERS, Launcher, device_fit_args, slot_envs
from segbench.study.launchers.local import ProcessLauncher
from segbench.study.launchers.slurm import (
    SubmititLauncher,
    import_submitit,
    slurm_fit_args,
    slurm_parameters,
)

__all__ = ["add_launcher_options", "make_launcher"]


def add_launcher_options(parser: CommandParser) -> None:
    run = parser.add_argument_group("how the runs are launched (segbench.study.launchers)")
    run.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="subprocess",
        help="subprocess: child processes here (default); slurm: SLURM jobs via submitit; "
        "local/debug: submitit's local executor / in-process debug executor (rehearsals)",
        type=str,
    )
    run.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="runs at once on this machine (subprocess, local); each logs to "
        "ROOT/GROUP/logs/<run>.log and gets cores/JOBS CPU threads",
    )
    run.add_argument(
        "--devices_per_job",
        type=positive_int,
        help="GPUs per run: each concurrent run gets its own CUDA_VISIBLE_DEVICES and "
        "--trainer.devices N",
    )
    run.add_argument(
        "--devices",
        nargs="+",
        help="the GPU ids shared out (default: CUDA_VISIBLE_DEVICES, else all)",
        type=str,
    )
    run.add_argument(
        "--no_wait",
        action="store_true",
        help="slurm: submit and return; the same command later skips the finished runs, "
        "does not resubmit queued ones, and writes the report once all are done",
    )
    slurm = parser.add_argument_group("SLURM (--launcher slurm; pip install 'segbench[slurm]')")
    slurm.add_argument("--slurm_partition", type=str)
    slurm.add_argument(
        "--slurm_time", type=positive_int, default=60, help="minutes per job (local too)"
    )
    slurm.add_argument("--slurm_nodes", type=positive_int, default=1, help="nodes per run (DDP)")
    slurm.add_argument(
        "--slurm_gpus_per_node",
        type=int,
        default=0,
        help="GPUs per node, one DDP task each (0: a CPU job)",
    )
    slurm.add_argument("--slurm_cpus_per_task", type=positive_int)
    slurm.add_argument("--slurm_mem_gb", type=float)
    slurm.add_argument(
        "--slurm_array_parallelism",
        type=positive_int,
        help="runs of the job array at once (default: SLURM's limit)",
    )
    slurm.add_argument(
        "--slurm_no_array", action="store_true", help="one sbatch job per run, not an array"
    )
    slurm.add_argument("--slurm_account", type=str)
    slurm.add_argument("--slurm_qos", type=str)
    slurm.add_argument(
        "--slurm_setup",
        nargs="+",
        help="shell lines run before each job (e.g. 'module load cuda/12.1')",
        type=str,
    )


def make_launcher(args: Namespace, group: str) -> Launcher:
    """The launcher the options ask for (checked before anything runs)."""
    group_dir = Path(args.root) / group
    if args.no_wait and args.launcher != "slurm":
        raise ConfigError("--no_wait is for --launcher slurm (other launchers run here)")
    if args.launcher == "subprocess":
        return ProcessLauncher(
            jobs=args.jobs,
            slots=slot_envs(
                jobs=args.jobs, devices_per_job=args.devices_per_job, devices=args.devices
            ),
            log_dir=group_dir / "logs",
            fit_args=device_fit_args(args.devices_per_job),
        )
    import_submitit()
    folder = group_dir / "submitit"
    if args.launcher == "slurm":
        if args.devices_per_job or args.devices:
            raise ConfigError(
                "--devices_per_job/--devices are for runs on this machine; on SLURM give "
                "--slurm_gpus_per_node (and --slurm_nodes)"
            )
        params = slurm_parameters(
            job_name=f"segbench-{group}",
            partition=args.slurm_partition,
            time_min=args.slurm_time,
            nodes=args.slurm_nodes,
            gpus_per_node=args.slurm_gpus_per_node,
            cpus_per_task=args.slurm_cpus_per_task,
            mem_gb=args.slurm_mem_gb,
            array_parallelism=args.slurm_array_parallelism,
            account=args.slurm_account,
            qos=args.slurm_qos,
            setup=args.slurm_setup,
        )
        return SubmititLauncher(
            cluster="slurm",
            folder=folder,
            slurm=params,
            array=not args.slurm_no_array,
            wait=not args.no_wait,
            fit_args=slurm_fit_args(nodes=args.slurm_nodes, gpus_per_node=args.slurm_gpus_per_node),
        )
    jobs = 1 if args.launcher == "debug" else args.jobs
    return SubmititLauncher(
        cluster=args.launcher,
        folder=folder,
        jobs=jobs,
        slots=slot_envs(jobs=jobs, devices_per_job=args.devices_per_job, devices=args.devices),
        time_min=args.slurm_time,
        fit_args=device_fit_args(args.devices_per_job),
    )
