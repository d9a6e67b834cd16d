"""What a run's config is, outside the command: the ``run`` section, the links, flattening, and
the checks of config files. :func:`segbench.cli.lightning.build` builds a config's task and data
module as ``segbench fit`` parses it; ``segbench.cli`` imports this module, never the reverse.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import Namespace

from segbench.errors import ConfigError, listed


@dataclass
class RunConfig:
    """Where a run's files go, and how it appears on Weights & Biases, TensorBoard and MLflow.

    Attributes:
        name: the run's name: its directory under ``root/group`` and its W&B run name.
        group: the experiment or ablation it belongs to: W&B group and parent directory.
        tags: W&B tags (e.g. the variant and the paper); a run is also tagged
            ``data:<data module>`` (``data:CamVid``), the data it trained on.
        project: W&B project.
        root: directory under which runs are written.
        wandb: ``auto``: online if an API key is configured (``WANDB_API_KEY`` or ``wandb
            login``) and the W&B server answers within seconds, otherwise offline (files only;
            sync later with ``wandb sync``), and without W&B when it cannot write its folders
            (``WANDB_DATA_DIR``, ``WANDB_CACHE_DIR``: a home that is not writable);
            ``online``: fails at once without a key, a reachable server or its folders;
            ``offline``; ``disabled`` (no W&B logger). Never a prompt.
        overwrite: a fresh ``fit`` into a directory that already holds checkpoints fails
            unless this is true, in which case the old run is moved aside and deleted once the
            new run has started training (put back if it fails before). Resuming
            (``--ckpt_path last``) never needs it.
        test_after_fit: after ``fit``, run ``test`` with the best checkpoint in the same
            process, so ``metrics.json`` holds val and test results.
        checkpoint_every_n_steps: besides the end of every epoch, write ``last.ckpt`` every N
            optimiser steps (``null``: not by steps).
        checkpoint_every_minutes: besides the end of every epoch, write ``last.ckpt`` when this
            many minutes of training passed since the last write (``null``: not by time), so a
            crash costs minutes even when epochs are long.
        effective_batch: the effective batch (per-process batch x processes x accumulated
            batches) this recipe was made for, as the paper states it; a run whose effective
            batch differs is warned about at start (``null``: no check).
        resume_with_changes: a resume (``--ckpt_path``) whose settings differ from the run's
            recorded ones is refused, naming them, unless this is true: then the changes apply
            from the checkpoint's step on, for real. The optimiser's settings (learning rate,
            momentum, weight decay) and the learning-rate schedule are rebuilt from the new
            config as if it had held from the start (a ``poly`` schedule is laid out anew over
            new limits, so training longer trains), the momentum buffers stay the checkpoint's,
            and each resume's changes go into ``metrics.json`` (``provenance.attempts[i].changes``,
            old and new value). The network, the optimiser's class and the seed cannot change.
        study: the Optuna study file of the ``segbench tune`` this run is a trial of (set by
            ``segbench tune``, with ``trial``): each validation is reported to the trial, and
            the run stops early when the study's pruner gives up on it.
        trial: the trial's number in ``study``.
        loggers: where the run's metrics, hyperparameters and validation pictures go, any of
            ``wandb`` (in the mode of ``wandb``), ``tensorboard`` (event files in
            ``<run>/tensorboard``), ``mlflow`` (see ``mlflow_uri``) and ``csv``. The CSV run
            record (``metrics.csv``) is always written: the report and the claims read it.
            TensorBoard and MLflow need ``pip install 'segbench[loggers]'`` (``make venv``).
        mlflow_uri: MLflow's tracking URI (a server: ``http://host:5000``); ``null``: the local
            store shared by the runs under ``root`` (``sqlite:///<root>/mlflow.db``, no server;
            browse it with ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``).
    """

    name: str = "run"
    group: str = "default"
    tags: list[str] = field(default_factory=list)
    project: str = "segbench"
    root: str = "runs"
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    overwrite: bool = False
    test_after_fit: bool = False
    checkpoint_every_n_steps: int | None = None
    checkpoint_every_minutes: float | None = 10.0
    effective_batch: int | None = None
    resume_with_changes: bool = False
    study: str | None = None
    trial: int | None = None
    loggers: list[Literal["wandb", "tensorboard", "mlflow", "csv"]] = field(
        default_factory=lambda: ["wandb", "csv"]
    )
    mlflow_uri: str | None = None


#: (source, target) config keys: the data module declares its classes, the task and the network
#: receive them when instantiated. A fresh run's parsed config leaves the targets unset; a resumed
#: one has them filled from the checkpoint's hyperparameters.
LINKS = (
    ("data.num_classes", "model.num_classes"),
    ("data.num_classes", "model.net.init_args.num_classes"),
    ("data.ignore_index", "model.ignore_index"),
    ("data.class_names", "model.class_names"),
)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; leaves become JSON-friendly values."""
    if isinstance(tree, Namespace):
        tree = tree.as_dict()
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    key = prefix[:-1]
    if isinstance(tree, list | tuple):
        return {
            key: [
                v if isinstance(v, int | float | str | bool) or v is None else str(v) for v in tree
            ]
        }
    return {key: tree if isinstance(tree, int | float | str | bool) or tree is None else str(tree)}


#: The flat keys of the files and folders a run reads, given as paths: the data module's folders
#: (``data.init_args.root``, ``sbd_root``, ...) and the weights it starts from.
PATH_KEY = re.compile(r"^(data\.init_args\.(\w+_)?root|model\.init_from)$")


def absolute_path(value: Any) -> Any:
    """A path as a run records it: a relative path made absolute from the current folder (where
    the command reads it), so the run's ``config.yaml`` names the same file from any folder a
    later ``validate``, ``test`` or resume starts in. A path from the home folder (``~/data``)
    stays so, and ``None`` (a data set's environment variable) stays ``None``."""
    if (
        not isinstance(value, str)
        or not value
        or value.startswith("~")
        or Path(value).is_absolute()
    ):
        return value
    return os.path.abspath(value)


def absolute_paths(cfg: Namespace) -> None:
    """Make a command's :data:`PATH_KEY` values absolute, in place."""
    for section in ("data", "model"):
        node = cfg.get(section)
        if section == "data" and isinstance(node, Namespace):
            node = node.get("init_args")
        if not isinstance(node, Namespace):
            continue
        for key in list(node.keys()):
            flat = f"data.init_args.{key}" if section == "data" else f"model.{key}"
            if PATH_KEY.match(flat):
                node[key] = absolute_path(node[key])


def config_changes(
    recorded: dict[str, Any],
    new: dict[str, Any],
    may_change: tuple[str, ...] = (),
    *,
    one_sided: bool = False,
) -> dict[str, list[Any]]:
    """``key -> [recorded, new]`` for the keys of two flattened configs whose values differ,
    leaving out those beginning with ``may_change``. Only keys of both count, unless
    ``one_sided``: then a key of one side is a change too, ``None`` standing for the other. A
    path given relative (:data:`PATH_KEY`, in a run recorded before :func:`absolute_path`) is the
    same as that path given absolute from here."""
    keys = recorded.keys() | new.keys() if one_sided else recorded.keys() & new.keys()

    def same(key: str) -> bool:
        old, now = recorded.get(key), new.get(key)
        if PATH_KEY.match(key):  # a run recorded before paths were made absolute
            return bool(absolute_path(old) == absolute_path(now))
        return bool(old == now)

    return {
        key: [recorded.get(key), new.get(key)]
        for key in sorted(keys)
        if not same(key) and not key.startswith(may_change)
    }


def config_files(args: list[str]) -> list[str]:
    """The ``--config`` files of ``segbench fit`` arguments, in order."""
    files = []
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def locate_keys(message: str, files: tuple[str, ...], argv: tuple[str, ...] = ()) -> str:
    """Where the keys an error message names were given: the command-line arguments that set
    them (``--trainer.max_epochs abc``; they win over the files), else the ``file:line`` of the
    quoted or dotted keys in the config files."""
    quoted = re.findall(r"[\"']([A-Za-z_][\w.]*)[\"']", message)
    keys = [*quoted, *re.findall(r"--([\w.]+)", message)]
    by_name: dict[str, str] = {}  # the last argument of a key is the one that counts
    for i, arg in enumerate(argv):
        name = arg[2:].split("=", 1)[0]
        if arg.startswith("--") and any(name == k or name.startswith(k + ".") for k in keys):
            value = argv[i + 1] if "=" not in arg and i + 1 < len(argv) else ""
            by_name[name] = f"{arg} {value}" if value and not value.startswith("--") else arg
    given = list(by_name.values())
    if given:  # (not repeated where the message quotes them: "unrecognized arguments: ...")
        return "" if all(g in message for g in given) else "the command line: " + " ".join(given)
    names = {k.split(".")[-1] for k in keys}
    hits = []
    for path in files:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for n, line in enumerate(lines, 1):
            m = re.match(r"\s*([A-Za-z_]\w*)\s*:", line)
            if m and m.group(1) in names and not _is_known_section(m.group(1)):
                hits.append(f"{path}:{n} ({m.group(1)})")
    return ", ".join(hits)


def _is_known_section(key: str) -> bool:
    return key in {"model", "data", "trainer", "run", "init_args", "class_path", "net"}


def check_yaml_files(args: list[str]) -> None:
    """Every ``--config`` file exists and is valid YAML (jsonargparse would not name it)."""
    for path in config_files(args):
        if Path(path).is_dir():
            found = sorted(str(p) for p in Path(path).rglob("*.yaml"))
            raise ConfigError(
                f"--config {path}: a folder, not a config file"
                + (f" (its YAML files: {listed(found, 4)})" if found else "")
            )
        if not Path(path).is_file():
            raise ConfigError(f"--config {path}: no such file")
        try:
            content = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
        if not isinstance(content, dict):
            what = "empty" if content is None else f"a {type(content).__name__}"
            raise ConfigError(
                f"{path}: {what}, not a config: a config file maps sections to their keys "
                "(model:, data:, trainer:, run:, ...)"
            )
