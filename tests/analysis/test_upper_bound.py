"""`segbench upper-bound`: the fast paths against the plain formulas, and the tool end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from segbench.analysis.upper_bound import evaluate_stride
from segbench.cli import main
from segbench.metrics import SegmentationMetrics
from segbench.models.layers import dupsample as D
from segbench.models.layers import label_basis as B
from tests.helpers import REPO

K = 4


def masks(n: int, seed: int) -> list[torch.Tensor]:
    """Blocky non-square label maps with some void, not a multiple of the strides."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, K, (n, 1, 6, 9), generator=gen).float()
    out = F.interpolate(coarse, size=(22, 35), mode="nearest")[:, 0].long()
    out[torch.rand(out.shape, generator=gen) < 0.05] = 255
    return list(out)


def miou(preds: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    m = SegmentationMetrics(K, 255)
    for p, t in zip(preds, targets, strict=True):
        m.update(p[None], t[None])
    return float(m.compute()["mIoU"])


@pytest.mark.parametrize("r", [2, 4, 8])
def test_fast_paths_equal_the_plain_formulas(r):
    train, val = masks(6, seed=0), masks(3, seed=1)
    dims = [K, 3 * K]
    basis = B.fit_pca(B.collect_patches(train, r, K, 255), dims[-1])
    got = {
        (x.method, x.dim): x.metrics["mIoU"]
        for x in evaluate_stride(
            val, r, num_classes=K, ignore_index=255, class_names="abcd", basis=basis, dims=dims
        )
    }
    want: dict[tuple[str, int | None], list[torch.Tensor]] = {}
    layer = D.DUpsample(dims[-1], K, r)
    for t in val:
        padded = B.pad_labels(t, r, 255)[None]
        onehot = F.one_hot(torch.where(padded == 255, K, padded), K + 1)[..., :K]
        onehot = onehot.permute(0, 3, 1, 2).float()
        cells = F.avg_pool2d(onehot, r)
        for mode in ("bilinear", "nearest"):
            kw = {"align_corners": False} if mode == "bilinear" else {}
            up = F.interpolate(cells, size=padded.shape[-2:], mode=mode, **kw)
            want.setdefault((mode, None), []).append(up.argmax(1)[0, : t.shape[0], : t.shape[1]])
        v = B.space_to_depth(onehot, r)
        for k in dims:  # through the layer the network uses
            code = torch.einsum("kn,bnyx->bkyx", basis.encoder[:k], v - basis.mean[:, None, None])
            layer.set_basis(F.pad(basis.weight[:, :k], (0, dims[-1] - k)), basis.mean)
            code = F.pad(code, (0, 0, 0, 0, 0, dims[-1] - k))
            with torch.no_grad():
                pred = layer(code).argmax(1)[0, : t.shape[0], : t.shape[1]]
            want.setdefault(("dupsample", k), []).append(pred)
    for key, preds in want.items():
        assert got[key] == pytest.approx(miou(preds, val), abs=1e-6), key


def test_full_rank_dupsample_is_perfect_and_bilinear_is_not():
    train, val = masks(6, seed=0), masks(3, seed=1)
    r = 4
    n = K * r * r
    basis = B.fit_pca(B.collect_patches(train + val, r, K, 255), n)
    res = evaluate_stride(
        val, r, num_classes=K, ignore_index=255, class_names="abcd", basis=basis, dims=[n]
    )
    by = {x.method: x.metrics["mIoU"] for x in res}
    assert by["dupsample"] == pytest.approx(1.0)
    assert by["bilinear"] < 1.0
    assert by["nearest"] < 1.0


def test_upper_bound_tool_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "ub"
    main(
        [
            "upper-bound",
            "--config",
            str(REPO / "experiments" / "dupsampling" / "synthetic" / "base.yaml"),
            "--data.init_args.num_train",
            "6",
            "--data.init_args.num_val",
            "3",
            "--data.init_args.image_size",
            "[64, 48]",
            "--data.init_args.num_workers",
            "0",
            "--strides",
            "4",
            "16",
            "--dims",
            "11",
            "44",
            "--out",
            str(out),
        ]
    )
    table = capsys.readouterr().out
    assert "| bilinear |" in table
    assert "| DUpsample k=44 |" in table
    assert "stride 16" in table
    assert "total" in table
    assert (out / "upper-bound.md").read_text() == table
    assert (out / "upper-bound.png").stat().st_size > 0
    rows = json.loads((out / "upper-bound.json").read_text())["base"]["results"]
    assert len(rows) == 2 * 4  # (bilinear, nearest, k=11, k=44) x 2 strides
    assert {r["method"] for r in rows} == {"bilinear", "nearest", "dupsample"}
    for r in rows:
        assert 0.0 <= r["metrics"]["mIoU"] <= 1.0
        assert "IoU/pole" in r["metrics"]


def test_the_legend_sits_beside_the_lines_not_on_them():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from segbench.analysis.upper_bound import Result, UpperBound

    results = [
        Result(method, r, dim, {"mIoU": value - r / 100})
        for method, dim, value in [("bilinear", None, 0.7), ("dupsample", 88, 0.95)]
        for r in (8, 16, 32)
    ]
    fig = Figure()
    UpperBound(results, ["a", "b"], title="t").plot(fig)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    (ax,) = fig.axes
    legend = ax.get_legend().get_window_extent(canvas.get_renderer())
    assert not legend.overlaps(ax.get_window_extent(canvas.get_renderer()))
    assert all([ax.get_xlabel(), ax.get_ylabel(), ax.get_title()])
