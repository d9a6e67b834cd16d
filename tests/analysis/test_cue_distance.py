"""segbench cue-distance: distances from a context class's pixels to its scene's cue."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from segbench.analysis.cue_distance import cue_distances, cue_pairs
from segbench.cli import main
from tests.helpers import REPO


def test_distances_are_euclidean_to_the_nearest_cue_pixel():
    label = torch.zeros(8, 12, dtype=torch.uint8)
    label[:, 0] = 2  # a cue column
    label[3, 5] = 1  # the class, 5 px right of it
    label[0, 11] = 3  # a second cue class: 3 px up and 6 right ... nearest is (0, 11) itself
    label[3, 11] = 1  # 3 px below the second cue
    d, images, without = cue_distances([label], {1: [2, 3]})[1]
    assert sorted(d.tolist()) == [3.0, 5.0]
    assert (images, without) == (1, 0)
    only_class = torch.ones(4, 4, dtype=torch.uint8)  # the class and no cue at all
    absent = torch.zeros(4, 4, dtype=torch.uint8)  # neither
    d, images, without = cue_distances([label, only_class, absent], {1: [2, 3]})[1]
    assert len(d) == 2 + 16
    assert np.isinf(d).sum() == 16
    assert (images, without) == (2, 1)


def test_the_tool_measures_the_synthetic_scenes_context_classes(tmp_path, capsys):
    out = tmp_path / "cue"
    main(["cue-distance", "--config", str(REPO / "experiments" / "quickstart.yaml"),
          "--data.init_args.num_val", "6", "--data.init_args.image_size", "[64, 64]",
          "--data.init_args.num_workers", "0", "--radii", "4", "200",
          "--out", str(out)])  # fmt: skip
    table = capsys.readouterr().out
    assert "| boat | water, sand |" in table
    assert "| car | road, building |" in table
    rows = json.loads((out / "cue-distance.json").read_text())["quickstart"]["classes"]
    for row in rows:
        if row["pixels"]:
            assert (
                row["percentiles"]["p10"] <= row["percentiles"]["p50"] <= row["percentiles"]["p90"]
            )
            # Nothing in a 64 x 64 image is 200 px from anything in it: only the pixels of
            # images without the cue are that far.
            if not row["images_without_cue"]:
                assert row["beyond"]["200"] == 0.0
            assert row["beyond"]["4"] >= row["beyond"]["200"]
        else:
            assert math.isnan(row["percentiles"]["p50"])
    assert (out / "cue-distance.png").stat().st_size > 1000


def test_cues_are_checked_against_the_class_names(capsys):
    args = ["cue-distance", "--config", str(REPO / "experiments" / "quickstart.yaml"),
            "--data.init_args.num_val", "2", "--data.init_args.image_size", "[32, 32]",
            "--data.init_args.num_workers", "0"]  # fmt: skip
    for cues, named in (("boat=lake", "no class 'lake'"), ("boat", "expected CLASS=CUE")):
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--cues", cues])
        assert exit_.value.code == 1
        assert named in capsys.readouterr().err


def test_several_cues_of_one_class_can_be_given_as_the_help_says(capsys):
    # The command line splits list items at commas: the documented `--cues boat=water,sand`
    # arrived as ["boat=water", "sand"] and was refused ("'sand': expected CLASS=CUE").
    assert cue_pairs(["boat=water", "sand", "car=road"]) == {
        "boat": ["water", "sand"],
        "car": ["road"],
    }
    assert cue_pairs(["boat=water,sand"]) == {"boat": ["water", "sand"]}
    main(["cue-distance", "--config", str(REPO / "experiments" / "quickstart.yaml"),
          "--data.init_args.num_val", "2", "--data.init_args.image_size", "[32, 48]",
          "--data.init_args.num_workers", "0", "--cues", "boat=water,sand"])  # fmt: skip
    assert "| boat | water, sand |" in capsys.readouterr().out


def test_the_legend_sits_beside_the_curves_not_on_them():
    """The curves end at 1 along the top of the axes, where a legend inside covered them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from segbench.analysis.cue_distance import ClassDistances, CueDistance

    classes = [
        ClassDistances(name, ["water"], 100, 2, 0, {}, {}, sample=list(np.linspace(0, 20, 100)))
        for name in ("boat", "car")
    ]
    fig = Figure()
    CueDistance(classes, (64, 64), 2, "val", [16, 64]).plot(fig)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    (ax,) = fig.axes
    legend = ax.get_legend().get_window_extent(canvas.get_renderer())
    assert not legend.overlaps(ax.get_window_extent(canvas.get_renderer()))
    assert "radii (--radii)" in [t.get_text() for t in ax.get_legend().get_texts()]
