"""Every analysis tool on every registered architecture, through the shared skeleton.

Each architecture is trained for one tiny epoch (with the small arguments it declares), then every
tool measures that run directory with the small options it declares, writes ``--out`` and
``--record``s into the run. A tool that measures a part the architecture lacks (``ld-masks``
without GALD's LD module) must refuse with :class:`NotApplicable`, naming what is missing. Nothing
here lists tools or architectures.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from segbench.analysis.loading import load_model
from segbench.analysis.tool import NotApplicableError, Tool, split_argv
from segbench.cli import main, tools
from segbench.models import architectures
from tests.conftest import tiny_args


def analysis_tools() -> dict[str, Tool]:
    found = {}
    for name, module in tools().items():
        tool = getattr(importlib.import_module(module), "TOOL", None)
        if isinstance(tool, Tool):
            found[name] = tool
    return found


TOOLS = analysis_tools()


def test_the_five_tools_share_the_skeleton():
    assert {"erf", "feature-norms", "gridding", "ld-masks", "upper-bound"} <= set(TOOLS)
    for name, tool in TOOLS.items():
        assert tool.name == name
        help_text = tool.parser().format_help()
        for common in ("--ckpt", "--split", "--out", "--record"):
            assert common in help_text, (name, common)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """``architecture name -> run directory`` of a one-epoch tiny run, trained on first use."""
    runs: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in runs:
            root = tmp_path_factory.mktemp(arch.lower())
            cls = architectures()[arch]
            override = root / "net.yaml"
            override.write_text(
                yaml.safe_dump(
                    {"model": {"net": {"class_path": f"{cls.__module__}.{cls.__name__}",
                                       "init_args": dict(cls.test_kwargs)}}}
                )
            )  # fmt: skip
            main(["fit", *tiny_args(root, name=arch.lower()), "--config", str(override)])
            runs[arch] = root / "test" / arch.lower()
        return runs[arch]

    return get


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
    assert all(math.isfinite(v) for v in summary.values()), summary
    record = json.loads((run / "metrics.json").read_text())["records"][tool.name]
    assert record["values"] == pytest.approx(summary)
    if tool.uses_network:
        assert record["checkpoint"].endswith("best.ckpt")
    else:
        assert record["checkpoint"] is None


def test_every_tool_applies_to_some_architecture():
    for name, tool in TOOLS.items():
        nets = [cls(5, **cls.test_kwargs) for cls in architectures().values()]
        assert any(tool.not_applicable(net) is None for net in nets), name


def test_split_argv_routes_runs_tool_options_and_fit_arguments(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    keys = {"strides": False, "record": True, "unit": False, "out": False}
    runs, tool, fit = split_argv(
        [str(run), "--strides", "4", "8", "--record", "--config", "a.yaml",
         "--model.net.init_args.width", "0.25", "--unit=1,2", "--out", "d"],
        keys,
    )  # fmt: skip
    assert runs == [str(run)]
    assert tool == ["--strides", "[4,8]", "--record", "true", "--unit=1,2", "--out", "d"]
    assert fit == ["--config", "a.yaml", "--model.net.init_args.width", "0.25"]


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
