"""segbench erf: theoretical fields against the analytic ones, empirical fields where they are
known, the command on configs and run directories."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.analysis.erf import (
    Erf,
    bbox,
    empirical_heat,
    main,
    receptive_field,
    theoretical_support,
    unclipped_extent,
    window_starts,
)
from segbench.cli import main as segbench
from segbench.models import FCN, ParseNet
from tests.helpers import tiny_args


class ConvPoolStack(nn.Module):
    """conv 3x3 -> ReLU -> max-pool 2 -> conv 3x3 dilated 2, nearest-upsampled back to the input.

    Receptive field by the textbook recurrence r += (k_eff - 1) * j, j *= s: 3 (conv), 4 (pool,
    j = 2), 4 + (5 - 1) * 2 = 12 (dilated conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=2, dilation=2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        y = self.conv2(self.pool(F.relu(self.conv1(x))))
        return {"out": F.interpolate(y, scale_factor=2, mode="nearest")}


class Linear5x5(nn.Module):
    """One 5x5 convolution: the unit depends on exactly the 5x5 window around it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 5, padding=2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.conv(x)}


def test_theoretical_field_of_a_conv_pool_stack_is_the_analytic_one():
    torch.manual_seed(0)
    net = ConvPoolStack()
    mask = theoretical_support(net, (32, 40), (16, 20))
    # Output pixel (16, 20) is pool cell (8, 10): input rows 2*8-5 .. 2*8+6, columns 15 .. 26.
    assert bbox(mask) == (11, 15, 12, 12)
    assert int(mask.sum()) == 12 * 12  # the whole box, no holes
    # The plain gradient of the random network misses part of it (max-pooling routes the
    # gradient to one input per window, ReLUs are off): why the structural copy is needed.
    x = torch.randn(1, 3, 32, 40, requires_grad=True)
    net(x)["out"][0, :, 16, 20].sum().backward()
    plain = x.grad.abs().sum((0, 1)) > 0
    assert bool((plain & ~mask).sum() == 0)
    assert int(plain.sum()) < int(mask.sum())


def test_theoretical_field_is_clipped_by_the_image_border():
    mask = theoretical_support(ConvPoolStack(), (32, 40), (0, 0))
    assert bbox(mask) == (0, 0, 7, 7)  # rows 2*0-5 .. 2*0+6, clipped at 0


def test_vgg16_fc7_sees_404_pixels_and_global_context_sees_everything():
    """The well-known 404 x 404 field of VGG16's fc7, found without describing any layer."""
    fcn = FCN(5, variant="32s", caffe_padding=False, width=1 / 16, batch_norm=True)
    assert unclipped_extent(fcn, 512, layer="backbone.fc7") == (404, 404)
    parsenet = ParseNet(5, width=1 / 16, batch_norm=True)
    assert unclipped_extent(parsenet, 256) is None


def test_window_starts_cover_the_image():
    assert window_starts(16, 4, 4) == [0, 4, 8, 12]
    assert window_starts(17, 4, 4) == [0, 4, 8, 12, 13]
    assert window_starts(3, 4, 4) == [0]


def test_empirical_change_of_a_linear_unit_is_exactly_its_window():
    torch.manual_seed(0)
    net = Linear5x5().eval()
    images = torch.randn(2, 3, 16, 16)
    heat = empirical_heat(net, images, (8, 7), patch=1, stride=1)
    changed = heat > 1e-6 * heat.max()
    assert bbox(changed) == (6, 5, 5, 5)
    assert int(changed.sum()) == 25
    assert torch.equal(changed, theoretical_support(net, (16, 16), (8, 7)))


def test_prediction_flips_are_rates():
    torch.manual_seed(0)
    heat = empirical_heat(
        Linear5x5().eval(),
        torch.randn(2, 3, 12, 12),
        (6, 6),
        patch=2,
        stride=2,
        draws=3,
        measure="prediction",
    )
    assert heat.min() >= 0
    assert heat.max() <= 1
    assert heat[0, 0] == 0  # outside the window nothing can flip


def test_the_perturbation_counts_its_batches_on_a_progress_bar(monkeypatch):
    """A full CamVid frame takes minutes: the windows' batches go onto a progress bar, whose
    total is every batch the loop runs (2 images x 2 draws x ceil(12 windows / 5))."""
    from segbench.analysis import erf

    bars: list[dict[str, int]] = []

    class Bar:
        def __init__(self, total: int, **_: object) -> None:
            bars.append({"total": total, "done": 0})

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def update(self, n: int) -> None:
            bars[-1]["done"] += n

    monkeypatch.setattr(erf, "tqdm", Bar)
    images = torch.randn(2, 3, 12, 16)
    empirical_heat(Linear5x5().eval(), images, (6, 6), patch=4, stride=4, draws=2, batch_size=5)
    assert bars == [{"total": 12, "done": 12}]


def test_receptive_field_summarises_both_fields():
    torch.manual_seed(0)
    rf = receptive_field(
        Linear5x5(), torch.randn(2, 3, 16, 16), (8, 8), patch=1, stride=1, threshold=0.0, canvas=64
    )
    assert rf.theoretical.area == 25
    assert rf.measurable.area == 25
    assert rf.empirical.area == 16 * 16  # threshold 0 keeps every pixel
    assert rf.theoretical_extent == (5, 5)
    assert "5x5" in rf.markdown()


def test_the_colour_bar_of_a_landscape_heat_map_stays_beside_it():
    # On CamVid's 360 x 480 the colour bar took the axes' whole cell, rose above the heat map
    # and covered the end of its title; square synthetic scenes never showed it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    torch.manual_seed(0)
    rf = receptive_field(
        Linear5x5(), torch.randn(1, 3, 18, 24), (9, 12), patch=1, stride=1, canvas=0
    )
    rf.model = "a model with a long name, as a run directory's path is"
    fig = Figure(figsize=Erf.figsize)
    rf.plot(fig)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    heat = next(ax for ax in fig.axes if ax.get_title().startswith("a model"))
    bar = next(ax for ax in [*fig.axes, *heat.child_axes] if "mean change" in ax.get_ylabel())
    box, bar_box = heat.get_window_extent(renderer), bar.get_window_extent(renderer)
    assert bar_box.y1 <= box.y1 + 1
    assert bar_box.y0 >= box.y0 - 1
    assert not bar_box.overlaps(heat.title.get_window_extent(renderer))


def test_a_constant_output_is_explained():
    fresh = FCN(3, variant="32s", caffe_padding=False, width=1 / 16)  # zero-initialised scores
    with pytest.raises(ValueError, match="zero-initialised classifier"):
        receptive_field(fresh, torch.randn(1, 3, 32, 32), patch=16, stride=16, canvas=0)
    with pytest.raises(ValueError, match="no noise window flipped"):
        receptive_field(
            fresh, torch.randn(1, 3, 32, 32), patch=16, stride=16, canvas=0, measure="prediction"
        )


def test_cli_on_a_fresh_config_with_a_trunk_layer(tmp_path, capsys):
    args = tiny_args(tmp_path, extra=["--model.net.init_args.variant", "32s"])
    out = tmp_path / "erf"
    main([*args, "--layer", "backbone.fc7", "--images", "1", "--patch", "16", "--stride", "16",
          "--canvas", "0", "--out", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert "backbone.fc7 at pixel (y=32, x=32) of 64x64" in text
    data = json.loads((out / "erf.json").read_text())["quickstart"]
    assert data["theoretical"]["fraction"] == 1.0  # 404 px field, 64 px image
    assert 0 < data["empirical"]["fraction"] <= 1
    assert (out / "erf.png").stat().st_size > 0


def test_cli_on_a_trained_run(tmp_path, capsys):
    segbench(["fit", *tiny_args(tmp_path, name="trained", epochs=1)])
    run_dir = tmp_path / "test" / "trained"
    main([str(run_dir), "--images", "2", "--patch", "16", "--stride", "8", "--unit", "10", "50",
          "--canvas", "0", "--out", str(tmp_path / "t")])  # fmt: skip
    data = json.loads((tmp_path / "t" / "erf.json").read_text())["trained"]
    assert data["unit"] == [10, 50]
    assert data["measure"] == "score"
    assert "fresh" not in data["model"]
    assert (tmp_path / "t" / "erf.md").read_text().startswith("|  |  |\n|---|---|")
