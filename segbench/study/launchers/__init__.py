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
