"""segbench ld-masks: on a fresh model from a config and on a trained run directory."""

from __future__ import annotations

import json

import pytest
import torch

from segbench.analysis.ld_masks import boundary_mask
from segbench.cli import main
from tests.conftest import REPO

GALD_TINY = [
    "--config",
    str(REPO / "experiments" / "gald" / "synthetic" / "base.yaml"),
    "--model.net.init_args.depth",
    "18",
    "--model.net.init_args.width",
    "0.0625",
    "--model.ohem_min_kept",
    "1000",
    "--data.init_args.num_train",
    "8",
    "--data.init_args.num_val",
    "6",
    "--data.init_args.num_test",
    "4",
    "--data.init_args.image_size",
    "[64, 64]",
    "--data.init_args.batch_size",
    "4",
    "--data.init_args.num_workers",
    "0",
]


def read_stats(path) -> dict:
    stats = json.loads(path.read_text())
    assert stats["images"] == 6
    classes = stats["classes"]
    assert classes["all"]["pixels"] == 6 * 64 * 64
    for name, s in classes.items():
        if s["mean"] is not None:
            assert 0.5 <= s["mean"] < 1, name
    return stats


def test_ld_masks_of_a_fresh_model(tmp_path, capsys):
    main(["ld-masks", *GALD_TINY, "--out", str(tmp_path), "--images", "2", "--channels", "3"])
    assert (tmp_path / "ld_masks.png").stat().st_size > 0
    stats = read_stats(tmp_path / "ld_mask_stats.json")
    assert len(stats["channels"]) == 3
    assert "| bird |" in capsys.readouterr().out


def test_ld_masks_of_a_trained_run(tmp_path):
    main(
        [
            "fit",
            *GALD_TINY,
            "--run.root",
            str(tmp_path),
            "--run.name",
            "gald",
            "--run.wandb",
            "disabled",
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_model_summary",
            "false",
        ]
    )
    run = tmp_path / "gald" / "gald"
    main(["ld-masks", "--run", str(run), "--images", "2", "--channel_ids", "0", "5"])
    assert (run / "ld_masks.png").is_file()
    assert read_stats(run / "ld_mask_stats.json")["channels"] == [0, 5]


def test_a_model_without_ld_is_refused(tmp_path):
    with pytest.raises(ValueError, match="local distribution"):
        main(["ld-masks", *GALD_TINY, "--model.net.init_args.ld", "false", "--out", str(tmp_path)])


def test_boundary_mask_marks_pixels_near_another_label():
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, :, 3:] = 1
    edge = boundary_mask(labels, 1)
    assert edge[0, 0].tolist() == [False, False, True, True, False, False]
