"""The validation figure: labelled columns, a legend of every class, an error map, and examples
spread over the split (the same ones at every validation)."""

from __future__ import annotations

import numpy as np

from segbench.callbacks import SegmentationVisualizer
from segbench.visualize import ERROR_COLOURS, error_map, figure_to_array, val_examples_figure


def test_examples_are_spread_over_the_split_first_and_last_included():
    assert SegmentationVisualizer.picks(101, 4) == [0, 33, 67, 100]
    assert SegmentationVisualizer.picks(3, 4) == [0, 1, 2]  # fewer images than asked
    assert SegmentationVisualizer.picks(0, 4) == []
    assert SegmentationVisualizer.picks(10, 0) == []


def test_the_error_map_marks_wrong_correct_and_void_pixels():
    target = np.array([[0, 1], [255, 2]])
    pred = np.array([[0, 2], [1, 2]])
    colours = error_map(pred, target, 255)
    assert tuple(colours[0, 0]) == ERROR_COLOURS["correct"]
    assert tuple(colours[0, 1]) == ERROR_COLOURS["wrong"]
    assert tuple(colours[1, 0]) == ERROR_COLOURS["void"]  # void is never wrong
    assert tuple(colours[1, 1]) == ERROR_COLOURS["correct"]


def test_the_figure_labels_its_columns_rows_and_classes():
    rng = np.random.default_rng(0)
    names = ["road", "sky", "pole"]
    palette = [(128, 64, 128), (70, 130, 180), (153, 153, 153)]
    images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(2)]
    targets = [rng.integers(0, 3, (24, 32)) for _ in range(2)]
    preds = [t.copy() for t in targets]
    preds[1][:12] = (preds[1][:12] + 1) % 3  # the second row: its top half wrong
    fig = val_examples_figure(images, targets, preds, palette, names,
                              row_labels=["val #0", "val #9"], title="run")  # fmt: skip
    axes = fig.axes
    assert [ax.get_title() for ax in axes[:4]] == [
        "image", "ground truth", "prediction", "errors (red: wrong)"
    ]  # fmt: skip
    assert axes[0].get_ylabel() == "val #0\npixel acc 1.00"
    assert axes[4].get_ylabel() == "val #9\npixel acc 0.50"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [*names, "void"]
    picture = figure_to_array(fig)
    assert picture.dtype == np.uint8
    assert picture.ndim == 3
    assert picture.shape[2] == 3
