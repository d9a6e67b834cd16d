"""Every analysis tool on every registered architecture, through the shared skeleton.

Each architecture is trained for one tiny epoch (with the small arguments it declares), then every
tool measures that run directory with the small options it declares, writes ``--out`` and
``--record``s into the run. A tool that measures a part the architecture lacks (``ld-masks``
without GALD's LD module) must refuse with :class:`NotApplicable`, naming what is missing. Nothing
here lists tools or architectures. (``segbench export`` is a command of its own, run on every
architecture in ``tests/deploy/test_export.py``.)
"""

from __future__ import annotations

import importlib
import json
import math
import re

import pytest

from segbench.analysis.loading import load_model
from segbench.analysis.tool import NotApplicableError, Tool
from segbench.cli import COMMANDS, main
from segbench.models import architectures
from segbench.options import split_argv

# One worker trains the runs of conftest.trained_run for all these tests (make test).
pytestmark = pytest.mark.xdist_group("trained_run")


def analysis_tools() -> dict[str, Tool]:
    found = {}
    for name, module in COMMANDS.items():
        tool = getattr(importlib.import_module(module), "TOOL", None)
        if isinstance(tool, Tool):
            found[name] = tool
    return found


TOOLS = analysis_tools()


def test_the_tools_share_the_skeleton():
    assert {"erf", "feature-norms", "gridding", "ld-masks", "upper-bound"} <= set(TOOLS)
    for name, tool in TOOLS.items():
        assert tool.name == name
        help_text = tool.parser().format_help()
        for common in ("--ckpt", "--split", "--out", "--record"):
            assert common in help_text, (name, common)


@pytest.mark.parametrize("arch", sorted(architectures()))
@pytest.mark.parametrize("tool_name", sorted(TOOLS))
def test_every_tool_on_every_architecture(tool_name, arch, trained_run, tmp_path, capsys):
    tool = TOOLS[tool_name]
    run = trained_run(arch)
    out = tmp_path / "out"
    argv = [str(run), *tool.test_options, "--record", "--out", str(out)]
    reason = tool.not_applicable(load_model([str(run)]).net) if tool.uses_network else None
    if reason:
        with pytest.raises(NotApplicableError, match=re.escape(reason)):
            tool.main(argv)
        return
    results = tool.main(argv)
    assert [name for name, _ in results] == [run.name]
    result = results[0][1]
    text = capsys.readouterr().out
    assert text == (out / f"{tool.name}.md").read_text() == tool.report(results)
    assert set(json.loads((out / f"{tool.name}.json").read_text())) == {run.name}
    assert (out / f"{tool.name}.png").stat().st_size > 1000
    summary = result.summary()
    assert summary, f"{tool_name} records nothing"
    assert all(k.startswith(f"{tool.record_prefix}/") for k in summary), (
        tool.record_prefix,
        summary,
    )
    assert all(math.isfinite(v) for v in summary.values()), summary
    record = json.loads((run / "metrics.json").read_text())["records"][tool.name]
    assert record["values"] == pytest.approx(summary)
    if tool.uses_network:
        assert record["checkpoint"].endswith("best.ckpt")
    else:
        assert record["checkpoint"] is None


def test_every_tool_s_records_can_be_named_by_an_ablation():
    """A claim or a report column names a record by its tool's prefix (``erf/...``), which the
    ablation's check knows from RECORDS."""
    from segbench.study.ablation import RECORDS

    missing = {name: t.record_prefix for name, t in TOOLS.items() if t.record_prefix not in RECORDS}
    assert not missing, (
        f"add these record prefixes to RECORDS in segbench/study/ablation.py: {missing}"
    )


def test_every_tool_applies_to_some_architecture():
    for name, tool in TOOLS.items():
        nets = [cls(5, **cls.test_kwargs) for cls in architectures().values()]
        assert any(tool.not_applicable(net) is None for net in nets), name


def test_split_argv_routes_runs_tool_options_and_fit_arguments(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    keys = {"strides": "list", "dims": "list", "record": "flag", "unit": "value", "out": "value"}
    runs, tool, fit = split_argv(
        [str(run), "--strides", "4", "8", "--dims", "11", "--record", "--config", "a.yaml",
         "--model.net.init_args.width", "0.25", "--unit=1,2", "--out", "d"],
        keys,
    )  # fmt: skip
    assert runs == [str(run)]
    assert tool == ["--strides", "[4,8]", "--dims", "[11]", "--record", "true", "--unit=1,2",
                    "--out", "d"]  # fmt: skip
    assert fit == ["--config", "a.yaml", "--model.net.init_args.width", "0.25"]
    _, tool, _ = split_argv(["--dims", "[11, 22]"], keys)
    assert tool == ["--dims", "[11, 22]"]


def test_option_kinds_come_from_the_type_hints():
    from segbench.options import option_kind

    assert option_kind(bool) == "flag"
    assert option_kind(list[int] | None) == "list"
    assert option_kind(tuple[float, ...]) == "list"
    assert option_kind(tuple[int, int] | None) == "value"  # a pair: two words, joined
    assert option_kind(int) == "value"


def test_a_missing_checkpoint_is_an_error_not_a_fallback(trained_run, capsys):
    run = trained_run("FCN")
    with pytest.raises(SystemExit) as exit_:
        main(["feature-norms", str(run), "--ckpt", "nonexistent"])
    assert exit_.value.code == 1
    assert "nonexistent" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "named"), [(["--measure", "scor"], "measure"), (["--imagse", "2"], "imagse")]
)
def test_a_wrong_option_is_named(args, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["erf", "--config", "experiments/quickstart.yaml", *args])
    assert exit_.value.code != 0
    assert named in capsys.readouterr().err


def test_a_record_keeps_the_options_it_measured_with_not_where_it_wrote():
    from segbench.options import record_options

    argv = ["runs/g/a-s0", "--record", "--split", "test", "--out", "x", "--top", "3",
            "--record=true", "--out=y", "--record", "false", "--images", "2"]  # fmt: skip
    assert record_options(argv, ["runs/g/a-s0"]) == [
        "--split",
        "test",
        "--top",
        "3",
        "--images",
        "2",
    ]


class _Drawn:
    """A result that draws a line: what :meth:`Tool.write` writes, without measuring."""

    def markdown(self) -> str:
        return "| x |\n|---|\n"

    def to_json(self) -> dict:
        return {}

    def summary(self) -> dict[str, float]:
        return {}

    def plot(self, fig) -> None:
        fig.add_subplot().plot([0, 1])


def test_a_rerun_over_other_models_leaves_no_figure_of_the_earlier_ones(tmp_path):
    """``--out DIR`` over three runs, then over one: the three runs' figures stayed beside the
    one run's table, a set that no version was. The earlier version's figures that the new one
    has not are removed with it; no other file in DIR is (another tool's, one named like this
    tool's figures that no version of it wrote)."""
    tool = TOOLS["feature-norms"]  # one figure per model, none of them together
    out = tmp_path / "out"
    out.mkdir()
    others = ["notes.png", "erf_a.png", "feature-norms_mine.png", "feature-norms_a.txt"]
    for name in others:
        (out / name).write_text("not the tool's")

    def written() -> set[str]:
        return {p.name for p in out.iterdir()} - set(others)

    tables = {"feature-norms.md", "feature-norms.json"}
    tool.write([(n, _Drawn()) for n in ("a", "b", "c d")], "three", out)
    assert written() == tables | {f"feature-norms_{n}.png" for n in ("a", "b", "c_d")}
    tool.write([("a", _Drawn())], "one", out)
    assert written() == tables | {"feature-norms.png"}
    tool.write([(n, _Drawn()) for n in ("a", "b")], "two", out)
    assert written() == tables | {"feature-norms_a.png", "feature-norms_b.png"}
    assert all((out / name).read_text() == "not the tool's" for name in others)


def test_a_record_keeps_the_step_of_the_checkpoint_it_loaded(trained_run, tmp_path, monkeypatch):
    """A tool records the training step of the checkpoint as it loaded it. Read from the file
    when recording, it was a later one's whenever the run saved that checkpoint again meanwhile
    (a run still training): the earlier model's numbers then read as the run's current ones."""
    import shutil

    import torch

    from segbench.rundir import RunDir

    run = tmp_path / "run"
    shutil.copytree(trained_run("FCN"), run)
    best = run / "checkpoints" / "best.ckpt"
    loaded = torch.load(best, weights_only=True)["global_step"]
    tool = TOOLS["feature-norms"]
    measure = tool.measure

    def measure_while_the_run_trains_on(*args, **kwargs):
        result = measure(*args, **kwargs)
        later = torch.load(best, weights_only=True)
        later["global_step"] = loaded + 100
        torch.save(later, best)
        return result

    monkeypatch.setattr(tool, "measure", measure_while_the_run_trains_on)
    tool.main([str(run), *tool.test_options, "--record"])
    record = RunDir(run).read()["records"][tool.name]
    assert record["checkpoint_step"] == loaded
    assert "trained on since" in (RunDir(run).changed_since(record) or "")
    assert not any(k.startswith(f"{tool.record_prefix}/") for k in RunDir(run).results())
