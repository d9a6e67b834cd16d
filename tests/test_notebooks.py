"""Notebooks run top to bottom on runs the test makes."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from segbench.cli import main
from segbench.numerics import resolve_precision
from tests.helpers import REPO, tiny_args

# One worker builds their runs (a module or session fixture) for all these tests (make test).
pytestmark = pytest.mark.xdist_group("notebooks")


def execute(notebook: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    nb = nbformat.read(notebook, as_version=4)
    # The kernel is started as `python`: make that this environment's interpreter.
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    old = dict(os.environ)
    os.environ.update(env)
    try:
        NotebookClient(
            nb,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(notebook.parent)}},
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for variant in ("32s", "8s"):
        main(
            [
                "fit",
                *tiny_args(
                    root,
                    name=f"fcn{variant}-s0",
                    epochs=2,
                    extra=["--model.net.init_args.variant", variant],
                ),
            ]
        )
    return root


def test_compare_runs_notebook(two_runs):
    nb = execute(REPO / "notebooks" / "compare_runs.ipynb", {"SEGBENCH_RUNS": str(two_runs)})
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "2 runs under" in text
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert tables
    assert "| fcn32s | 32s |" in tables[0]
    assert "| fcn8s | 8s |" in tables[0]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2


@pytest.fixture(scope="module")
def fcn_and_parsenet_runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("erf-runs")
    nets = {
        "fcn32s": ["--model.net.init_args.variant", "32s"],
        "parsenet": ["--model.net", "segbench.models.ParseNet", "--model.net.init_args.width",
                     "0.0625", "--model.net.init_args.batch_norm", "true"],
    }  # fmt: skip
    for name, extra in nets.items():
        main(["fit", *tiny_args(root, name=name, epochs=2, extra=extra)])
    return [root / "test" / name for name in nets]


def test_erf_notebook(fcn_and_parsenet_runs):
    env = {
        "SEGBENCH_ERF_RUNS": os.pathsep.join(str(p) for p in fcn_and_parsenet_runs),
        "SEGBENCH_ERF_IMAGES": "1",
        "SEGBENCH_ERF_PATCH": "16",
        "SEGBENCH_ERF_CANVAS": "512",
    }
    nb = execute(REPO / "notebooks" / "erf.ipynb", env)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "2 runs: fcn32s, parsenet" in text
    assert "measured 2 models" in text
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in tables[0].splitlines()[2:]}
    assert set(rows) == {"fcn32s", "parsenet"}
    # A 64 x 64 image lies inside both theoretical fields; only global context is unbounded.
    assert "| 100% | 436x436 |" in rows["fcn32s"]
    assert "| 100% | global" in rows["parsenet"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # one per model


def test_gridding_notebook_on_fresh_models():
    nb = execute(
        REPO / "notebooks" / "gridding.ipynb",
        {"SEGBENCH_GRIDDING_WIDTH": "0.0625", "SEGBENCH_GRIDDING_SIZE": "64"},
    )
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "5 models: step0_drn_a, step1_no_max_pooling" in text
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert "impulse lattice coherence (%), period 4" in tables[0]
    assert "| step4_drn_d |" in tables[0]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3


def test_first_look_notebook(two_runs):
    run = two_runs / "test" / "fcn8s-s0"
    nb = execute(REPO / "notebooks" / "first_look.ipynb", {"SEGBENCH_RUN": str(run)})
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "FCN" in text
    assert f"11 classes, precision {resolve_precision('fast', 'cpu')}" in text
    # The notebook's evaluation of the best checkpoint is training's best validation.
    best = json.loads((run / "metrics.json").read_text())["fit"]["best_val"]["val/mIoU"]
    ours = float(re.search(r"val mIoU (\d\.\d+) over 10 images", text).group(1))
    assert ours == pytest.approx(best, abs=0.01)
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert "| boat |" in tables[0]
    assert f"**{100 * ours:.1f}**" in tables[0]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3  # overlays, IoU, confusion
