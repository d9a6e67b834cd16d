"""The `segbench` command end to end, in-process, on tiny generated data."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from segbench.cli import main
from segbench.config import config_changes
from tests.helpers import EXPERIMENTS, REPO, dataset_section, metrics, run_main, segbench_log


def read_confusion(path: Path) -> np.ndarray:
    with path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "true \\ predicted"
    assert [r[0] for r in rows[1:]] == rows[0][1:]  # the class names on both axes
    return np.array([[int(v) for v in r[1:]] for r in rows[1:]])


def test_print_config_shows_the_full_resolved_config(tiny, capsys):
    run_main(["fit", *tiny(), "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["net"]["class_path"] == "segbench.models.FCN"
    assert cfg["model"]["net"]["init_args"]["variant"] == "8s"
    assert cfg["model"]["optimizer"]["class_path"] == "torch.optim.SGD"
    assert cfg["data"]["init_args"]["batch_size"] == 4
    assert cfg["run"]["name"] == "tiny"
    # Declared once by the data module, linked at instantiation: not a config key.
    assert "num_classes" not in cfg["model"]["net"]["init_args"]


def test_several_configs_compose_left_to_right(tiny, tmp_path, capsys):
    override = tmp_path / "override.yaml"
    override.write_text("model:\n  net:\n    init_args:\n      variant: 16s\n")
    run_main(["fit", *tiny(), "--config", str(override), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["model"]["net"]["init_args"]["variant"] == "16s"


@pytest.mark.parametrize(
    ("arg", "value", "named"),
    [
        ("--model.net.init_args.varient", "16s", "varient"),
        ("--model.net.init_args.variant", "4s", "variant"),
        ("--model.net.init_args.width", "wide", "width"),
        ("--data.init_args.batch_sise", "8", "batch_sise"),
    ],
)
def test_a_bad_key_or_value_fails_before_any_work_naming_it(tiny, capsys, arg, value, named):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *tiny(), arg, value])
    assert exit_.value.code != 0
    assert named in capsys.readouterr().err
    assert not (tiny.root / "test").exists()  # nothing was written


def test_a_misspelt_key_in_a_config_file_is_named(tiny, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  aux_wieght: 0.3\n")
    with pytest.raises(SystemExit):
        main(["fit", *tiny(), "--config", str(bad)])
    assert "aux_wieght" in capsys.readouterr().err


def test_help_shows_the_docstrings(capsys):
    run_main(["fit", "--model.net.help", "segbench.models.FCN"])
    out = capsys.readouterr().out
    assert "skip architecture" in out
    assert "--model.net.upsample_learnable" in out
    run_main(["fit", "--help"])
    out = capsys.readouterr().out
    assert "--run.test_after_fit" in out
    assert "best checkpoint" in out


def test_a_command_builds_the_parser_of_that_command_alone():
    """Each of Lightning's four parsers (fit, validate, test, predict) takes about 0.1 s to
    build, at every command's start: a command builds its own; ``--help`` and a mistyped
    command build all four (the test below)."""
    from segbench.cli.lightning import _ParseOnly

    with mock.patch.object(sys, "argv", sys.argv[:1]):
        cli = _ParseOnly(args=["validate", "--config", str(REPO / "experiments/quickstart.yaml")])
    assert set(cli._subcommand_parsers) == {"validate"}
    assert cli.subcommand == "validate"


def test_each_command_says_what_it_does_here(capsys):
    """Lightning's own descriptions are the Trainer methods' first lines: predict's ended in
    'Useful to'. segbench --help lists the commands by what they do in segbench."""
    run_main(["predict", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Label images with a run's checkpoint (--config RUN/config.yaml" in out
    assert "Useful to" not in out
    # --images said 'JPEG or PNG' while it reads BMP, TIFF and WebP as well (the tutorial's list)
    for suffix in (".jpg", ".png", ".bmp", ".tif", ".webp"):
        assert suffix in out, suffix
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = [line.split(None, 1) for line in capsys.readouterr().out.splitlines()[-4:]]
    assert listed == [
        ["fit", "Train a run"],
        ["validate", "Score a run's checkpoint on the validation split"],
        ["test", "Score a run's checkpoint on the test split"],
        ["predict", "Label images with a run's checkpoint"],
    ]


def test_fit_says_once_why_it_stopped(tiny, caplog):
    """Lightning logs why the fit loop stops each time FitLoop.done is read; the run record
    reads it too, which printed the line twice."""
    with caplog.at_level("INFO", logger="lightning.pytorch.utilities.rank_zero"):
        run_main(["fit", *tiny()])
    assert caplog.text.count("`Trainer.fit` stopped: `max_epochs=") == 1
    assert metrics(tiny.root / "test" / "tiny")["finished"] is True


@pytest.mark.parametrize(
    ("limits", "validated"),
    [
        # 16 images in batches of 4: 4 batches an epoch.
        (["--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "2"], True),
        (["--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "2"], False),
        (["--trainer.max_epochs", "3", "--trainer.max_steps", "6"], False),  # inside epoch 2
        (["--trainer.max_epochs", "1", "--trainer.val_check_interval", "0.75"], False),
        (["--trainer.max_epochs", "3", "--trainer.max_steps", "6",
          "--trainer.val_check_interval", "3", "--trainer.check_val_every_n_epoch", "null"], True),
        (["--trainer.max_epochs", "2", "--trainer.accumulate_grad_batches", "3",
          "--trainer.max_steps", "3"], False),  # steps of 3 + 1 batches: step 3 is in epoch 2
    ],
)  # fmt: skip
def test_a_fit_whose_final_weights_go_unvalidated_says_so_at_its_start(tiny, limits, validated):
    """A fit that ends where Lightning does not validate (``max_epochs`` not a multiple of
    ``check_val_every_n_epoch``, ``max_steps`` inside an epoch) never measures its final
    weights; it is said when training starts. What was said is checked against the run."""
    with segbench_log() as said:
        run_main(["fit", *tiny(extra=limits)])
    warned = [line for line in said if "final weights are never validated" in line]
    run = tiny.root / "test" / "tiny"
    with (run / "metrics.csv").open() as f:
        last_validation = max(int(r["step"]) for r in csv.DictReader(f) if r.get("val/mIoU"))
    # A validation is logged at the step before the optimiser step count it follows.
    assert (last_validation + 1 == metrics(run)["global_step"]) is validated
    assert bool(warned) is not validated, said


def test_fit_then_test_writes_a_complete_run_directory(tiny):
    run_main(["fit", *tiny(extra=["--run.test_after_fit", "true"])])
    run_dir = tiny.root / "test" / "tiny"
    for name in (
        "config.yaml",
        "metrics.json",
        "metrics.csv",
        "val_examples.png",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ):
        assert (run_dir / name).is_file(), name
    m = metrics(run_dir)
    assert 0.0 <= m["val"]["val/mIoU"] <= 1.0
    assert "val/IoU/boat" in m["val"]
    assert set(m["test"]) >= {
        "test/mIoU",
        "test/pixel_acc",
        "test/mean_acc",
        "test/fwIoU",
        "test/loss",
    }
    assert m["config"]["model.net.init_args.variant"] == "8s"
    assert m["params"]["total"] > 0
    assert m["timing"]["train_images_per_s"] > 0
    # What evaluating cost: every image of the split, in positive time.
    assert m["eval_timing"]["val"]["images"] == 10
    assert m["eval_timing"]["test"]["images"] == 6
    assert m["eval_timing"]["test"]["seconds"] > 0

    # A fresh process can test the saved run by its config and "best"; it writes its own
    # section (with the checkpoint it used) and never replaces fit's.
    test_after_fit = m["test"]
    run_main(["test", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "best"])
    with (run_dir / "metrics.csv").open() as f:  # the training history is kept
        assert [r for r in csv.DictReader(f) if r.get("val/mIoU")]
    data = json.loads((run_dir / "metrics.json").read_text())
    assert data["test"]["metrics"] == test_after_fit
    assert data["test"]["checkpoint"].endswith("checkpoints/best.ckpt")
    assert data["test"]["checkpoint_step"] == m["best_val"]["step"]  # which best.ckpt it was
    assert data["test"]["protocol"]["mode"] == "whole"
    # ... and its confusion matrix: pixel counts whose diagonal gives the pixel accuracy.
    confusion = read_confusion(run_dir / "confusion_test.csv")
    assert confusion.shape == (11, 11)
    assert confusion.sum() == 6 * 64 * 64
    assert confusion.trace() / confusion.sum() == pytest.approx(test_after_fit["test/pixel_acc"])
    assert (run_dir / "confusion_test.png").stat().st_size > 1000
    run_main(["validate", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last"])
    data = json.loads((run_dir / "metrics.json").read_text())
    assert data["validate"]["checkpoint"].endswith("checkpoints/last.ckpt")
    assert read_confusion(run_dir / "confusion_validate.csv").sum() == 10 * 64 * 64
    assert data["fit"] == {k: v for k, v in m.items() if k not in ("config", "provenance")}
    # How the run was made.
    prov = m["provenance"]
    assert prov["effective_batch"] == prov["batch_per_process"] == 4
    assert prov["world_size"] == 1
    assert prov["versions"]["torch"].startswith("2.14")
    assert len(prov["attempts"]) == 1
    assert prov["attempts"][0]["command"]


def test_resume_continues_from_the_last_checkpoint(tiny, recwarn):
    # A constant learning rate: a poly schedule refuses other limits on resume (test below).
    constant = ["--model.lr_schedule", "constant"]
    run_main(["fit", *tiny(epochs=1, extra=constant)])
    run_dir = tiny.root / "test" / "tiny"
    steps = metrics(run_dir)["global_step"]
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    recwarn.clear()
    run_main(["fit", *tiny(epochs=2, extra=constant), "--ckpt_path", "last"])
    # A resume finds its own checkpoints: no warning that the directory is not empty.
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]
    m = metrics(run_dir)
    assert m["global_step"] == 2 * steps
    assert m["completed_epochs"] == 2
    # The history of the first run is still in metrics.csv (Lightning's own logger wipes it).
    with (run_dir / "metrics.csv").open() as f:
        epochs = {r["epoch"] for r in csv.DictReader(f) if r.get("val/mIoU")}
    assert epochs == {"0", "1"}
    second = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    # Optimiser and scheduler state came along: momentum buffers exist and the LR moved on.
    assert second["optimizer_states"][0]["state"]
    assert second["lr_schedulers"][0]["last_epoch"] == 2 * steps
    assert first["lr_schedulers"][0]["last_epoch"] == steps


def test_a_fresh_fit_never_silently_replaces_a_run(tiny, capsys):
    run_main(["fit", *tiny()])
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *tiny()])
    assert exit_.value.code == 1
    assert "--ckpt_path last" in capsys.readouterr().err
    run_main(["fit", *tiny(extra=["--run.overwrite", "true"])])


def test_predict_writes_palette_label_maps(tiny):
    run_main(["fit", *tiny()])
    run_dir = tiny.root / "test" / "tiny"
    run_main(["predict", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "best"])
    pngs = sorted(
        p for p in (run_dir / "predictions").glob("*.png") if not p.stem.endswith("_overlay")
    )
    assert len(pngs) == 6  # the test split
    assert len(list((run_dir / "predictions").glob("*_overlay.png"))) == 6
    img = Image.open(pngs[0])
    assert img.mode == "P"
    assert img.size == (64, 64)
    assert np.asarray(img).max() < 11


def test_a_fit_shows_lightnings_messages_but_not_its_tips(tiny):
    """Lightning's "💡 Tip: install litlogger" line is left out of a fit's output, and so is its
    model summary's FLOPs column and "0 Total Flops" line (no FLOPs are counted without an
    example input) and its warning that it cannot size bf16-mixed parameters (they are float32);
    its other messages (the accelerator found, the summary's parameter counts) come through."""
    import logging

    seen: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    # Every Lightning message reaches these two (its modules' loggers propagate to them).
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_main(["fit", *tiny(extra=["--trainer.enable_model_summary", "true"])])
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert any(m.startswith("GPU available:") for m in seen), seen
    assert not [m for m in seen if "Tip" in m]
    summary = [m for m in seen if "Total params" in m]
    assert len(summary) == 1, seen
    assert "Trainable params" in summary[0]
    assert "Total Flops" not in summary[0], summary[0]
    assert "FLOPs" not in summary[0], summary[0]
    # Under bf16-mixed the parameters stay float32, the size the summary gives (in MB).
    assert not [w for w in caught if "not supported by the model summary" in str(w.message)]


def test_wandb_offline_run_logs_the_flat_config_without_network(tiny, monkeypatch):
    import wandb

    warned: list[str] = []
    monkeypatch.setattr(wandb, "termwarn", lambda text, *a, **k: warned.append(text))
    run_main(["fit", *tiny(wandb="offline")])
    assert not [w for w in warned if "anonymous" in w]  # no warning about Lightning's arguments
    run_dir = tiny.root / "test" / "tiny"
    runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    # The offline run's record log (protobuf) holds each flat key with its JSON value; W&B 0.31
    # ships no reader for it, so look for the records' bytes.
    records = runs[0].read_bytes()
    assert b"model.net.init_args.variant" in records
    assert b'"8s"' in records
    assert b"data.init_args.num_train" in records
    assert b"run.group" in records
    assert b"data:SyntheticSegmentation" in records  # the tag of the data it trained on
    assert list((runs[0].parent / "files" / "media" / "images").rglob("*.png"))  # overlays


def test_summary_counts_parameters_without_data(capsys):
    run_main(
        [
            "summary",
            "--config",
            str(REPO / "experiments" / "quickstart.yaml"),
            "--input_size",
            "64",
            "96",
        ]
    )
    out = capsys.readouterr().out
    assert "| parameters | 8,413,329" in out
    assert "| output stride | 8 |" in out
    assert "64 x 96" in out
    assert "GFLOPs" in out


def parse_pairs() -> list:
    """Every YAML under experiments/; files in a `variants/` folder compose with the base files
    of the folder's ablation.yaml (default ../base.yaml), `_scale_<name>.yaml` with base.yaml
    beside it, and a paper's recipe for a data set composes after that data set's section."""
    from segbench.study.ablation import Ablation

    cases = []
    for path in sorted(EXPERIMENTS.rglob("*.yaml")):
        configs = [path]
        if path.parent.name == "variants":
            plan = path.parent.parent / "ablation.yaml"
            base = Ablation.load(plan).configs("cpu")[0] if plan.is_file() else None
            configs = [*(base or [path.parent.parent / "base.yaml"]), path]
        elif path.name.startswith("_scale_"):
            configs = [path.parent / "base.yaml", path]  # `make ablation-* SCALE=<name>`
        elif path.name.startswith("_") or path.name in ("paper.yaml", "ablation.yaml"):
            continue  # fragments that only make sense composed; paper numbers; sweep plans
        elif path.name.endswith(".tune.yaml"):
            continue  # search spaces of segbench tune (tests/study/test_tune.py checks them)
        section = dataset_section(path)
        if section is not None:
            configs = [section, *configs]
        cases.append(pytest.param(configs, id=str(path.relative_to(EXPERIMENTS))))
    return cases


@pytest.mark.parametrize("configs", parse_pairs())
def test_every_experiment_config_parses(configs, capsys):
    args = ["fit"]
    for c in configs:
        args += ["--config", str(c)]
    run_main([*args, "--print_config"])
    assert "class_path" in capsys.readouterr().out


def test_a_batch_limit_of_1_is_one_batch_and_1_0_is_all_of_them(tiny):
    """Lightning reads an int limit as batches and a float as a fraction; its own signature is
    typed float first, so ``1`` used to become ``1.0``: every batch."""
    main(["fit", *tiny(name="one", extra=["--trainer.limit_train_batches", "1",
                                          "--trainer.limit_val_batches", "1"])])  # fmt: skip
    run = tiny.root / "test" / "one"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 1
    val = ckpt["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]["total"]["completed"]
    assert val == 1
    trainer = yaml.safe_load((run / "config.yaml").read_text())["trainer"]
    assert trainer["limit_train_batches"] == 1
    assert isinstance(trainer["limit_train_batches"], int)
    main(["fit", *tiny(name="all", extra=["--trainer.limit_train_batches", "1.0"])])
    ckpt = torch.load(tiny.root / "test" / "all" / "checkpoints" / "last.ckpt",
                      map_location="cpu", weights_only=False)  # fmt: skip
    assert ckpt["global_step"] == 4  # 16 images, batches of 4


def test_same_seed_same_run_on_cpu(tiny):
    """seed_everything makes a CPU run repeatable (no Trainer(deterministic=True) needed)."""
    results = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        run_main(["fit", *tiny(name=name), "--seed_everything", seed])
        results.append(metrics(tiny.root / "test" / name)["val"])
    for r in results:
        r.pop("epoch")
        r.pop("step")
    assert results[0] == results[1]
    assert results[0] != results[2]


def test_resuming_with_other_limits_under_a_poly_schedule_is_refused(tiny, capsys):
    """The checkpoint's poly schedule reached learning rate 0 at the run's own end: "train
    longer" would train nothing, silently. Refused, naming the keys and what to do."""
    run_main(["fit", *tiny(epochs=1)])
    run_dir = tiny.root / "test" / "tiny"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_main(["fit", *tiny(epochs=3), "--ckpt_path", "last"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "trainer.max_epochs 1 -> 3" in err
    assert "learning rate 0" in err
    assert f"--model.init_from {run_dir / 'checkpoints' / 'last.ckpt'}" in err
    assert metrics(run_dir)["completed_epochs"] == 1


def test_evaluation_protocols_given_with_a_checkpoint_are_the_ones_used(tiny, capsys):
    """The checkpoint's hyper-parameters hold the protocols it was trained with; those given on
    the command line (or in a config file) win: they are used and recorded. The task's other
    settings are the checkpoint's: one given otherwise is ignored with a warning naming it."""
    run_main(["fit", *tiny()])
    run_dir = tiny.root / "test" / "tiny"
    run = ["--config", str(run_dir / "config.yaml"), "--ckpt_path", "best"]
    ms_flip = {"mode": "whole", "crop_size": None, "stride": None, "scales": [0.5, 1.0]}
    ms_flip["flip"] = True

    def record(stage: str) -> dict:
        return json.loads((run_dir / "metrics.json").read_text())[stage]

    run_main(["validate", *run])
    plain = record("validate")
    run_main(["validate", *run, "--model.val_protocol.scales", "[0.5, 1.0]",
              "--model.val_protocol.flip", "true"])  # fmt: skip
    assert record("validate")["protocol"] == ms_flip
    assert record("validate")["metrics"]["val/loss"] != plain["metrics"]["val/loss"]
    protocol = tiny.root / "protocol.yaml"
    protocol.write_text("model:\n  test_protocol:\n    scales: [0.5, 1.0]\n    flip: true\n")
    run_main(["test", *run, "--config", str(protocol)])
    assert record("test")["protocol"] == ms_flip
    # Boundary IoU's band is an evaluation setting too: a wider band scores another bIoU.
    run_main(["validate", *run, "--model.boundary_ratio", "0.2"])
    assert record("validate")["metrics"]["val/bIoU"] != plain["metrics"]["val/bIoU"]
    capsys.readouterr()
    run_main(["validate", *run, "--model.ohem_thresh", "0.7"])
    assert record("validate")["metrics"]["val/loss"] == plain["metrics"]["val/loss"]
    assert "ignored: model.ohem_thresh 0.7 (checkpoint: None)" in capsys.readouterr().err
    run_main(["validate", *run])
    assert "ignored" not in capsys.readouterr().err


def test_a_runs_config_yaml_names_its_own_run_wherever_it_lies(tiny, monkeypatch):
    """``--config RUN/config.yaml --ckpt_path best`` evaluates RUN: a copy of a run (its
    config.yaml still names the original) and a relative ``run.root`` read from another folder
    named another directory, whose checkpoint and metrics.json were used."""
    monkeypatch.chdir(tiny.root)

    def record(run_dir: Path) -> dict:
        return json.loads((run_dir / "metrics.json").read_text())

    args = tiny()
    args[args.index("--run.root") + 1] = "runs"  # relative, as the recipes have it
    run_main(["fit", *args])
    original = tiny.root / "runs" / "test" / "tiny"
    copy = tiny.root / "runs" / "archive" / "copy"
    shutil.copytree(original, copy)
    before = record(original)

    run_main(["validate", "--config", str(copy / "config.yaml"), "--ckpt_path", "best"])
    assert record(original) == before  # the original run is left alone
    assert record(copy)["validate"]["checkpoint"] == str(copy / "checkpoints" / "best.ckpt")

    elsewhere = tiny.root / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_main(["test", "--config", str(original / "config.yaml"), "--ckpt_path", "last"])
    assert record(original)["test"]["checkpoint"] == str(original / "checkpoints" / "last.ckpt")
    assert not (elsewhere / "runs").exists()
    # A run's location given on the command line still wins: an evaluation kept apart.
    kept = original / "checkpoints" / "best.ckpt"
    run_main(["validate", "--config", str(original / "config.yaml"), "--ckpt_path", str(kept),
              "--run.name", "eval-apart"])  # fmt: skip
    assert record(elsewhere / "runs" / "test" / "eval-apart")["validate"]["checkpoint"] == str(kept)


def test_a_data_folder_given_relative_is_recorded_absolute_and_read_from_anywhere(
    tiny, monkeypatch
):
    """``--data.init_args.root data/mine`` (relative to where the fit starts) was recorded as
    given: a ``test --config RUN/config.yaml`` from another folder looked for ``data/mine``
    there. The run records the folder absolute; a run recorded before (relative root) still
    resumes from the folder it was made in, its root not taken for a change."""
    monkeypatch.chdir(tiny.root)
    data = tiny.root / "data" / "mine"
    for folder in ("images", "masks"):
        (data / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            data / "images" / f"{i}.png"
        )
        Image.fromarray(rng.integers(0, 3, (32, 32), dtype=np.uint8)).save(
            data / "masks" / f"{i}.png"
        )
    for split in ("train", "val", "test"):
        (data / f"{split}.txt").write_text("0\n1\n2\n3\n")
    folder = ["--data", "segbench.data.FolderSegmentation", "--data.init_args.root", "data/mine",
              "--data.init_args.num_classes", "3", "--data.init_args.image_suffix", ".png",
              "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
              "--model.class_weights", "null"]  # fmt: skip
    run_main(["fit", *tiny(), *folder])
    run_dir = tiny.root / "test" / "tiny"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["init_args"]["root"] == str(data)
    assert metrics(run_dir)["config"]["data.init_args.root"] == str(data)

    elsewhere = tiny.root / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_main(["test", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "best"])
    measured = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert measured["data_changes"] == {}
    assert measured["data"]["data.init_args.root"] == str(data)

    # A run recorded before: its metrics.json and config.yaml name the folder as it was given.
    record = json.loads((run_dir / "metrics.json").read_text())
    record["config"]["data.init_args.root"] = "data/mine"
    (run_dir / "metrics.json").write_text(json.dumps(record))
    monkeypatch.chdir(tiny.root)
    run_main(["fit", *tiny(), *folder, "--ckpt_path", "last"])  # finished: not refused
    assert metrics(run_dir)["finished"] is True


def test_a_resume_does_not_read_the_weights_its_run_started_from(tiny, monkeypatch):
    """``model.init_from`` given relative is recorded absolute, and a resume takes every weight
    from its checkpoint: it read the file its run started from again (then overwrote what it
    loaded), and failed when that file had since been moved or deleted."""
    monkeypatch.chdir(tiny.root)
    run_main(["fit", *tiny(name="start")])
    start = tiny.root / "test" / "start" / "checkpoints" / "best.ckpt"
    longer = ["--model.lr_schedule", "constant"]  # a schedule a resume may train longer
    args = [*tiny(name="staged"), *longer, "--model.init_from", "test/start/checkpoints/best.ckpt"]
    run_main(["fit", *args])
    run_dir = tiny.root / "test" / "staged"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["init_from"] == str(start)
    shutil.rmtree(start.parent.parent)
    run_main(["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert metrics(run_dir)["completed_epochs"] == 2
    assert metrics(run_dir)["finished"] is True


def test_a_test_on_other_data_records_the_data_it_measured_on(tiny, caplog):
    """``test --config RUN/config.yaml --config other_data.yaml`` replaces the run's ``test``
    section; the section says which data its numbers are of (the data keys, flat, and those that
    differ from the run's own), so they cannot pass for the run's test."""
    run_main(["fit", *tiny()])
    run_dir = tiny.root / "test" / "tiny"
    run = ["--config", str(run_dir / "config.yaml"), "--ckpt_path", "best"]

    def record(stage: str) -> dict:
        return json.loads((run_dir / "metrics.json").read_text())[stage]

    run_main(["test", *run])
    own = record("test")
    recorded = metrics(run_dir)["config"]
    assert own["data"] == {k: v for k, v in recorded.items() if k.startswith("data.")}
    assert own["data"]["data.class_path"] == "segbench.data.SyntheticSegmentation"
    assert own["data_changes"] == {}
    other = tiny.root / "other_data.yaml"
    other.write_text("data:\n  init_args:\n    seed: 7\n    num_test: 4\n")
    with caplog.at_level("INFO", logger="segbench"):
        run_main(["test", *run, "--config", str(other)])
    measured = record("test")
    assert measured["data"]["data.init_args.seed"] == 7
    assert measured["data_changes"] == {
        "data.init_args.num_test": [6, 4],
        "data.init_args.seed": [0, 7],
    }
    assert measured["eval_timing"]["images"] == 4
    assert "test measured on other data than" in caplog.text
    run_main(["validate", *run, "--config", str(other)])
    assert record("validate")["data_changes"] == measured["data_changes"]


def test_config_changes_compare_shared_keys_or_both_sides():
    """What a resume or a study compares (keys of both configs; the ones that may change left
    out), and what a test's ``data_changes`` records (a key of one side only is a change)."""
    recorded = {"data.a": 1, "data.b": 2, "model.lr": 0.1, "run.name": "x"}
    new = {"data.a": 1, "data.b": 3, "data.c": 4, "model.lr": 0.2, "run.name": "y"}
    assert config_changes(recorded, new, ("run.",)) == {"data.b": [2, 3], "model.lr": [0.1, 0.2]}
    assert config_changes(recorded, new, ("run.", "model."), one_sided=True) == {
        "data.b": [2, 3],
        "data.c": [None, 4],
    }
    assert config_changes(recorded, recorded, one_sided=True) == {}


def test_a_resume_applies_changed_evaluation_settings(tiny):
    """docs/how-to/resume.md: the evaluation protocols may change on a resume; they then apply
    (what config.yaml and metrics.json record is what the task was built with)."""
    constant = ["--model.lr_schedule", "constant"]
    run_main(["fit", *tiny(epochs=1, extra=constant)])
    run_dir = tiny.root / "test" / "tiny"
    run_main(["fit", *tiny(epochs=2, extra=constant), "--ckpt_path", "last",
              "--model.val_protocol.flip", "true"])  # fmt: skip
    m = metrics(run_dir)
    assert m["completed_epochs"] == 2
    assert m["config"]["model.val_protocol.flip"] is True
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["val_protocol"]["flip"] is True


def test_a_resume_checks_the_task_settings_given_not_the_checkpoints(tiny, capsys):
    """The checkpoint's hyper-parameters (the learning-rate schedule among them) no longer
    replace those given before the resume is checked against the run's record: a changed
    schedule is refused, naming it, instead of silently ignored."""
    run_main(["fit", *tiny(epochs=1, extra=["--model.lr_schedule", "constant"])])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *tiny(epochs=2, extra=["--model.lr_schedule", "step"]), "--ckpt_path", "last"])
    assert exit_.value.code == 1
    assert "model.lr_schedule 'constant' -> 'step'" in capsys.readouterr().err
