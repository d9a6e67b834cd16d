"""An ablation as data: ``experiments/<paper>/<set>/ablation.yaml`` (:class:`Ablation`: its
variants, seeds, metrics, after-steps and scales) and the claims it tests (:class:`Claim`), read
and checked with errors that name the file and the key.

An ablation declares the claims it tests (:class:`Claim`)::

    claims:
      - id: fcn-8s-over-16s
        claim: "Fusing pool3 as well (FCN-8s) improves on FCN-16s"
        paper: "62.7 vs 62.4 mIoU (+0.3)"
        source: FCN, CVPR 2015, table 2 (VOC2011 val)
        metric: test/mIoU   # or a list: their mean per run (a group of classes)
        a: fcn8s            # variant labels (the variant file's name)
        b: fcn16s
        direction: greater  # the paper says a > b; or less, or equal (within +-margin)
        condition: "what must hold for the experiment to be able to show it"
        measured: "what segbench's tools measured of that condition, and the command"
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from segbench.errors import ConfigError
from segbench.metrics import CLASS_METRICS, STAGE_METRICS

log = logging.getLogger("segbench")


Direction = Literal["greater", "less", "equal"]


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, as an ablation tests it.

    Attributes:
        id: a short stable name (``fcn-8s-over-16s``), unique across the experiments.
        claim: the paper's statement, in a sentence.
        paper: the paper's number(s) behind it, as text.
        source: where the number stands (paper, table or section, data set). A repository file
            that ``paper`` or ``source`` names by its path from the repository's root
            (``docs/papers/gald.md``) is a link in the claims tables.
        metric: the metric compared (a report column: ``test/mIoU``, ``test/IoU/pole``, ...),
            or a list of them, compared by their mean per run (CamVid's thin classes: Pole,
            SignSymbol, Pedestrian, Bicyclist). Checked when the file is loaded: a metric the
            task logs (``val/`` or ``test/``), a run's number or an analysis tool's record
            (:func:`metric_problem`).
        a: the variant expected to be better (``direction: greater``), by its label (its
            file's name; one of the ablation's variants, checked when the file is loaded).
        b: the variant it is compared with.
        direction: ``greater`` (a > b), ``less`` (a < b) or ``equal`` (within ``margin``).
        margin: for ``equal``: the largest difference counted as equal, in the metric's report
            scale (points for IoU).
        condition: what must be true for this experiment to be able to show the claim.
        measured: what was measured of that condition, with the command that measured it.
    """

    id: str
    claim: str
    metric: str | tuple[str, ...]
    a: str
    b: str
    direction: Direction = "greater"
    paper: str = ""
    source: str = ""
    margin: float | None = None
    condition: str = ""
    measured: str = ""

    @classmethod
    def load(cls, data: dict[str, Any], where: str) -> Claim:
        """A claim from its ``ablation.yaml`` entry; errors name the file and the key."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: each claim is a mapping, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown claim key(s) {unknown}; known: {sorted(known)}")
        missing = [k for k in ("id", "claim", "metric", "a", "b") if k not in data]
        if missing:
            raise ConfigError(f"{where}: claim {data.get('id', '?')} lacks {missing}")
        if isinstance(data["metric"], list):
            if not data["metric"] or not all(isinstance(m, str) for m in data["metric"]):
                raise ConfigError(f"{where}: claim {data['id']}: metric is a name or a list of "
                                  f"names, got {data['metric']!r}")  # fmt: skip
            data = {**data, "metric": tuple(data["metric"])}
        claim = cls(**{k: v for k, v in data.items()})
        if claim.direction not in ("greater", "less", "equal"):
            raise ConfigError(
                f"{where}: claim {claim.id}: direction is greater, less or equal, "
                f"got {claim.direction!r}"
            )
        if claim.direction == "equal" and not (claim.margin and claim.margin > 0):
            raise ConfigError(f"{where}: claim {claim.id}: direction equal needs a margin > 0")
        return claim

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric(s) compared: one, or those whose mean per run is compared."""
        return self.metric if isinstance(self.metric, tuple) else (self.metric,)

    @property
    def metric_label(self) -> str:
        """The compared metric as the tables show it."""
        if len(self.metrics) == 1:
            return self.metrics[0]
        prefix = re.match(r".*/", self.metrics[0])
        common = prefix.group(0) if prefix and all(
            m.startswith(prefix.group(0)) for m in self.metrics) else ""  # fmt: skip
        return f"mean {common}{{{', '.join(m.removeprefix(common) for m in self.metrics)}}}"


#: A run's numbers besides its metrics (:meth:`segbench.rundir.RunDir.results`).
RUN_NUMBERS = ("params", "train_images_per_s", "fit_seconds")
#: The analysis tools' records in a run (``segbench gridding --record``: ``gridding/impulse``),
#: by prefix (each tool's ``record_prefix``): the rest of the name depends on the network (layers,
#: levels, classes). A new tool's prefix goes here (tests/analysis/test_tools.py checks).
RECORDS = ("cue_distance", "erf", "feature_norms", "gridding", "ld_mask", "upper_bound")


def metric_problem(metric: str, classes: Sequence[str] | None = None) -> str | None:
    """What is wrong with ``metric`` as a name a run reports, or ``None``: a metric the task logs
    (``val/`` or ``test/`` + :data:`~segbench.metrics.STAGE_METRICS`, or a per-class one whose
    class is one of ``classes``, any class where they are not known), a run's number
    (:data:`RUN_NUMBERS`) or an analysis tool's record (:data:`RECORDS`)."""
    stage, _, name = metric.partition("/")
    if stage in ("val", "test"):
        kind, _, cls = name.partition("/")
        if kind in CLASS_METRICS and cls:
            if classes is None or cls in classes:
                return None
            return f"the data has no class {cls!r} (its classes: {', '.join(classes)})"
        if name in STAGE_METRICS:
            return None
        logged = [f"{stage}/{m}" for m in STAGE_METRICS]
        near = difflib.get_close_matches(metric, logged, n=1, cutoff=0.6)
        return (
            f"the task does not log it{f' (did you mean {near[0]}?)' if near else ''}; it logs "
            f"{stage}/{{{','.join(STAGE_METRICS)}}} and {stage}/{{{','.join(CLASS_METRICS)}}}"
            "/<class>"
        )
    if metric in RUN_NUMBERS or (stage in RECORDS and name):
        return None
    return (
        "not a name a run reports: val/... or test/... (what the task logs), "
        f"{', '.join(RUN_NUMBERS)}, or an analysis tool's record "
        f"({', '.join(r + '/...' for r in RECORDS)})"
    )


#: Where ablations are declared: ``experiments/<paper>/<set>/ablation.yaml``.
EXPERIMENTS = Path("experiments")


@dataclass
class Step:
    """A ``segbench`` tool run around the sweep: ``command`` with ``{placeholders}``.

    Placeholders: ``{dir}`` (the ablation's folder), ``{results}`` (``results/<group>``),
    ``{group}``; in ``after`` also ``{runs}`` (every run directory, as separate arguments); in
    ``after_each`` ``{run}`` and ``{name}`` (one run). ``only`` (a glob on the variant) limits
    ``after_each`` to some variants; ``when_env`` runs the step only if that variable is set.
    """

    command: list[str]
    only: str | None = None
    when_env: str | None = None


@dataclass(frozen=True)
class TuneSpec:
    """An ablation's ``tune:`` block: how ``segbench sweep --tune`` tunes each variant on the
    validation split before the claim seeds are trained at its own best setting::

        tune:
          space: tune.yaml       # a search space file (segbench tune --space), beside the ablation
          trials: 8              # per variant, the untuned recipe (trial 0) included
          seed: 0                # the trials' seed_everything and the sampler's seed
          pruner: median         # median, hyperband, threshold or none
          warmup: 1              # epochs before a trial may be pruned
          fit_args: [--trainer.max_epochs, "10"]   # the trials' own budget, if not the recipe's

    Attributes:
        space: the search space file, relative to the ablation's folder.
        trials: trials of each variant's study.
        seed: the trials' ``seed_everything`` and the sampler's seed; the claims' seeds are the
            sweep's ``--seeds``.
        pruner: the study's pruner (see ``segbench tune --pruner``).
        warmup: epochs every trial trains before it may be pruned.
        fit_args: ``segbench fit`` arguments of the trials only (a shorter schedule, say); the
            claim runs train with the recipe as it is.
    """

    space: str
    trials: int = 8
    seed: int = 0
    pruner: Literal["median", "hyperband", "threshold", "none"] = "median"
    warmup: int = 1
    fit_args: tuple[str, ...] = ()

    @classmethod
    def load(cls, data: Any, path: Path) -> TuneSpec:
        """From an ``ablation.yaml``'s ``tune:`` entry; errors name the file and the key."""
        where = f"{path}: tune"
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: a mapping (space, trials, seed, ...), got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        if "space" not in data:
            raise ConfigError(f"{where}: 'space' (a search space file) is required")
        space = path.parent / str(data["space"])
        if not space.is_file():
            raise ConfigError(f"{where}: space {data['space']}: no such file ({space})")
        for key in ("trials", "warmup", "seed"):
            value = data.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}: {key} is a whole number >= 0, got {value!r}")
        if data.get("trials", 1) < 1:
            raise ConfigError(f"{where}: trials is at least 1, got {data['trials']}")
        if data.get("pruner", "median") not in ("median", "hyperband", "threshold", "none"):
            raise ConfigError(
                f"{where}: pruner {data['pruner']!r}: median, hyperband, threshold or none"
            )
        args = data.get("fit_args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ConfigError(f"{where}: fit_args is a list of strings, got {args!r}")
        return cls(**{**data, "space": str(data["space"]), "fit_args": tuple(args)})


@dataclass
class Ablation:
    """One ``ablation.yaml``: what a sweep over a paper's variants runs and reports.

    Attributes:
        name: ``segbench sweep --ablation NAME`` / ``make ablation-NAME``.
        group: runs go to ``runs/<group>[-<scale>]/<variant>-s<seed>`` (the W&B group).
        description: one line for ``make help``.
        minutes_per_seed: CPU time of one seed on 2 idle cores, as measured (for planning).
        base: config files every variant starts from (relative to the folder).
        variants: glob of the variant files (relative to the folder).
        metrics: the report's columns (checked as a claim's ``metric`` is).
        paper: the published numbers (relative to the folder), for the report.
        before: steps run once before the runs.
        after_each: steps run on each finished run, skipped when already recorded for its
            current best checkpoint.
        after: steps run once when every run is done, before the report.
        claims: the claims the ablation tests (:class:`Claim`, checked
            when the file is loaded); the report gives each a verdict.
        tune: how ``segbench sweep --tune`` tunes each variant first (:class:`TuneSpec`).
    """

    path: Path
    name: str
    group: str
    description: str = ""
    minutes_per_seed: float | None = None
    base: list[str] = field(default_factory=lambda: ["base.yaml"])
    variants: str = "variants/*.yaml"
    metrics: list[str] = field(default_factory=list)
    paper: str | None = None
    before: list[Step] = field(default_factory=list)
    after_each: list[Step] = field(default_factory=list)
    after: list[Step] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    tune: TuneSpec | None = None

    @property
    def folder(self) -> Path:
        return self.path.parent

    @classmethod
    def load(cls, path: Path) -> Ablation:
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping")
        known = set(cls.__dataclass_fields__) - {"path"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        for key in ("name", "group"):
            if key not in data:
                raise ConfigError(f"{path}: '{key}' is required")
        for key in ("before", "after_each", "after"):
            steps = []
            for step in data.get(key) or []:
                step = {"command": step} if isinstance(step, list) else step
                steps.append(Step(**step))
            data[key] = steps
        data["claims"] = [Claim.load(c, str(path)) for c in data.get("claims") or []]
        if data.get("tune") is not None:
            data["tune"] = TuneSpec.load(data["tune"], path)
        ablation = cls(path=path, **data)
        ablation.check_names()
        return ablation

    def variant_names(self) -> list[str]:
        """The variants' labels: the names of the files ``variants`` matches."""
        return sorted(p.stem for p in self.folder.glob(self.variants))

    def check_names(self, classes: Sequence[str] | None = None) -> None:
        """Every claim names two variants of the ablation, and every claim's metric and report
        column is a name a run reports (:func:`metric_problem`; a per-class metric's class is
        checked against ``classes``, the data's, where given): a typo fails here, not after
        the sweep."""
        variants = self.variant_names()
        for claim in self.claims:
            for key in ("a", "b"):
                name = getattr(claim, key)
                if name not in variants:
                    raise ConfigError(
                        f"{self.path}: claim {claim.id}: {key}: {name} is not a variant of this "
                        f"ablation (its variants, the files {self.variants} matches: "
                        f"{', '.join(variants) or 'none'})"
                    )
        named = [(f"claim {c.id}: metric", m) for c in self.claims for m in c.metrics]
        for where, metric in [*named, *(("metrics", m) for m in self.metrics)]:
            problem = metric_problem(metric, classes)
            if problem:
                raise ConfigError(f"{self.path}: {where} {metric}: {problem}")

    @property
    def space(self) -> Path | None:
        """The ``tune:`` block's search space file, if there is one."""
        return self.folder / self.tune.space if self.tune else None

    def group_at(self, scale: str) -> str:
        """The runs' group at ``scale``: ``group``, with ``-<scale>`` unless ``cpu``."""
        return self.group + ("" if scale == "cpu" else f"-{scale}")

    def configs(self, scale: str) -> tuple[list[str], list[str]]:
        """The base files (with ``_scale_<scale>.yaml`` unless ``cpu``) and the variant files."""
        base = [str(self.folder / b) for b in self.base]
        if scale != "cpu":
            extra = self.folder / f"_scale_{scale}.yaml"
            if not extra.is_file():
                have = sorted(p.stem.removeprefix("_scale_") for p in self.folder.glob("_scale_*"))
                raise ConfigError(f"{self.path}: no scale '{scale}' (has: cpu, {', '.join(have)})")
            base.append(str(extra))
        variants = sorted(str(p) for p in self.folder.glob(self.variants))
        if not variants:
            raise ConfigError(f"{self.path}: no variant files match {self.variants}")
        return base, variants


def find_ablations(root: Path = EXPERIMENTS) -> dict[str, Ablation]:
    """Every ``<root>/<paper>/<set>/ablation.yaml``, by name."""
    found: dict[str, Ablation] = {}
    for path in sorted(root.glob("*/*/ablation.yaml")):
        ablation = Ablation.load(path)
        if ablation.name in found:
            raise ConfigError(
                f"ablation name '{ablation.name}' in {found[ablation.name].path} and {path}"
            )
        found[ablation.name] = ablation
    return found


def find_ablation(name: str, root: Path = EXPERIMENTS) -> Ablation:
    """By path, by name, or by paper folder: its one ablation, or its synthetic one where the
    paper also has others (``drn``: ``degridding``, not ``degridding-camvid``)."""
    if name.endswith(".yaml"):
        return Ablation.load(Path(name))
    found = find_ablations(root)
    if name in found:
        return found[name]
    by_paper = [a for a in found.values() if a.folder.parent.name == name]
    if len(by_paper) > 1:
        by_paper = [a for a in by_paper if a.folder.name == "synthetic"] or by_paper
    if len(by_paper) == 1:
        return by_paper[0]
    where = str(root) if root.is_absolute() else f"{root} ({root.resolve()})"
    if not root.is_dir():  # the default is relative: segbench run from another folder
        raise ConfigError(
            f"no ablation '{name}': {where} is not a folder; run segbench from the repository's "
            "root folder, or give the ablation.yaml's path"
        )
    raise ConfigError(f"no ablation '{name}' under {where}; found: {', '.join(found) or 'none'}")
