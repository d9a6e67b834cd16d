"""The skeleton every analysis tool shares: what to measure, where to write, what to record.

A tool (``segbench erf``, ``feature-norms``, ``gridding``, ``ld-masks``, ``upper-bound``) is a
:class:`Tool` subclass that keeps only its measurement: typed options (a dataclass) and
:meth:`Tool.measure`, which turns one loaded model into a :class:`Result`. Everything else is
here, the same for every tool::

    segbench TOOL [RUN_DIR ...] [--config FILE.yaml [segbench fit overrides]] [options]

* **The models.** Run directories, given positionally: each run's ``config.yaml`` is parsed and
  its checkpoint ``--ckpt`` (``best``, ``last`` or a ``.ckpt`` path; a missing one is an error,
  never a fallback) loaded strictly; ``segbench fit`` overrides that follow apply to every run.
  Or ``segbench fit`` arguments alone (``--config FILE.yaml [--model.net.init_args.width 0.25]``)
  for one freshly initialised model.
* **The data.** Images and labels come from ``--split`` (default ``val``) of the model's data
  module, unaugmented.
* **The output.** The markdown table on stdout; ``--out DIR`` also writes ``DIR/TOOL.md``,
  ``DIR/TOOL.json`` and the figure ``DIR/TOOL.png`` (``DIR/TOOL_<model>.png`` per model when
  there are several), as one version: a rerun removes the earlier figures it does not write
  again (a model not measured this time). Figures are drawn by :meth:`Result.plot` on a figure
  it is given, so a notebook draws the same figure inline:
  ``fig = plt.figure(); result.plot(fig)``.
* **The record.** ``--record`` stores :meth:`Result.summary` in each run's ``metrics.json``
  (``records`` section, with the checkpoint measured), where ``segbench report --metrics``
  reads it as a column.

Options are parsed by jsonargparse, as training's are: the same ``--help``, type checks and
errors naming an unknown key. A list option takes ``--dims [16,32]`` or ``--dims 16 32``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    BinaryIO,
    ClassVar,
    Generic,
    Protocol,
    TypeVar,
    get_args,
    get_origin,
)

from segbench.analysis.loading import LoadedModel, load_model
from segbench.config import config_files
from segbench.data.base import Split
from segbench.errors import ConfigError
from segbench.options import (
    CommandParser,
    OptionKind,
    command_parser,
    option_keys,
    options_of,
    record_options,
    split_argv,
)
from segbench.rundir import RunDir, atomic_write_files, json_writer, text_writer
from segbench.visualize import drawing_writer

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import nn

log = logging.getLogger("segbench")


class NotApplicableError(ConfigError):
    """The tool measures something this model does not have (e.g. ``ld-masks`` on a network
    without GALD's local distribution)."""


class Result(Protocol):
    """What a tool's measurement of one model gives."""

    def markdown(self) -> str:
        """The table (or text) printed and written to ``TOOL.md``."""

    def to_json(self) -> dict[str, Any]:
        """Everything measured, as JSON-able values, for ``TOOL.json``."""

    def summary(self) -> dict[str, float]:
        """The headline numbers ``--record`` stores in the run (flat, ``tool/name`` keys)."""

    def plot(self, fig: Figure) -> None:
        """Draw the result on ``fig`` (sizing it as it needs; never choosing a backend)."""


@dataclass
class Common:
    """Options every analysis tool takes.

    Args:
        ckpt: checkpoint of the run directories: best (default), last or a path to a .ckpt
            file (a missing one is an error, never a fallback)
        split: the split whose images and labels are measured
        out: directory for TOOL.md, TOOL.json and TOOL.png (TOOL_<model>.png per model when
            there are several); without it, only the table on stdout
        record: store the tool's summary in each run's metrics.json (needs run directories)
    """

    ckpt: str | None = None
    split: Split = "val"
    out: Path | None = None
    record: bool = False


OptionsT = TypeVar("OptionsT")
ResultT = TypeVar("ResultT", bound=Result)


class Tool(ABC, Generic[OptionsT, ResultT]):
    """An analysis tool: its name, its options and its measurement of one model."""

    #: The ``segbench`` sub-command, e.g. ``"ld-masks"``; also the stem of its output files.
    name: ClassVar[str]
    #: The tool's own options: a dataclass whose docstring's ``Args:`` section is the help; the
    #: first type argument of ``Tool[...]`` in the class statement (set by ``__init_subclass__``).
    Options: ClassVar[type]
    #: ``False`` for a tool that only reads the data (the network is built on the meta device).
    uses_network: ClassVar[bool] = True
    #: Options small enough for the test that runs every tool on every architecture on a CPU.
    test_options: ClassVar[tuple[str, ...]] = ()
    #: The prefix of the numbers its ``--record`` stores (``erf/empirical_fraction``), which
    #: ablations' claims and reports may name; default: :attr:`name` with ``_`` for ``-``.
    record_prefix: ClassVar[str]
    #: Figure size (inches) of one model's figure.
    figsize: ClassVar[tuple[float, float]] = (8.0, 4.0)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is Tool:
                cls.Options = get_args(base)[0]
        if "name" in cls.__dict__ and "record_prefix" not in cls.__dict__:
            cls.record_prefix = cls.name.replace("-", "_")

    def __init__(self, description: str | None = None) -> None:
        self.description = description or (type(self).__doc__ or "")

    def validate(self, options: OptionsT, common: Common) -> None:
        """Reject option values that cannot work, before any model is loaded."""

    def not_applicable(self, net: nn.Module) -> str | None:
        """Why this tool cannot measure ``net`` (a part it lacks), or ``None``: it can."""
        return None

    @abstractmethod
    def measure(self, model: LoadedModel, options: OptionsT, common: Common) -> ResultT:
        """Measure one model (in eval mode, on the CPU)."""

    def plot_together(self, results: Sequence[tuple[str, ResultT]], fig: Figure) -> None:
        """A figure of all the models (written as ``TOOL.png`` when there are several), for a
        tool that compares them; by default there is none."""
        raise NotImplementedError

    def report(self, results: Sequence[tuple[str, ResultT]]) -> str:
        """The markdown of several models' results; one section per model unless a tool
        tabulates them together."""
        if len(results) == 1:
            return results[0][1].markdown()
        return "\n".join(f"### {name}\n\n{result.markdown()}" for name, result in results)

    # -- the command ------------------------------------------------------------------------
    def parser(self) -> CommandParser:
        parser = command_parser(
            f"segbench {self.name}",
            self.description,
            usage=f"segbench {self.name} [RUN_DIR ...] [--config FILE.yaml [segbench fit "
            "overrides]] [options]",
        )
        parser.add_class_arguments(Common, nested_key=None, as_group=True)
        parser.add_class_arguments(self.Options, nested_key=None, as_group=True)
        return parser

    def keys(self) -> dict[str, OptionKind]:
        """The tool's option names, each with its kind: a flag (a bool), a list or a value."""
        return option_keys(Common, self.Options)

    def main(self, argv: list[str]) -> list[tuple[str, ResultT]]:
        """``segbench TOOL ...``: parse, load each model, measure, print, write, record."""
        runs, tool_args, fit_args = split_argv(argv, self.keys())
        parser = self.parser()
        ns = parser.parse_args(tool_args)
        common = options_of(Common, ns)
        options: OptionsT = options_of(self.Options, ns)
        if not runs and not fit_args:
            parser.error("give run directories or a config: --config FILE.yaml")
        if common.record and not runs:
            parser.error("--record stores into run directories: give one or more")
        self.validate(options, common)
        sources = [[run, *fit_args] for run in runs] if runs else [fit_args]
        results: list[tuple[str, ResultT]] = []
        for args in sources:
            model = load_model(args, ckpt=common.ckpt, network=self.uses_network)
            name = model.label = model_name(model, args)
            reason = self.not_applicable(model.net) if self.uses_network else None
            if reason:
                raise NotApplicableError(f"segbench {self.name} on {model.name}: {reason}")
            log.info("%s: measuring %s", self.name, model.name)
            result = self.measure(model, options, common)
            results.append((name, result))
            if common.record and model.run_dir is not None:
                RunDir(model.run_dir).record(
                    self.name,
                    result.summary(),
                    checkpoint=model.checkpoint,
                    step=model.checkpoint_step,
                    options=record_options(argv, runs),
                )
                log.info("%s: recorded in %s", self.name, model.run_dir / "metrics.json")
        text = self.report(results)
        if common.out is not None:
            self.write(results, text, common.out)
        sys.stdout.write(text)
        return results

    def write(self, results: Sequence[tuple[str, ResultT]], text: str, out: Path) -> None:
        """``TOOL.md``, ``TOOL.json`` and the figures, as one version
        (:func:`segbench.rundir.atomic_write_files`): a kill leaves the earlier set or part of
        this one, never an earlier figure beside this table. The figures of the earlier version
        that this one has not (``TOOL_<model>.png`` of a model not measured this time) are
        removed with it; other files in ``out`` are left alone."""
        writes: dict[Path, Callable[[BinaryIO], object] | None] = {
            out / f"{self.name}.md": text_writer(text),
            out / f"{self.name}.json": json_writer({n: r.to_json() for n, r in results}),
        }
        for name, result in results:
            writes[self.figure(out, name, len(results))] = drawing_writer(result.plot, self.figsize)
        if len(results) > 1 and type(self).plot_together is not Tool.plot_together:
            writes[out / f"{self.name}.png"] = drawing_writer(
                partial(self.plot_together, results), self.figsize
            )
        for earlier in self.figures_written(out):
            writes.setdefault(earlier, None)  # not in this version: removed
        atomic_write_files(writes)
        log.info("%s: wrote %s/%s.{md,json,png}", self.name, out, self.name)

    def figure(self, out: Path, model: str, models: int) -> Path:
        """The figure of ``model`` in ``out``, when a version holds ``models`` models:
        ``TOOL.png`` for one, ``TOOL_<model>.png`` for each of several."""
        return out / (f"{self.name}.png" if models == 1 else f"{self.name}_{safe_name(model)}.png")

    def figures_written(self, out: Path) -> list[Path]:
        """The figures the version of this tool's files in ``out`` may have: ``TOOL.png``, and one
        per model its ``TOOL.json`` names (the models it measured)."""
        try:
            models = json.loads((out / f"{self.name}.json").read_text())
        except (OSError, ValueError):
            models = {}
        names = list(models) if isinstance(models, dict) else []
        return [out / f"{self.name}.png", *(self.figure(out, n, len(names)) for n in names)]


def model_name(model: LoadedModel, args: Sequence[str]) -> str:
    """A model's label in tables and file names: its run's name, else its last config's stem,
    else its class."""
    if model.run_dir is not None:
        return model.run_dir.name
    files = config_files(list(args))
    return Path(files[-1]).stem if files else type(model.net).__name__


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)
