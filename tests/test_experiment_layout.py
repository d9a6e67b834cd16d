"""How experiments/ composes: data set sections (experiments/datasets/) and paper recipes."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.helpers import DATASETS, EXPERIMENTS, REPO, dataset_section, run_main


def test_paper_recipes_leave_the_data_class_to_the_data_set_section():
    """A recipe under experiments/<paper>/<dataset>/ only overrides data.init_args: the data
    module (and its root, lists and classes) comes from experiments/datasets/<dataset>.yaml."""
    recipes = [p for p in EXPERIMENTS.rglob("*.yaml") if dataset_section(p) is not None]
    assert recipes, "no paper recipe composes with experiments/datasets/"
    for path in recipes:
        data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
        assert "class_path" not in data, f"{path}: data.class_path belongs in the data set section"
    for section in DATASETS.glob("*.yaml"):
        assert set(yaml.safe_load(section.read_text())) == {"data"}, f"{section}: data only"


def test_a_data_set_section_and_a_recipe_compose_into_the_real_data_module(capsys):
    run_main(
        [
            "fit",
            "--config",
            str(DATASETS / "voc_aug.yaml"),
            "--config",
            str(EXPERIMENTS / "fcn" / "voc_aug" / "base.yaml"),
            "--config",
            str(EXPERIMENTS / "fcn" / "voc_aug" / "variants" / "fcn8s.yaml"),
            "--print_config",
        ]
    )
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["class_path"] == "segbench.data.PascalVOC"
    args = cfg["data"]["init_args"]
    assert (args["train_split"], args["val_split"], args["batch_size"]) == (
        "sbd_train",
        "seg11valid",
        1,
    )
    assert args["val_batch_size"] == 1  # from the data set section
    assert cfg["model"]["net"]["init_args"]["variant"] == "8s"


def test_make_help_lists_every_ablation_with_its_description_in_one_column():
    """``make help`` lists each ablation found under experiments/; the descriptions of targets
    and ablations start in one column, however long an ablation's name."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    rows = [
        line for line in plain.splitlines() if not line.lstrip().startswith(("variables", "an "))
    ]
    names = {line.split()[0] for line in rows}
    for path in EXPERIMENTS.glob("*/*/ablation.yaml"):
        assert f"ablation-{yaml.safe_load(path.read_text())['name']}" in names, path
    starts = {len(line) - len(line.split(None, 1)[1]) for line in rows}
    assert len(starts) == 1, rows
