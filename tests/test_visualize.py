"""The validation figure: four panels a row (image, ground truth, prediction, error map), a legend
of every class, and examples spread over the split (the same ones at every validation)."""

from __future__ import annotations

import numpy as np

from segbench.callbacks import SegmentationVisualizer
from segbench.visualize import ERROR_COLOURS, error_map, val_examples_figure


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


def test_the_figure_lays_out_four_panels_a_row_and_a_legend():
    rng = np.random.default_rng(0)
    names = ["road", "sky", "pole"]
    palette = [(128, 64, 128), (70, 130, 180), (153, 153, 153)]
    images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(2)]
    targets = [np.zeros((24, 32), np.int64), np.ones((24, 32), np.int64)]
    preds = [t.copy() for t in targets]
    preds[1][:12] = 2  # the second row: its top half wrong
    picture = val_examples_figure(images, targets, preds, palette, names, panel=64,
                                  row_labels=["val #0", "val #9"], title="run")  # fmt: skip
    pixels = np.asarray(picture)
    left, gap, top = 96, 6, 24 + 22
    assert picture.width == left + 4 * (64 + gap)
    panel_h = 48  # 24 x 32 scaled to 64 wide
    row2 = top + panel_h + gap

    def centre(row_top: int, column: int, dy: int = 0) -> tuple[int, ...]:
        return tuple(pixels[row_top + panel_h // 2 + dy, left + column * (64 + gap) + 32])

    assert centre(top, 1) == palette[0]  # ground truth of row 1: road
    assert centre(top, 2) == palette[0]  # prediction: road
    assert centre(top, 3) == ERROR_COLOURS["correct"]
    assert centre(row2, 1) == palette[1]
    assert centre(row2, 2, dy=-12) == palette[2]  # the wrong top half: pole
    assert centre(row2, 3, dy=-12) == ERROR_COLOURS["wrong"]
    assert centre(row2, 3, dy=12) == ERROR_COLOURS["correct"]
    below = pixels[row2 + panel_h + gap :]  # the legend: every class's colour (and void)
    for colour in [*palette, (40, 40, 40)]:
        assert (below == colour).all(axis=-1).any(), colour


def test_the_confusion_matrix_names_its_axes_and_its_colour_bar():
    from segbench.visualize import confusion_figure

    fig = confusion_figure(np.eye(3, dtype=np.int64) * 10 + 1, ["a", "b", "c"], "val")
    matrix, bar = fig.axes
    assert (matrix.get_xlabel(), matrix.get_ylabel()) == ("predicted", "true")
    assert "share" in bar.get_ylabel()  # what the colours mean, not a bare 0..1 scale


def test_void_is_drawn_in_a_colour_no_class_has():
    """Dark grey void passed for the synthetic scenes' black birds (and CamVid's dark olive
    pedestrians): void takes the first colour far from every class colour, in the label maps
    and in the legend alike."""
    from segbench.data.synthetic import PALETTE
    from segbench.visualize import VOID_DISTANCE, colourise, void_colour

    assert void_colour([(128, 64, 128), (70, 130, 180)]) == (40, 40, 40)  # dark grey when free
    void = void_colour(PALETTE)
    assert min(np.linalg.norm(np.subtract(c, void)) for c in PALETTE) >= VOID_DISTANCE
    labels = np.array([[0, 255], [len(PALETTE) - 1, 200]])
    colours = colourise(labels, PALETTE)
    assert tuple(colours[0, 1]) == tuple(colours[1, 1]) == void
    assert tuple(colours[1, 0]) == PALETTE[-1]
    names = [f"class {i}" for i in range(len(PALETTE))]
    image, target, pred = np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 255), np.zeros((8, 8))
    picture = val_examples_figure([image], [target], [pred.astype(np.int64)], PALETTE, names,
                                  panel=32)  # fmt: skip
    pixels = np.asarray(picture)
    assert (pixels[:, 96 + 38 : 96 + 70] == void).all(axis=-1).any()  # the ground truth panel
    assert (pixels[-40:] == void).all(axis=-1).any()  # the legend
