"""segbench report: grouping by seed, mean ± std, differing config columns, paper numbers."""

from __future__ import annotations

import csv
import json
import os
import statistics
from pathlib import Path

import pytest

from segbench.rundir import RunDir
from segbench.rundir import atomic_write_json as write_json
from segbench.study.render import render_report
from segbench.study.report import report


def fake_run(root: Path, variant: str, seed: int, miou: float) -> None:
    config = {
        "model.net.init_args.variant": variant,
        "seed_everything": seed,
        "run.name": f"fcn{variant}-s{seed}",
        "trainer.max_epochs": 5,
        "data.init_args.num_workers": seed,
    }  # bookkeeping keys never make columns
    write_json_dir = root / f"fcn{variant}-s{seed}"
    write_json_dir.mkdir(parents=True)
    write_json(
        write_json_dir / "metrics.json",
        {
            "config": config,
            "provenance": {"effective_batch": 16 if seed else 8, "versions": {"torch": "2.14.1"}},
            "fit": {
                "best_val": {"val/mIoU": miou + 0.01, "epoch": 3},
                "val": {"val/mIoU": miou},
                "test": {"test/mIoU": miou, "test/pixel_acc": 0.9, "test/IoU/boat": None},
            },
            # A later `segbench test` command has its own section: never a report's number.
            "test": {"metrics": {"test/mIoU": 0.0}, "checkpoint": "last.ckpt"},
        },
    )


SCORES = {"32s": [0.50, 0.52, 0.54], "8s": [0.60, 0.61]}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    for variant, values in SCORES.items():
        for seed, v in enumerate(values):
            fake_run(tmp_path / "runs", variant, seed, v)
    return tmp_path / "runs"


def test_rows_group_seeds_with_mean_and_std(runs):
    text = report([str(runs)], metrics=["test/mIoU", "val/mIoU"])
    lines = text.strip().splitlines()
    assert lines[0] == "| run | variant | n | test/mIoU (%) | val/mIoU (%) |"
    m32, s32 = statistics.fmean(SCORES["32s"]), statistics.stdev(SCORES["32s"])
    assert (
        f"| fcn32s | 32s | 3 | {100 * m32:.2f} ± {100 * s32:.2f} | "
        f"{100 * (m32 + 0.01):.2f} ± {100 * s32:.2f} |" in lines
    )
    assert any(line.startswith("| fcn8s | 8s | 2 | 60.50 ± 0.71 |") for line in lines)


def test_a_run_set_aside_by_an_overwrite_is_not_reported(runs, caplog):
    """``fit --run.overwrite`` (every new run of a sweep) moves the earlier run aside to
    ``.NAME.replaced-TIME`` until the new one trains, and a kill meanwhile leaves it there. Found
    live (a report while a sweep started a run again): the report took it for a run, 'stopped',
    beside the new one; of a finished run, its old numbers were averaged in as the same seed."""
    aside = runs / ".fcn8s-s0.replaced-20261207-183028"
    (runs / "fcn8s-s0").rename(aside)
    fake_run(runs, "8s", 0, 0.10)  # the new run, under the same name and seed
    text = report([str(runs)], metrics=["test/mIoU"])
    assert any(line.startswith("| fcn8s | 8s | 2 | 35.50 ± 36.06 |") for line in text.splitlines())
    assert "runs of seed 0" not in caplog.text
    named = report([str(aside)], metrics=["test/mIoU"])  # read when named
    assert "| fcn8s | 1 | 60.00 |" in named


def test_runs_of_one_seed_count_once(tmp_path, caplog):
    """Four runs of the same config and seed under other names are one seed (their mean), not
    n = 4 with a spread of 0: n and the spread are what the claims' statistics read."""
    for name, miou, seed in (("a", 0.60, 0), ("b", 0.61, 0), ("c", 0.62, 0), ("d", 0.63, 0),
                             ("e", 0.70, 1)):  # fmt: skip
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        config = {"seed_everything": seed, "run.name": name, "trainer.max_epochs": 5}
        write_json(run / "metrics.json", {"config": config, "fit": {"test": {"test/mIoU": miou}}})
    text = report([str(tmp_path / "runs")], metrics=["test/mIoU"])
    assert "| a | 2 | 65.75 ± 6.01 |" in text.splitlines()  # seeds 0 (61.50) and 1 (70.00)
    paths = ", ".join(str(tmp_path / "runs" / n) for n in "abcd")
    assert f"a: 4 runs of seed 0 with the same config ({paths}): counted as one seed" in caplog.text


def test_files_and_paper_columns(runs, tmp_path):
    paper = tmp_path / "paper.yaml"
    paper.write_text(
        "source: FCN table 2\nkey: model.net.init_args.variant\n"
        "rows:\n  32s: {mIoU: 59.4}\n  8s: {mIoU: 62.7}\n"
    )
    out = tmp_path / "results" / "fcn"
    text = report([str(runs / "*")], out=str(out), paper=str(paper), title="FCN skips")
    assert "paper mIoU" in text.splitlines()[0]
    assert "| 59.4 |" in text
    assert "FCN table 2" in text
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [r["run"] for r in rows] == ["fcn32s", "fcn8s"]
    assert float(rows[1]["test/mIoU_mean"]) == pytest.approx(0.605)
    assert rows[1]["test/mIoU_n"] == "2"
    assert out.with_suffix(".png").stat().st_size > 1000
    data = json.loads(out.with_suffix(".json").read_text())  # the report as data
    assert out.with_suffix(".md").read_text() == "# FCN skips\n\n" + render_report(data)
    assert data["title"] == "FCN skips"
    assert [r["label"] for r in data["rows"]] == ["fcn32s", "fcn8s"]
    eight = data["rows"][1]
    assert eight["config"] == {"model.net.init_args.variant": "8s"}
    assert eight["metrics"]["test/mIoU"]["mean"] == pytest.approx(0.605)
    assert eight["metrics"]["test/mIoU"]["n"] == 2
    assert len(eight["runs"]) == 2
    assert all(
        r["name"].startswith("fcn8s-") and "test/mIoU" in r["metrics"] for r in eight["runs"]
    )


def test_a_report_killed_while_drawing_keeps_the_earlier_files_and_never_mixes_two(
    runs, tmp_path, monkeypatch
):
    """Found by SIGKILLing `segbench report --out` while it drew its figure: the json, md and
    csv of the new report had been renamed into place already, beside the earlier report's
    figures (one run's bars beside a two-run table). The files are now one version: a report
    that dies while drawing leaves every earlier file as it was, no temporary file; and a figure
    this report does not have (no curves here) is not left from an earlier report."""
    import segbench.study.report as report_module

    out = tmp_path / "results" / "fcn"
    report([str(runs / "fcn32s-*")], out=str(out))
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert sorted(before) == ["fcn.csv", "fcn.json", "fcn.md", "fcn.png"]

    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # a Ctrl-C while the bars are drawn

    monkeypatch.setattr(report_module, "draw_bars", dies)
    with pytest.raises(KeyboardInterrupt):
        report([str(runs / "*")], out=str(out))
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before

    monkeypatch.undo()
    (out.parent / "fcn_curves.png").write_bytes(before["fcn.png"])  # an earlier report's curves
    report([str(runs / "*")], out=str(out))
    assert sorted(p.name for p in out.parent.iterdir()) == ["fcn.csv", "fcn.json", "fcn.md",
                                                            "fcn.png"]  # fmt: skip


def test_paper_rows_by_variant_name(runs, tmp_path):
    paper = tmp_path / "paper.yaml"
    paper.write_text("key: variant\nrows:\n  fcn8s: {mIoU: 62.7}\n")
    lines = report([str(runs / "*")], paper=str(paper)).splitlines()
    assert lines[2].startswith("| fcn32s |")
    assert lines[2].endswith("| – |")
    assert lines[3].startswith("| fcn8s |")
    assert lines[3].endswith("| 62.7 |")


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no metrics\.json"):
        report([str(tmp_path)])


def test_missing_values_show_as_dashes(runs):
    assert "| – |" in report([str(runs)], metrics=["test/IoU/boat"])


def test_metrics_file_round_trips(tmp_path):
    write_json(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}


def test_analysis_values_are_columns_and_paper_rows_match_by_run(runs, tmp_path):
    RunDir(runs / "fcn8s-s0").record("gridding", {"gridding/impulse": 2.5}, checkpoint="b")
    RunDir(runs / "fcn8s-s1").record(
        "gridding", {"gridding/impulse": 3.5, "other": 1}, checkpoint="b"
    )
    data = json.loads((runs / "fcn8s-s1" / "metrics.json").read_text())
    assert data["fit"]["test"]["test/mIoU"] == 0.61  # the rest of the file is kept
    record = data["records"]["gridding"]
    assert record["values"] == {"gridding/impulse": 3.5, "other": 1.0}
    assert record["checkpoint"] == "b"  # which checkpoint was measured
    paper = tmp_path / "paper.yaml"
    paper.write_text("key: variant\nrows:\n  fcn8s: {top1_err: 24.9}\n")
    text = report([str(runs)], metrics=["gridding/impulse"], paper=str(paper))
    assert "| fcn8s | 8s | 2 | 3.00 ± 0.71 | 24.9 |" in text
    assert "| fcn32s | 32s | 3 | – | – |" in text


def test_record_analysis_needs_a_run(tmp_path):
    with pytest.raises(FileNotFoundError):
        RunDir(tmp_path).record("t", {"x": 1.0}, checkpoint="c")


def test_provenance_columns_show_each_rows_values(runs):
    text = report([str(runs)], metrics=["test/mIoU"], provenance=["effective_batch"])
    assert text.splitlines()[0] == "| run | variant | effective_batch | n | test/mIoU (%) |"
    assert "| fcn8s | 8s | 16, 8 | 2 |" in text  # seed 0 ran with another batch: it shows


def test_runs_written_before_sections_still_read(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    write_json(
        run / "metrics.json",
        {
            "config": {"model.net.init_args.variant": "8s"},
            "best_val": {"val/mIoU": 0.5},
            "test": {"test/mIoU": 0.4},
            "analysis": {"gridding/impulse": 1.5},
        },
    )
    text = report([str(run)], metrics=["test/mIoU", "val/mIoU", "gridding/impulse"])
    assert "| 40.00 | 50.00 | 1.50 |" in text


def test_a_corrupt_metrics_file_is_named(runs):
    bad = runs / "fcn8s-s0" / "metrics.json"
    bad.write_text('{"config": ')
    with pytest.raises(Exception, match=r"fcn8s-s0/metrics.json: not valid JSON"):
        report([str(runs)])


def write_history(run_dir: Path, rows: list[tuple[int, str, str]]) -> None:
    """A Lightning-style metrics.csv: (epoch, val/mIoU, train/loss_epoch) per row, '' = absent."""
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/loss_step", "val/mIoU", "train/loss_epoch"])
        for epoch, miou, loss in rows:
            w.writerow([epoch, 10 * epoch + 9, "0.9", miou, loss])


def test_learning_curve_per_epoch_last_value_wins(tmp_path):
    from segbench.study.runs import learning_curve

    # epoch 1 logged twice: the run died after its validation and resumed in epoch 1
    write_history(tmp_path, [(0, "0.2", ""), (0, "", "1.5"), (1, "0.3", "1.2"), (1, "0.35", "")])
    assert learning_curve(tmp_path) == {0: 0.2, 1: 0.35}
    assert learning_curve(tmp_path, "train/loss_epoch") == {0: 1.5, 1: 1.2}
    assert learning_curve(tmp_path / "missing") == {}


def test_a_row_still_being_appended_is_left_off_the_learning_curve(tmp_path):
    """A report read beside a run still training: the row the fit is appending is half written
    ('0.4' of '0.4521'), and was read as epoch 2's value."""
    from segbench.study.runs import learning_curve

    write_history(tmp_path, [(0, "0.2", ""), (1, "0.3", "")])
    csv_file = tmp_path / "metrics.csv"
    whole = csv_file.read_text()
    row = "2,29,0.9,0.4521,"  # epoch 2's, as the fit appends it
    csv_file.write_text(whole + row[: row.index("0.4521") + 3])
    assert learning_curve(tmp_path) == {0: 0.2, 1: 0.3}
    csv_file.write_text(whole + row + "\n")  # once it is whole
    assert learning_curve(tmp_path)[2] == 0.4521


def test_a_later_validate_of_a_checkpoint_leaves_the_learning_curve_alone(tmp_path):
    from segbench.study.runs import learning_curve

    # What `segbench validate --ckpt_path best` appended to a real CamVid run's metrics.csv after
    # fit: the best checkpoint's val/mIoU as epoch 0, step 0, which replaced epoch 0's 0.05.
    with (tmp_path / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "val/mIoU", "test/mIoU"])
        w.writerows([[0, 14, 0.05, ""], [1, 29, 0.15, ""], [0, 0, 0.15, ""], [0, 0, "", 0.14]])
    assert learning_curve(tmp_path) == {0: 0.05, 1: 0.15}


def test_curves_figure_means_over_seeds(runs, tmp_path):
    from matplotlib.figure import Figure

    from segbench.study.render import draw_curves
    from segbench.study.runs import group_runs, load_run

    out = tmp_path / "results" / "fcn"
    report([str(runs)], out=str(out))
    assert not (out.parent / "fcn_curves.png").exists()  # no run has a history
    for seed, (a, b) in enumerate([("0.2", "0.4"), ("0.3", "0.6")]):
        write_history(runs / f"fcn8s-s{seed}", [(0, a, "1.0"), (1, b, "0.5")])
    report([str(runs)], out=str(out))
    assert (out.parent / "fcn_curves.png").stat().st_size > 1000
    rows, _ = group_runs([load_run(p) for p in sorted(runs.glob("*/metrics.json"))])
    fig = Figure()
    draw_curves(fig, rows)
    val_axis = fig.axes[0]
    (line,) = val_axis.get_lines()  # only fcn8s has curves
    assert list(line.get_xdata()) == [0, 1]
    assert list(line.get_ydata()) == pytest.approx([25.0, 50.0])
    assert line.get_label() == "fcn8s (n=2)"
    assert val_axis.get_ylabel() == "val/mIoU (%)"


class _Row:
    """What the figures read of a report's row."""

    def __init__(self, label: str, mean: float, curve: dict[int, float]):
        self.label, self.mean, self.curve = label, mean, curve

    def mean_std(self, metric):
        return self.mean, 0.02, 3

    def curves(self, key):
        return [self.curve, {e: v + 0.01 for e, v in self.curve.items()}]


def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def test_bars_write_each_value_past_its_error_bar_and_stay_a_readable_size():
    from matplotlib.figure import Figure

    from segbench.study.render import bars_size, draw_bars

    rows = [_Row(f"variant {i}", 0.5 + 0.01 * i, {}) for i in range(6)]
    fig = Figure(figsize=bars_size(rows))
    draw_bars(fig, rows, "test/mIoU", "t")
    renderer = _drawn(fig)
    ax = fig.axes[0]
    values = [t for t in ax.texts if "(n=3)" in t.get_text()]
    assert len(values) == len(rows)
    for i, (row, text) in enumerate(zip(rows, values, strict=True)):
        bar_end = ax.transData.transform((100 * (row.mean + 0.02), i))[0]
        box = text.get_window_extent(renderer)
        assert box.x0 >= bar_end, f"row {i}: its value is drawn over its error bar"
        assert box.x1 <= ax.get_window_extent(renderer).x1, f"row {i}: its value leaves the axes"
    # a report of many rows is not a figure metres tall
    assert bars_size([rows[0]] * 500)[1] <= 16


def test_the_curves_legend_is_beside_the_panels_not_over_them():
    from matplotlib.figure import Figure

    from segbench.study.render import curves_size, draw_curves

    rows = [_Row(f"variant {i}", 0.5, {e: 0.1 * e + 0.01 * i for e in range(1, 6)})
            for i in range(12)]  # fmt: skip
    fig = Figure(figsize=curves_size())
    draw_curves(fig, rows, title="t")
    renderer = _drawn(fig)
    legends = [a.get_legend() for a in fig.axes if a.get_legend() is not None]
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), "the legend covers a panel"
    # past the ten colours of the cycle a line differs by its style
    keys = {(line.get_color(), line.get_linestyle()) for line in fig.axes[0].get_lines()}
    assert len(keys) == len(rows)


def test_resumed_runs_group_with_fresh_ones(runs):
    # A resumed run's config holds the values linked from the data module (LightningCLI loads the
    # checkpoint's hyperparameters); a fresh run's leaves them unset. Same configuration.
    path = runs / "fcn8s-s1" / "metrics.json"
    data = json.loads(path.read_text())
    data["config"].update(
        {"model.num_classes": 11, "model.class_names": ["a", "b"], "model.ignore_index": 255}
    )
    write_json(path, data)
    lines = report([str(runs)], metrics=["test/mIoU"]).strip().splitlines()
    assert lines[0] == "| run | variant | n | test/mIoU (%) |"
    assert sum(line.startswith("| fcn8s |") for line in lines) == 1


def test_keys_missing_from_older_runs_do_not_split_rows(runs):
    # fcn8s-s0 ran before segbench had `test_protocol`; the others have its (one) value.
    for path in runs.glob("*/metrics.json"):
        if path.parent.name != "fcn8s-s0":
            data = json.loads(path.read_text())
            data["config"]["model.test_protocol.mode"] = "whole"
            write_json(path, data)
    lines = report([str(runs)], metrics=["test/mIoU"]).strip().splitlines()
    assert lines[0] == "| run | variant | n | test/mIoU (%) |"
    assert any(line.startswith("| fcn8s | 8s | 2 |") for line in lines)
    # ... but a key with two values among the runs that have it is a column, missing = None
    data = json.loads((runs / "fcn32s-s0" / "metrics.json").read_text())
    data["config"]["model.test_protocol.mode"] = "slide"
    write_json(runs / "fcn32s-s0" / "metrics.json", data)
    lines = report([str(runs)], metrics=["test/mIoU"]).strip().splitlines()
    assert lines[0] == "| run | variant | test_protocol.mode | n | test/mIoU (%) |"
    assert sum(line.startswith("| fcn8s |") for line in lines) == 2


def test_a_metric_no_run_logs_is_named(runs, caplog):
    with caplog.at_level("WARNING", logger="segbench"):
        text = report([str(runs)], metrics=["test/mIoU", "test/mIOU"])
    assert "| test/mIOU |" in text.splitlines()[0]  # the column stays, empty
    assert "--metrics test/mIOU: no run here has it" in caplog.text
    assert "did you mean test/mIoU" in caplog.text


def test_runs_that_did_not_finish_are_named_under_the_table(runs, caplog):
    def stop(name: str, change) -> None:
        path = runs / name / "metrics.json"
        data = json.loads(path.read_text())
        change(data)
        write_json(path, data)

    def interrupted(d: dict) -> None:
        d["fit"].update(finished=False, completed_epochs=2)
        d["provenance"]["attempts"] = [{"interrupted": "SIGTERM"}]

    stop("fcn8s-s1", interrupted)
    stop("fcn32s-s2", lambda d: d["fit"].update(finished=False, completed_epochs=1))
    stop("fcn32s-s0", lambda d: d["fit"].update(finished=True))
    stop("fcn8s-s0", lambda d: d["fit"].update(finished=False, completed_epochs=1))

    def testing(d: dict) -> None:  # trained; its fit tests the best checkpoint now
        d["fit"].update(finished=True, completed_epochs=5)
        d["fit"].pop("test")
        d["config"]["run.test_after_fit"] = True

    stop("fcn32s-s1", testing)
    claims = [RunDir(runs / n).writer() for n in ("fcn8s-s0", "fcn32s-s1")]  # fits (this process)
    try:
        with caplog.at_level("WARNING", logger="segbench"):
            text = report([str(runs)])
    finally:
        for claim in claims:
            claim.release()
    assert "**Not finished: 4 of 5 runs**" in text
    assert f"fcn8s-s0 still training after 1 epoch, by pid {os.getpid()} on " in text
    assert "fcn8s-s1 interrupted (SIGTERM) after 2 epochs" in text
    assert "fcn32s-s2 stopped after 1 epoch (killed, failed or running)" in text
    assert f"fcn32s-s1 trained, its test after fit still running, by pid {os.getpid()} on " in text
    assert "fcn32s-s0" not in text.split("Not finished")[1]
    assert "4 of 5 runs did not finish training" in caplog.text
    # Once its fit has ended (tested or not), it is finished.
    assert "fcn32s-s1" not in report([str(runs)]).split("Not finished")[1]


def test_a_separate_test_of_the_runs_checkpoint_on_its_own_data_is_reported(tmp_path, caplog):
    """A run fitted with ``run.test_after_fit false`` and tested later by ``segbench test``:
    its test numbers are the run's when they measured one of its checkpoints on its own data (a
    warning says when that is not the best, e.g. CamVid's final model, tested at its last); a
    test of another run's checkpoint or of other data is left out, and the report says why."""
    cases = {
        "own": ("runs/own/checkpoints/best.ckpt", {}, 0.61),
        "last": ("copied/last/checkpoints/last.ckpt", {}, 0.62),
        "foreign": ("runs/own/checkpoints/best.ckpt", {}, 0.65),
        "other": ("runs/other/checkpoints/best.ckpt", {"data.init_args.root": ["a", "b"]}, 0.63),
        "unknown": ("runs/unknown/checkpoints/best.ckpt", None, 0.64),
    }
    for i, (name, (checkpoint, changes, miou)) in enumerate(cases.items()):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        write_json(
            run / "metrics.json",
            {
                "config": {"run.name": name, "model.lr": i},
                "fit": {"best_val": {"val/mIoU": 0.5}, "finished": True},
                "test": {
                    "metrics": {"test/mIoU": miou, "val/mIoU": 0.1},
                    "checkpoint": str(tmp_path / checkpoint),
                    "data_changes": changes,
                },
            },
        )
    assert RunDir(tmp_path / "runs" / "own").results() == {"val/mIoU": 0.5, "test/mIoU": 0.61}
    text = report([str(tmp_path / "runs")], metrics=["test/mIoU"])
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert "61.00" in rows["own"]
    assert "62.00" in rows["last"]
    for name in ("foreign", "other", "unknown"):
        assert "| – |" in rows[name], rows[name]
    assert "last: its test numbers are of last.ckpt (segbench test), not best.ckpt" in caplog.text
    assert f"foreign: its test section is left out of the report: it measured {tmp_path}" in (
        caplog.text
    )
    assert "other data than the run trained on (data.init_args.root)" in caplog.text
    assert "does not say which data it measured on" in caplog.text
    assert "/own:" not in caplog.text


def test_numbers_of_a_checkpoint_trained_on_since_are_left_out(tmp_path, caplog):
    """A ``segbench test`` of last.ckpt, then the run resumed for more epochs (CamVid's final
    model, ``test_after_fit false``): the test section, and a tool's record of best.ckpt, stayed
    in metrics.json and read as the retrained model's numbers. Each keeps the step of the
    checkpoint it measured; one whose file has moved on since is left out, with a warning that
    says why. A run copied elsewhere (other mtimes, the same checkpoints) keeps its numbers."""
    import os

    import torch

    from segbench.rundir import checkpoint_step
    from segbench.study.plan import recorded_for_current_checkpoint

    run = RunDir(tmp_path / "runs" / "final")
    run.checkpoints.mkdir(parents=True)
    for name in ("last", "best"):
        torch.save({"global_step": 40, "state_dict": {}}, run.checkpoint(name))
    write_json(
        run.metrics_file,
        {
            "config": {"run.name": "final"},
            "fit": {"best_val": {"val/mIoU": 0.5}, "finished": True},
            "test": {
                "metrics": {"test/mIoU": 0.61},
                "checkpoint": str(run.checkpoint("last")),
                "checkpoint_step": checkpoint_step(run.checkpoint("last")),
                "data_changes": {},
            },
        },
    )
    run.record("erf", {"erf/area": 0.3}, checkpoint=run.checkpoint("best"), options=[])
    assert run.results() == {"val/mIoU": 0.5, "test/mIoU": 0.61, "erf/area": 0.3}
    for name in ("last", "best"):  # copied: new mtimes, same files
        os.utime(run.checkpoint(name), (1, 1))
    assert run.results() == {"val/mIoU": 0.5, "test/mIoU": 0.61, "erf/area": 0.3}
    assert recorded_for_current_checkpoint(run, "erf", [])

    for name in ("last", "best"):  # trained on: the same names hold later states
        torch.save({"global_step": 80, "state_dict": {}}, run.checkpoint(name))
    assert run.results() == {"val/mIoU": 0.5}
    assert not recorded_for_current_checkpoint(run, "erf", [])
    with caplog.at_level("WARNING", logger="segbench"):
        text = report([str(tmp_path / "runs")], metrics=["test/mIoU", "erf/area"])
    assert "| – | – |" in text
    assert (
        "its test section is left out of the report: it measured last.ckpt of step 40, and "
        "last.ckpt is now of step 80 (trained on since); run segbench test again"
    ) in caplog.text
    assert "its erf record is left out: it measured best.ckpt of step 40" in caplog.text
    run.checkpoint("last").unlink()
    assert "it measured last.ckpt, which this run no longer holds" in run.notes()[0]
