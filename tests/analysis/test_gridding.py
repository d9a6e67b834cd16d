"""The gridding measures on constructed cases, and `segbench gridding` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from segbench.analysis.gridding import (
    crop_to_support,
    find_backbone,
    impulse_positions,
    lattice_coherence,
    lattice_mask,
    measure,
    spectral_share,
)
from segbench.cli import main
from segbench.models import DRN, FCN
from segbench.models.backbones.base import Backbone
from tests.helpers import REPO


def gaussian(size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g[:, None] * g[None, :]


def coset(size: int, period: int, phase: tuple[int, int] = (0, 0)) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((y % period == phase[0]) & (x % period == phase[1])).double()


def test_lattice_mask_marks_the_multiples_of_one_over_the_period():
    mask = lattice_mask((8, 12), 4)
    assert mask.sum() == 15
    assert not mask[0, 0]
    assert mask[2, 3]
    assert mask[4, 6]
    assert not mask[1, 0]


def test_a_response_on_one_lattice_coset_scores_100_and_a_smooth_one_near_0():
    envelope = gaussian(32, 6.0)
    assert lattice_coherence(envelope * coset(32, 2, (1, 0)), 2) == pytest.approx(100.0)
    assert lattice_coherence(envelope * coset(32, 4, (1, 3)), 4) == pytest.approx(100.0)
    # A period-2 lattice is only part of the period-4 frequencies.
    p2_at_4 = float(lattice_coherence(envelope * coset(32, 2), 4))
    assert 20.0 < p2_at_4 < 100.0
    assert lattice_coherence(envelope, 2) < 1.0  # percent
    assert lattice_coherence(envelope, 4) < 1.0
    # Any non-negative map scores between 0 and 100.
    noise = torch.rand(5, 16, 16)
    assert ((lattice_coherence(noise, 4) >= 0) & (lattice_coherence(noise, 4) <= 100)).all()


def test_spectral_share_sees_a_lattice_pattern_in_features():
    torch.manual_seed(0)
    smooth = nn.functional.avg_pool2d(torch.randn(2, 4, 40, 40), 9, stride=1)  # 32 x 32
    gridded = smooth * coset(32, 2).float()
    assert spectral_share(gridded, 2).min() > 10 * spectral_share(smooth, 2).max()
    assert spectral_share(gridded, 2).shape == (2,)


class ConvStack(Backbone):
    """Three 3x3 convolutions with non-negative weights and ReLU: a toy backbone."""

    def __init__(self, dilation: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.convs = nn.ModuleList(
            nn.Conv2d(c, 4, 3, padding=dilation, dilation=dilation, bias=False) for c in (3, 4, 4)
        )
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.abs_()
        self.describe(["conv1", "conv2", "conv3"], [4, 4, 4], [1, 1, 1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for conv in self.convs:
            x = torch.relu(conv(x))
            feats.append(x)
        return feats


def test_a_dilated_stack_grids_an_impulse_and_a_plain_one_does_not():
    plain = measure(ConvStack(1), name="plain", input_size=(32, 32), period=2)
    dilated = measure(ConvStack(2), name="dilated", input_size=(32, 32), period=2)
    assert dilated.impulse == pytest.approx([100.0, 100.0, 100.0])
    assert all(p < 25.0 for p in plain.impulse)
    assert plain.impulse[-1] < plain.impulse[0]  # deeper plain layers are smoother
    dilated4 = measure(ConvStack(4), name="dilated4", input_size=(32, 32), period=4)
    assert dilated4.impulse[-1] == pytest.approx(100.0)
    assert dilated4.summary()["gridding/impulse"] == pytest.approx(100.0)


def test_impulse_positions_cover_the_phases_of_the_stride():
    positions = impulse_positions((64, 48), 8)
    assert len(positions) == 4
    assert {(y % 8, x % 8) for y, x in positions} == {(0, 0), (0, 4), (4, 0), (4, 4)}
    assert all(0 <= y < 64 and 0 <= x < 48 for y, x in positions)


def test_figures_crop_a_small_response_to_its_support():
    response = torch.zeros(64, 64)
    response[30:33, 40:42] = 1.0
    crop = crop_to_support(response)
    assert crop.shape == (9, 9)
    assert crop.sum() == response.sum()
    assert crop_to_support(torch.zeros(8, 8)).shape == (8, 8)


def test_find_backbone_for_any_segbench_network():
    drn = DRN(3, width=1 / 16)
    assert find_backbone(drn) is drn.backbone
    fcn = FCN(3, width=1 / 16, caffe_padding=False)
    assert find_backbone(fcn) is fcn.backbone
    with pytest.raises(ValueError, match="no backbone"):
        find_backbone(nn.Conv2d(3, 3, 1))


def test_measure_keeps_the_training_mode_and_reports_every_level():
    torch.manual_seed(3)  # a draw whose late levels' share rounded to 100.00000000000001
    net = DRN(3, width=1 / 16).train()
    images = torch.randn(2, 3, 32, 32)
    result = measure(net, name="drn", images=images, input_size=(32, 32))
    assert net.training
    assert result.levels == [f"level{i}" for i in range(1, 9)]
    assert len(result.activations) == 8
    assert result.activations[0].shape == (2, 32, 32)
    assert all(0.0 <= v <= 100.0 for v in result.impulse + result.activation)


DRN_TINY = [
    "--config",
    str(REPO / "experiments" / "drn" / "synthetic" / "base.yaml"),
    "--model.net.init_args.width",
    "0.0625",
    "--data.init_args.image_size",
    "[64, 64]",
    "--data.init_args.num_test",
    "2",
]


def test_gridding_command_on_a_config_writes_table_and_figures(tmp_path, capsys):
    out = tmp_path / "grid"
    main(["gridding", *DRN_TINY, "--input_size", "64", "64", "--images", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert "impulse lattice coherence (%), period 4" in text
    assert "| base |" in text  # named after the last config file
    assert "level8" in text.splitlines()[2]
    scores = json.loads((out / "gridding.json").read_text())["base"]
    assert 0.0 <= scores["impulse"][-1] <= 100.0
    assert scores["levels"][0] == "level1"
    assert scores["activation"][0] is not None
    assert (out / "gridding.png").stat().st_size > 1000


def test_gridding_compares_several_runs_in_one_table_and_figure(tiny, capsys):
    main(["fit", *tiny(name="a")])
    main(["fit", *tiny(name="b", extra=["--seed_everything", "1"])])
    runs = [str(tiny.root / "test" / n) for n in "ab"]
    out = tiny.root / "grid"
    capsys.readouterr()
    main(["gridding", *runs, "--input_size", "64", "64", "--images", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert "| a |" in text
    assert "| b |" in text
    assert set(json.loads((out / "gridding.json").read_text())) == {"a", "b"}
    for png in ("gridding.png", "gridding_a.png", "gridding_b.png"):
        assert (out / png).stat().st_size > 1000


def test_gridding_records_into_a_trained_run_for_the_report(tiny, capsys):
    main(["fit", *tiny()])
    run_dir = tiny.root / "test" / "tiny"
    main(["gridding", str(run_dir), "--record", "--input_size", "64", "64"])
    record = json.loads((run_dir / "metrics.json").read_text())["records"]["gridding"]
    assert record["checkpoint"].endswith("checkpoints/best.ckpt")  # what was measured
    analysis = record["values"]
    assert {"gridding/impulse", "gridding/impulse/fc7", "gridding/activation"} <= set(analysis)
    capsys.readouterr()
    main(["report", str(run_dir), "--metrics", "val/mIoU", "gridding/impulse"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.endswith(f"| {analysis['gridding/impulse']:.2f} |")


def test_gridding_needs_runs_or_a_config(capsys):
    with pytest.raises(SystemExit):
        main(["gridding"])
    with pytest.raises(SystemExit):
        main(["gridding", "--record", *DRN_TINY])
    with pytest.raises(SystemExit) as exit_:
        main(["gridding", "--runs", "runs/x"])
    assert exit_.value.code == 1
    assert "--runs is gone: run directories are given first" in capsys.readouterr().err
