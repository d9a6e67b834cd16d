"""segbench feature-norms: exact norms on a network with known features, configs and run dirs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from segbench.analysis.feature_norms import feature_norms, main
from segbench.analysis.loading import load_model, sample_images
from segbench.cli import main as segbench
from segbench.models.base import pad_to_multiple
from tests.helpers import tiny_args


class KnownBackbone(nn.Module):
    """Features of known norm: 4 channels of value 3 (norm 6) at stride 2; 9 channels of value
    100 (norm 300) at stride 4; then a BN layer whose batch statistics are all that matter."""

    feature_names = ("low", "high")

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3, affine=False)

    def forward(self, x: Tensor) -> list[Tensor]:
        n, _, h, w = x.shape
        x = self.bn(x)
        return [
            torch.full((n, 4, h // 2, w // 2), 3.0) + 0 * x[:, :1, ::2, ::2],
            torch.full((n, 9, h // 4, w // 4), 100.0),
        ]


class KnownNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = KnownBackbone()
        self.head = nn.Identity()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.backbone(x)
        return {"out": self.head(x[:, :2] * 2)}


def test_norms_of_known_features():
    x = torch.randn(5, 3, 16, 24)
    rows = feature_norms(KnownNet(), x, modules=["head"], batch_size=2)
    assert [r.name for r in rows] == ["low", "high", "head"]
    low, high, head = rows
    assert low.mean == pytest.approx(6.0)
    assert low.std == pytest.approx(0.0, abs=1e-6)
    assert (low.channels, low.size, low.stride) == (4, (8, 12), 2.0)
    assert high.mean == pytest.approx(300.0)
    assert (high.channels, high.size, high.stride) == (9, (4, 6), 4.0)
    want = (2 * x[:, :2]).norm(dim=1)
    assert head.mean == pytest.approx(float(want.mean()), rel=1e-5)
    assert head.std == pytest.approx(float(want.std()), rel=1e-4)


class PaddingNet(nn.Module):
    """Pads the image to a multiple of 8 as the segbench networks do; its backbone's one map (a
    stride-2 average of a constant image) is 3 over the image and 0 over the padding."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = KnownBackbone()
        self.backbone.forward = lambda x: [3 * nn.functional.avg_pool2d(x[:, :1], 2)]  # type: ignore[method-assign]
        self.backbone.feature_names = ("low",)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        padded, _ = pad_to_multiple(x, 8)
        self.backbone(padded)
        return {"out": x}


def test_a_padded_non_square_image_has_true_strides_and_no_padding_in_the_means():
    # 18 x 20 (CamVid-like: not a multiple of the stride) is padded to 24 x 24: the map is 12 x 12
    # at stride 2, not 18 / 12 = 1.5, and its last 3 rows and 2 columns are the padding's.
    rows = feature_norms(PaddingNet(), torch.ones(2, 3, 18, 20))
    (low,) = rows
    assert low.stride == 2.0
    assert low.size == (9, 10)
    assert low.mean == pytest.approx(3.0)
    assert low.std == pytest.approx(0.0, abs=1e-6)


def test_batch_statistics_mode_leaves_the_network_as_it_was():
    net = KnownNet()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    feature_norms(net, torch.randn(4, 3, 8, 8) * 5 + 3, bn="batch")
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training for m in net.modules())


def test_an_unknown_module_is_named():
    with pytest.raises(ValueError, match="no module 'nope'"):
        feature_norms(KnownNet(), torch.randn(1, 3, 8, 8), modules=["nope"])


def test_cli_on_a_fresh_parsenet_config(tmp_path, capsys):
    args = tiny_args(
        tmp_path,
        extra=[
            "--model.net",
            "segbench.models.ParseNet",
            "--model.net.init_args.width",
            "0.0625",
            "--model.net.init_args.batch_norm",
            "true",
        ],
    )
    main([*args, "--images", "4", "--modules", "pool6", "norms.fc7", "--out", str(tmp_path / "n")])
    text = capsys.readouterr().out
    for layer in ("pool1", "pool5", "fc7", "pool6", "norms.fc7"):
        assert f"| {layer} |" in text
    assert "batch norm: batch statistics" in text
    data = json.loads((tmp_path / "n" / "feature-norms.json").read_text())["quickstart"]
    norms = {r["name"]: r["mean"] for r in data["layers"]}
    assert norms["norms.fc7"] == pytest.approx(10.0, rel=1e-3)  # the scale's initial value
    assert all(v > 0 for v in norms.values())
    assert (tmp_path / "n" / "feature-norms.png").stat().st_size > 0
    assert (tmp_path / "n" / "feature-norms.md").read_text().startswith("Feature norms")


def test_cli_on_a_trained_run_uses_its_checkpoint(tmp_path, capsys):
    segbench(["fit", *tiny_args(tmp_path, name="trained", epochs=1)])
    run_dir = tmp_path / "test" / "trained"
    main([str(run_dir), "--images", "3", "--out", str(tmp_path / "t")])
    assert "batch norm: running statistics" in capsys.readouterr().out
    data = json.loads((tmp_path / "t" / "feature-norms.json").read_text())["trained"]
    got = {r["name"]: r["mean"] for r in data["layers"]}
    # The same numbers by hand: the checkpoint's weights, eval mode, the first 3 val images.
    loaded = load_model([str(run_dir)])
    state = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(loaded.net.state_dict()["score_fr.weight"], state["net.score_fr.weight"])
    want = feature_norms(loaded.net, sample_images(loaded.datamodule, 3))
    assert got == pytest.approx({r.name: r.mean for r in want})
    fresh = load_model(["--config", str(run_dir / "config.yaml")]).net.state_dict()[
        "score_fr.weight"
    ]
    assert not torch.equal(fresh, state["net.score_fr.weight"])


@pytest.mark.parametrize("means", [[1.4, 3.9, 0.96], [0.01, 3.0, 2000.0]])
def test_the_bars_axis_reads_as_plain_numbers_with_room_for_the_values(means):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from segbench.analysis.feature_norms import FeatureNorms, LayerNorm

    layers = [LayerNorm(f"l{i}", 8, (4, 4), 8.0, m, 0.1) for i, m in enumerate(means)]
    fig = Figure()
    FeatureNorms("t", layers).plot(fig)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    (ax,) = fig.axes
    ticks = [t.get_text() for t in ax.get_yticklabels(which="both") if t.get_text()]
    assert ticks
    assert not [t for t in ticks if "times" in t or "^" in t], ticks  # not 4 x 10^0
    inside = ax.get_window_extent(canvas.get_renderer())
    for text in ax.texts:  # each bar's value below the top of the axes
        assert text.get_window_extent(canvas.get_renderer()).y1 <= inside.y1
