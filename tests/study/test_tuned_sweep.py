"""segbench sweep --tune: an ablation's tune: block checked, the plan (a study per variant, then
the claim seeds at each variant's best setting), and a tiny tuned sweep end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from segbench.cli import main
from segbench.errors import ConfigError
from segbench.study.ablation import Ablation
from tests.helpers import REPO, segbench_in_process

pytest.importorskip("optuna")

#: The tiny run of tests.helpers.tiny_args as a config file (an ablation's base is files).
TINY = {
    "run": {"wandb": "disabled"},
    "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False,
                "log_every_n_steps": 1},
    "model": {"net": {"init_args": {"width": 0.0625}}},
    "data": {"init_args": {"num_train": 16, "num_val": 10, "num_test": 6, "image_size": [64, 64],
                           "batch_size": 4, "num_workers": 0}},
}  # fmt: skip
LR = "model.optimizer.init_args.lr"
TUNE = {"space": "tune.yaml", "trials": 2, "seed": 3, "pruner": "none"}


def make_ablation(tmp: Path, tune: object = None) -> Path:
    """``tmp/experiments/probe/synthetic``: FCN-8s against FCN-32s on the quickstart, tiny, with
    a claim and a ``tune:`` block over the learning rate."""
    folder = tmp / "experiments" / "probe" / "synthetic"
    (folder / "variants").mkdir(parents=True)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    for variant in ("8s", "32s"):
        net = {"model": {"net": {"init_args": {"variant": variant}}}}
        (folder / "variants" / f"fcn{variant}.yaml").write_text(yaml.safe_dump(net))
    space = {"metric": "val/mIoU", "space": {LR: {"low": 0.01, "high": 0.1, "log": True}}}
    (folder / "tune.yaml").write_text(yaml.safe_dump(space))
    ablation = {
        "name": "probe",
        "group": "probe",
        "base": [str(REPO / "experiments" / "quickstart.yaml"), "tiny.yaml"],
        "metrics": ["test/mIoU"],
        "claims": [{"id": "probe-8s-over-32s", "claim": "8s beats 32s", "metric": "test/mIoU",
                    "a": "fcn8s", "b": "fcn32s"}],
        "tune": TUNE if tune is None else tune,
    }  # fmt: skip
    (folder / "ablation.yaml").write_text(yaml.safe_dump(ablation))
    return folder / "ablation.yaml"


@pytest.mark.parametrize(
    ("tune", "named"),
    [
        ({"space": "tune.yaml", "trails": 4}, r"tune: unknown key\(s\) \['trails'\]"),
        ({"trials": 4}, "'space' .* is required"),
        ({"space": "nope.yaml"}, r"space nope\.yaml: no such file"),
        ({"space": "tune.yaml", "trials": 0}, "trials is at least 1"),
        ({"space": "tune.yaml", "seed": "zero"}, "seed is a whole number"),
        ({"space": "tune.yaml", "pruner": "mean"}, "pruner 'mean'"),
        ({"space": "tune.yaml", "fit_args": "--trainer.max_epochs 2"}, "fit_args is a list"),
    ],
)
def test_a_tune_block_is_checked_naming_the_file_and_the_key(tmp_path, tune, named):
    path = make_ablation(tmp_path, tune)
    with pytest.raises(ConfigError, match=named) as err:
        Ablation.load(path)
    assert str(path) in str(err.value)


def test_a_tuned_sweep_plans_a_study_per_variant_then_each_variants_seeds_at_its_best(
    tmp_path, caplog, monkeypatch
):
    from segbench.study import sweep

    path = make_ablation(tmp_path)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="segbench"):
        sweep.main(["--ablation", str(path), "--tune", "--seeds", "0", "1", "--dry-run"])
    lines = caplog.text.splitlines()
    studies = [line for line in lines if "tune fcn" in line]
    assert len(studies) == 2
    for line, variant in zip(studies, ("fcn32s", "fcn8s"), strict=True):
        # the trials: base + variant at the tuning seed, over the space, into the variant's study
        assert f"tune {variant}: 2 trials of segbench fit" in line
        space = path.parent / "tune.yaml"
        assert f"variants/{variant}.yaml --seed_everything 3 over {space}" in line
        assert line.endswith(f"runs/probe-tune-{variant}")
    runs = [line for line in lines if "probe-tuned/" in line and "segbench.cli fit" in line]
    assert len(runs) == 4  # 2 variants x seeds 0 1, in the tuned group
    for line in runs:
        variant = "fcn32s" if "fcn32s-s" in line else "fcn8s"
        # the variant's best setting composed after its own file, then the claim seed
        assert (f"variants/{variant}.yaml --config runs/probe-tune-{variant}/best.yaml "
                "--seed_everything") in line  # fmt: skip
        assert "--run.group probe-tuned" in line
        assert "--run.test_after_fit true" in line
    assert not (tmp_path / "runs" / "probe-tuned").exists()  # a dry run runs nothing


def test_tune_needs_an_ablation_with_a_tune_block(tmp_path, capsys):
    from segbench.study import sweep

    path = make_ablation(tmp_path)
    text = yaml.safe_load(path.read_text())
    del text["tune"]
    path.write_text(yaml.safe_dump(text))
    with pytest.raises(SystemExit):
        sweep.main(["--ablation", str(path), "--tune", "--dry-run"])
    says = f"--tune: give an ablation with a tune: block (space, trials, seed; {path} has none)"
    assert says in capsys.readouterr().err


def test_a_tuned_sweep_tunes_on_val_trains_each_variant_at_its_best_and_says_so(
    tmp_path, monkeypatch
):
    """2 variants x 2 trials, then seed 0 of each at its best setting: the trials never read the
    test split, the claim runs read it once, and the report names each variant's setting beside
    the claim as published at the shared setting."""
    path = make_ablation(tmp_path)
    results = path.parent.parent / "RESULTS.json"
    shared = {"id": "probe-8s-over-32s", "verdict": "inconclusive", "difference": 1.0,
              "low": -2.0, "high": 4.0, "a": {"mean": 0.5, "std": 0.01, "n": 3},
              "b": {"mean": 0.49, "std": 0.01, "n": 3}, "test": "paired t (3 seeds)",
              "detectable": None, "note": "", "flat": None}  # fmt: skip
    results.write_text(json.dumps({"groups": {"probe": {"rows": [], "claims": [shared]}}}))
    monkeypatch.chdir(tmp_path)
    segbench_in_process(["python", "-m", "segbench.cli", "sweep", "--ablation", str(path),
                         "--tune", "--seeds", "0"])  # fmt: skip
    runs = tmp_path / "runs"
    for variant in ("fcn8s", "fcn32s"):
        study = runs / f"probe-tune-{variant}"
        trials = sorted(study.glob("trial-*/metrics.json"))
        assert len(trials) == 2
        for trial in trials:  # tuning reads val only
            metrics = json.loads(trial.read_text())
            assert not metrics.get("test")
            assert not metrics["fit"].get("test")
            assert metrics["config"]["seed_everything"] == 3
        best = yaml.safe_load((study / "best.yaml").read_text())["model"]["optimizer"]
        run = runs / "probe-tuned" / f"{variant}-s0"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["optimizer"]["init_args"]["lr"] == best["init_args"]["lr"]
        assert config["model"]["net"]["init_args"]["variant"] == variant[3:]
        assert config["seed_everything"] == 0
        assert "test/mIoU" in json.loads((run / "metrics.json").read_text())["fit"]["test"]
    page = (path.parent.parent / "RESULTS.md").read_text()
    assert "## Tuned: each variant at its own setting" in page
    assert "2 trials per variant at seed 3" in page
    assert "## Claims, each variant at its own tuned setting" in page
    assert "| probe-8s-over-32s | +1.00 [-2.00, +4.00] (95%) | **inconclusive** |" in page
    data = json.loads(results.read_text())["groups"]["probe-tuned"]
    assert set(data["tuned"]["variants"]) == {"fcn8s", "fcn32s"}
    assert data["tuned"]["shared_group"] == "probe"
    # The five papers' table (segbench claims) shows the tuned verdict beside the shared one.
    main(["claims", "--experiments", "experiments", "--root", "runs", "--out", "claims.md"])
    table = (tmp_path / "claims.md").read_text().split("Tuned: ")[1]
    row = next(line for line in table.splitlines() if "| probe-8s-over-32s |" in line)
    assert row.startswith("| [probe](experiments/probe/RESULTS.md) | probe-8s-over-32s | "
                          "+1.00 [-2.00, +4.00] (95%) | **inconclusive** | ")  # fmt: skip
    tuned_claim = next(c for c in data["claims"] if c["id"] == "probe-8s-over-32s")
    assert row.endswith(f"| **{tuned_claim['verdict']}** |")


def test_a_tuned_sweep_checks_every_variants_study_before_it_tunes_any(tmp_path, monkeypatch):
    """fcn8s's study was made by a sweep given ``-- --trainer.max_epochs 2``; the sweep without
    it is refused before fcn32s (tuned first) is tuned: a refusal after hours of tuning would
    leave the sweep half done."""
    from segbench.study import sweep, tune

    path = make_ablation(tmp_path)
    monkeypatch.chdir(tmp_path)
    folder = path.parent
    configs = [REPO / "experiments" / "quickstart.yaml", folder / "tiny.yaml",
               folder / "variants" / "fcn8s.yaml"]  # fmt: skip
    made_with = [a for c in configs for a in ("--config", str(c))]
    made_with += ["--seed_everything", "3", "--trainer.max_epochs", "2"]
    space = tune.SearchSpace.load(folder / "tune.yaml")
    study = tmp_path / "runs" / "probe-tune-fcn8s"
    study.mkdir(parents=True)
    pruner = {"name": "none", "warmup": 1, "threshold": None, "direction": "maximize"}
    tune.open_study(study, study.name, space, pruner=pruner,
                    trains=tune.trained_config(made_with, space))  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        sweep.main(["--ablation", str(path), "--tune", "--seeds", "0"])
    said = str(refused.value)
    assert said.startswith(f"runs/probe-tune-fcn8s/{tune.STUDY_FILE}: its trials were trained")
    assert "trainer.max_epochs 2 (study) vs 1 (this command)" in said
    assert "give the sweep the fit arguments after --" in said
    assert said.endswith("Nothing was tuned or trained.")
    assert not (tmp_path / "runs" / "probe-tune-fcn32s").exists()


def test_a_tuned_sweep_given_fit_arguments_compares_with_the_shared_sweep_given_the_same(
    tmp_path,
):
    """``sweep --tune -- --trainer.max_epochs 2``: its runs are not the published recipe's, so
    its "before" verdicts come from the shared setting's sweep given the same arguments
    (ROOT/GROUP.json, which records them), never from RESULTS.json."""
    from segbench.study.render import before_after_table
    from segbench.study.sweep import tuned_data

    ablation = Ablation.load(make_ablation(tmp_path))
    published = {"id": "probe-8s-over-32s", "verdict": "reproduced"}
    (ablation.folder.parent / "RESULTS.json").write_text(
        json.dumps({"groups": {"probe": {"rows": [], "claims": [published]}}})
    )
    tuned = {"fcn8s": {"trial": 1}, "fcn32s": {"trial": 0}}
    root = tmp_path / "runs"
    root.mkdir()
    extra = ["--trainer.max_epochs", "2"]
    assert tuned_data(ablation, tuned, "probe")["shared_claims"] == [published]
    data = tuned_data(ablation, tuned, "probe", extra, str(root))
    assert data["shared_claims"] == []  # no shared sweep with these arguments: none, not RESULTS
    page = before_after_table([], data)
    assert "The runs were given `--trainer.max_epochs 2` after `--`" in page
    assert "(there is none: `segbench sweep --ablation probe -- --trainer.max_epochs 2`" in page
    same = {"id": "probe-8s-over-32s", "verdict": "inconclusive"}
    (root / "probe.json").write_text(json.dumps({"claims": [same], "fit_args": extra}))
    assert tuned_data(ablation, tuned, "probe", extra, str(root))["shared_claims"] == [same]
    other = ["--trainer.max_epochs", "3"]
    assert tuned_data(ablation, tuned, "probe", other, str(root))["shared_claims"] == []
