"""segbench ld-masks: on a fresh model from a config and on a trained run directory."""

from __future__ import annotations

import json

import pytest
import torch

from segbench.analysis.ld_masks import boundary_mask, mask_ablation, replaced_mask
from segbench.cli import main
from segbench.metrics import SegmentationMetrics
from segbench.models.layers.global_context import LocalDistribution
from tests.helpers import REPO

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


def read_stats(path, model: str) -> dict:
    stats = json.loads(path.read_text())[model]
    assert stats["images"] == 6
    classes = stats["classes"]
    assert classes["all"]["pixels"] == 6 * 64 * 64
    for name, s in classes.items():
        if s["mean"] is not None:
            assert 0.5 <= s["mean"] < 1, name
    return stats


def test_ld_masks_of_a_fresh_model(tmp_path, capsys):
    main(["ld-masks", *GALD_TINY, "--out", str(tmp_path), "--images", "2", "--channels", "3"])
    assert (tmp_path / "ld-masks.png").stat().st_size > 0
    stats = read_stats(tmp_path / "ld-masks.json", "base")
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
    out = tmp_path / "masks"
    main([
        "ld-masks", str(run), "--images", "2", "--channel_ids", "0", "5", "--record",
        "--out", str(out),
    ])  # fmt: skip
    assert (out / "ld-masks.png").is_file()
    stats = read_stats(out / "ld-masks.json", "gald")
    assert stats["channels"] == [0, 5]
    assert stats["ablation_images"] == 6
    assert set(stats["mask_ablation"]) == {"trained", "spatial_mean", "constant"}
    for metrics in stats["mask_ablation"].values():
        assert 0 <= metrics["mIoU"] <= 1
        assert "IoU/bird" in metrics
    ablation = stats["mask_ablation"]
    record = json.loads((run / "metrics.json").read_text())["records"]["ld-masks"]
    assert record["checkpoint"].endswith(".ckpt")
    analysis = record["values"]
    assert analysis["ld_mask/mIoU_trained"] == pytest.approx(ablation["trained"]["mIoU"])
    assert analysis["ld_mask/spatial_mIoU_gain"] == pytest.approx(
        ablation["trained"]["mIoU"] - ablation["spatial_mean"]["mIoU"]
    )
    assert analysis["ld_mask/input_mIoU_gain"] == pytest.approx(
        ablation["trained"]["mIoU"] - ablation["constant"]["mIoU"]
    )


def test_record_needs_a_run(tmp_path):
    with pytest.raises(SystemExit):
        main(["ld-masks", *GALD_TINY, "--out", str(tmp_path), "--record"])


def test_a_model_without_ld_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["ld-masks", *GALD_TINY, "--model.net.init_args.ld", "false", "--out", str(tmp_path)])
    assert exit_.value.code == 1
    assert "local distribution" in capsys.readouterr().err


def test_boundary_mask_marks_pixels_near_another_label():
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, :, 3:] = 1
    edge = boundary_mask(labels, 1)
    assert edge[0, 0].tolist() == [False, False, True, True, False, False]


def test_replaced_mask_flattens_or_fixes_the_mask_and_then_restores_it():
    torch.manual_seed(0)
    ld = LocalDistribution(4).eval()
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        m = ld.mask(x)
        assert m.flatten(2).std(-1).max() > 1e-3  # a mask that varies over positions
        trained = ld(x)
        with replaced_mask(ld, "trained"):
            torch.testing.assert_close(ld(x), trained)
        with replaced_mask(ld, "spatial_mean"):
            torch.testing.assert_close(ld(x), x + x * m.mean((2, 3), keepdim=True))
        c = torch.tensor([0.5, 0.6, 0.7, 0.8])
        with replaced_mask(ld, "constant", c):
            torch.testing.assert_close(ld(x), x + x * c.view(1, 4, 1, 1))
        torch.testing.assert_close(ld(x), trained)  # the hook is gone
    with pytest.raises(ValueError, match="constant"), replaced_mask(ld, "constant"):
        pass


class _TinyLDNet(torch.nn.Module):
    """conv -> LD -> 1x1 classifier: an LD network small enough to evaluate by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.ld = LocalDistribution(8)
        self.cls = torch.nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return {"out": self.cls(self.ld(self.conv(x)))}


def test_mask_ablation_as_trained_is_the_plain_evaluation():
    torch.manual_seed(0)
    net = _TinyLDNet().eval()
    images = torch.randn(5, 3, 32, 32)
    labels = torch.randint(0, 3, (5, 32, 32))
    labels[0, :4] = 255
    names = ["a", "b", "c"]
    result = mask_ablation(net, images, labels, names, 255, batch_size=2)
    plain = SegmentationMetrics(3, 255, names)
    with torch.no_grad():
        plain.update(net(images)["out"], labels)
    assert result["trained"]["mIoU"] == pytest.approx(float(plain.compute()["mIoU"]))
    assert set(result["constant"]) == {"mIoU", "IoU/a", "IoU/b", "IoU/c"}
    assert result["spatial_mean"] != result["trained"]  # the replacement reached the network
    assert not net.ld._forward_hooks


def test_the_figure_names_its_rows_and_says_what_it_shows():
    import numpy as np
    from matplotlib.figure import Figure

    from segbench.analysis.ld_masks import draw

    n, h, w = 2, 8, 8
    fig = Figure()
    draw(np.zeros((n, h, w, 3), np.uint8), np.zeros((n, h, w), np.int64),
         np.full((n, 4, h, w), 0.7), [1, 3], [(0, 0, 0)], fig)  # fmt: skip
    assert fig.get_suptitle()
    rows = [ax for ax in fig.axes if ax.get_ylabel().startswith("image")]
    assert [ax.get_ylabel() for ax in rows] == ["image 0", "image 1"]
    assert [ax for ax in fig.axes if ax.get_ylabel() == "LD mask M"]  # the colour bar
