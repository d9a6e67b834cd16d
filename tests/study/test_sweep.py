"""segbench sweep: an ablation end to end (its steps, variants x seeds, report, and a second call
that skips done runs; tests/study/test_launchers.py runs a grid two at a time), and its parts."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from segbench.rundir import RunDir
from segbench.study.ablation import RECORDS
from segbench.study.launchers.local import ProcessLauncher
from segbench.study.plan import fit_command, run_state
from segbench.study.runs import METRICS_FILE
from tests.helpers import REPO, segbench_in_process, segbench_log


def test_interrupted_runs_resume_from_last(tmp_path):
    run = tmp_path / "g" / "v-s1"
    assert run_state(run) == "new"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert run_state(run) == "partial"
    cmd = fit_command(
        base=["b.yaml"],
        variant="x/v.yaml",
        seed=1,
        group="g",
        root=str(tmp_path),
        extra=["--trainer.max_epochs", "3"],
        resume=True,
    )
    assert cmd[cmd.index("--ckpt_path") + 1] == "last"
    assert "--run.overwrite" not in cmd
    assert cmd[-2:] == ["--trainer.max_epochs", "3"]
    assert Path(cmd[cmd.index("--config", cmd.index("b.yaml")) + 1]).name == "v.yaml"


def test_every_ablation_yaml_loads_with_its_files():
    from segbench.study.ablation import find_ablations

    found = find_ablations(REPO / "experiments")
    assert {"fcn", "parsenet", "degridding", "upsampler", "gald"} <= set(found)
    for ablation in found.values():
        for scale in ["cpu", *(p.stem[len("_scale_") :] for p in ablation.folder.glob("_scale_*"))]:
            base, variants = ablation.configs(scale)
            assert all(Path(p).is_file() for p in [*base, *variants])
        if ablation.paper:
            assert (ablation.folder / ablation.paper).is_file()


def test_the_analysis_records_a_claim_may_name_are_the_tools():
    """RECORDS (the prefixes of what segbench TOOL --record stores) are those the analysis
    tools' summaries write: read from their source."""
    import re

    written = set()
    for path in (REPO / "segbench" / "analysis").glob("*.py"):
        written |= set(re.findall(r'f?"([a-z_]+)/[{\w]', path.read_text()))
    assert set(RECORDS) == written


def test_an_ablation_is_found_by_name_or_paper_and_typos_are_named(tmp_path):
    import pytest

    from segbench.errors import ConfigError
    from segbench.study.ablation import find_ablation

    folder = tmp_path / "probe" / "synthetic"
    (folder / "variants").mkdir(parents=True)
    (folder / "base.yaml").write_text("{}\n")
    (folder / "variants" / "a.yaml").write_text("{}\n")
    (folder / "ablation.yaml").write_text("name: probing\ngroup: probe\n")
    assert find_ablation("probing", tmp_path).group == "probe"
    assert find_ablation("probe", tmp_path).name == "probing"  # by its paper's folder
    # A second set of the paper (real data): the paper's folder still means its synthetic set.
    other = tmp_path / "probe" / "camvid"
    other.mkdir()
    (other / "ablation.yaml").write_text("name: probing-camvid\ngroup: probe-camvid\n")
    assert find_ablation("probe", tmp_path).name == "probing"
    assert find_ablation("probing-camvid", tmp_path).group == "probe-camvid"
    with pytest.raises(ConfigError, match="no ablation 'nope'"):
        find_ablation("nope", tmp_path)
    # segbench run outside the repository: the default, relative, names where it looked and why.
    with pytest.raises(ConfigError, match=r"experiments \(/.+/experiments\) is not a folder; run "):
        find_ablation("probing", Path(os.path.relpath(tmp_path / "elsewhere" / "experiments")))
    (folder / "ablation.yaml").write_text("name: probing\ngroup: probe\nmetrix: [a]\n")
    with pytest.raises(ConfigError, match=r"unknown keys \['metrix'\]"):
        find_ablation("probing", tmp_path)


def test_an_ablation_sweep_runs_its_steps_and_skips_recorded_runs(tmp_path, monkeypatch):
    """A probe ablation: one variant x one seed, a step after each run (gridding --record) and
    a step after all; a second call skips the run and the recorded step."""
    folder = tmp_path / "experiments" / "probe" / "synthetic"
    (folder / "variants").mkdir(parents=True)
    (folder / "base.yaml").write_text((REPO / "experiments" / "quickstart.yaml").read_text())
    # The tiny schedule as a scale of the ablation (a scale's runs are the recipe's, so their
    # table goes into RESULTS.md; fit arguments after -- would keep it out).
    (folder / "_scale_tiny.yaml").write_text(
        "run: {wandb: disabled}\n"
        "trainer: {max_epochs: 1, enable_progress_bar: false, enable_model_summary: false}\n"
        "model: {net: {init_args: {width: 0.0625}}}\n"
        "data: {init_args: {num_train: 16, num_val: 10, num_test: 6, image_size: [64, 64], "
        "batch_size: 4, num_workers: 0}}\n"
    )
    (folder / "variants" / "fcn8s.yaml").write_text("{}\n")
    (folder / "ablation.yaml").write_text(
        "name: probe\ngroup: probe\nmetrics: [test/mIoU, gridding/impulse]\n"
        "after_each:\n  - [gridding, '{run}', --record, --input_size, '64', '64',"
        " --images, '0', --out, '{results}-gridding/{name}']\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "segbench.cli",
        "sweep",
        "--ablation",
        "probe",
        "--scale",
        "tiny",
        "--experiments",
        str(tmp_path / "experiments"),
        "--seeds",
        "0",
    ]
    monkeypatch.chdir(tmp_path)
    segbench_in_process(cmd)
    table = (tmp_path / "results" / "probe-tiny.md").read_text()
    assert "gridding/impulse" in table
    # ... and beside the experiments, in the paper's RESULTS.md, between the sweep marks.
    results = (tmp_path / "experiments" / "probe" / "RESULTS.md").read_text()
    assert "<!-- sweep:probe-tiny" in results
    assert "gridding/impulse" in results
    again = segbench_in_process(cmd)
    assert "done, skipped" in again
    assert "recorded for its checkpoint, skipped" in again
    # A record of the same checkpoint made with other options (by hand) is measured again.
    run = RunDir(tmp_path / "runs" / "probe-tiny" / "fcn8s-s0")
    step = ["--input_size", "64", "64", "--images", "0"]
    assert run.read()["records"]["gridding"]["options"] == step
    run.update(lambda d: d["records"]["gridding"].__setitem__("options", ["--split", "train"]))
    third = segbench_in_process(cmd)
    assert "recorded for its checkpoint, skipped" not in third
    assert run.read()["records"]["gridding"]["options"] == step


def test_results_tables_are_rewritten_between_the_marks_only(tmp_path):
    from segbench.study.publish import results_page

    def write_results(path, group, table):
        path.write_text(results_page(path, group, table))

    path = tmp_path / "RESULTS.md"
    path.write_text(
        "# P\n\nintro\n\n<!-- sweep:g (rewritten) -->\n| old |\n<!-- /sweep:g -->\n\nreading\n"
    )
    write_results(path, "g", "| new |\n|---|\n")
    text = path.read_text()
    assert "| old |" not in text
    assert "| new |" in text
    assert text.startswith("# P\n\nintro\n")
    assert text.endswith("<!-- /sweep:g -->\n\nreading\n")
    write_results(path, "h", "| other |")  # a group without marks gets its own section
    assert "## h" in path.read_text()
    assert "| new |" in path.read_text()


def test_results_data_and_page_are_one_version(tmp_path, monkeypatch):
    """RESULTS.json and the RESULTS.md rendered from it are written together: a page that fails
    to be written (a kill, a full disk) leaves the earlier data too, not new data beside the
    old page (the claims data and page the same way)."""
    from segbench.study import publish

    page, store = tmp_path / "RESULTS.md", tmp_path / "RESULTS.json"
    publish.publish_data_and_page(store, {"groups": {"g": 1}}, page, "g", "| one |")
    before = {p.name: p.read_bytes() for p in (page, store)}

    def failing(text):
        def write(f):
            f.write(text.encode()[:5])
            raise OSError("the page's write failed")

        return write

    monkeypatch.setattr(publish, "text_writer", failing)
    with pytest.raises(OSError, match="the page's write failed"):
        publish.publish_data_and_page(store, {"groups": {"g": 2}}, page, "g", "| two |")
    assert {p.name: p.read_bytes() for p in (page, store)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.json", "RESULTS.md"]


def test_a_second_sweep_of_a_group_is_refused_and_seeds_are_run_once(tmp_path, capsys):
    from segbench.cli import main
    from segbench.rundir import WriterLock

    args = ["sweep", "--ablation", "fcn", "--seeds", "0", "0", "--root", str(tmp_path)]
    # A live sweep of the group (here: this process, through another descriptor).
    holder = WriterLock(tmp_path / ".fcn-skips.sweep", "sweep").acquire()
    try:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--variants", "fcn32s"])
        assert exit_.value.code == 1
        err = capsys.readouterr().err
        assert f"sweep {tmp_path / 'fcn-skips'} is being written by pid {os.getpid()}" in err
    finally:
        holder.release()
    main([*args, "--variants", "fcn32s", "--dry-run"])
    plan = capsys.readouterr().err
    assert "[1/1] fcn-skips/fcn32s-s0:" in plan, plan  # one run, not two
    assert "each seed once" in plan


def test_a_sweep_with_extra_fit_arguments_leaves_results_md_alone(tmp_path, monkeypatch):
    """FIT_ARGS='--trainer.max_epochs 1' makes runs other than the recipe's: their report goes
    beside them (ROOT/GROUP.md), never over the recipe's in results/ nor in the paper's
    RESULTS.md, and the sweep says where."""
    from segbench.study import sweep

    folder = tmp_path / "experiments" / "probe" / "synthetic"
    (folder / "variants").mkdir(parents=True)
    (folder / "base.yaml").write_text((REPO / "experiments" / "quickstart.yaml").read_text())
    (folder / "variants" / "a.yaml").write_text("{}\n")
    (folder / "ablation.yaml").write_text("name: probe\ngroup: probe\n")
    results = tmp_path / "experiments" / "probe" / "RESULTS.md"
    results.write_text("<!-- sweep:probe -->\n| the recipe's table |\n<!-- /sweep:probe -->\n")
    monkeypatch.setattr(ProcessLauncher, "launch", lambda self, planned: [])
    written: list[str] = []
    given: list[list[str]] = []  # the fit arguments each report records
    monkeypatch.setattr(sweep, "build_report", lambda *a, out, fit_args, **k: written.append(out)
                        or given.append(fit_args) or _report(1, "one-epoch"))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs-try" / "probe" / "a-s0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    args = ["--ablation", "probe", "--experiments", str(tmp_path / "experiments"), "--seeds", "0"]
    with segbench_log() as lines:
        sweep.main([*args, "--root", "runs-try", "--", "--trainer.max_epochs", "1"])
    assert written == [str(Path("runs-try") / "probe")]
    assert given == [["--trainer.max_epochs", "1"]]
    assert "report: runs-try/probe.md / .json / .csv / .png / _curves.png" in lines
    assert lines[-1].startswith(
        "the runs were given extra fit arguments (--trainer.max_epochs 1)"
        ": their report is beside them, not in results/probe nor in "
    )
    assert "| the recipe's table |" in results.read_text()
    shutil.copytree(tmp_path / "runs-try", tmp_path / "runs")
    sweep.main(args)
    assert written[-1] == "results/probe"
    assert given[-1] == []
    assert "| one-epoch | 1 |" in results.read_text()


def test_finished_runs_trained_with_other_settings_are_not_taken_as_the_sweeps(
    tmp_path, monkeypatch
):
    """A smoke sweep (fit arguments after --) leaves finished runs under the recipe's names; the
    recipe's sweep used to skip them as done and report them as its own. Now it refuses before
    launching anything, naming each run and key. Where the run ran (the accelerator) or where its
    data lay may differ; the same settings are skipped as before."""
    import json

    from segbench.cli.lightning import parse_fit
    from segbench.errors import ConfigError
    from segbench.study import sweep

    folder = tmp_path / "experiments" / "probe" / "synthetic"
    (folder / "variants").mkdir(parents=True)
    (folder / "base.yaml").write_text((REPO / "experiments" / "quickstart.yaml").read_text())
    (folder / "variants" / "a.yaml").write_text("{}\n")
    (folder / "ablation.yaml").write_text("name: probe\ngroup: probe\n")
    launched: list = []
    monkeypatch.setattr(ProcessLauncher, "launch", lambda self, runs: launched.extend(runs) or [])
    monkeypatch.setattr(sweep, "build_report", lambda *a, **k: _report(1, "probe"))
    monkeypatch.setattr(sweep, "render_report", lambda *a, **k: "")
    monkeypatch.chdir(tmp_path)
    smoke = ["--trainer.max_epochs", "1", "--model.net.init_args.width", "0.0625"]
    cmd = fit_command(base=[str(folder / "base.yaml")], variant=str(folder / "variants" / "a.yaml"),
                      seed=0, group="probe", root="runs", extra=smoke, resume=False)  # fmt: skip
    run = tmp_path / "runs" / "probe" / "a-s0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "config": parse_fit(cmd[cmd.index("fit") + 1 :]), "fit": {"test": {"test/mIoU": 0.5}},
    }))  # fmt: skip
    args = ["--ablation", "probe", "--experiments", str(tmp_path / "experiments"), "--seeds", "0"]
    with pytest.raises(ConfigError) as err:
        sweep.main(args)
    assert f"{Path('runs') / 'probe' / 'a-s0'}: model.net.init_args.width 0.0625 (run) vs 0.25 " \
        "(sweep); trainer.max_epochs 1 (run) vs 4 (sweep)" in str(err.value)  # fmt: skip
    assert "Nothing was launched" in str(err.value)
    assert launched == []
    with segbench_log() as lines:
        sweep.main([*args, "--", *smoke, "--trainer.accelerator", "cpu"])
    assert "[1/1] probe/a-s0: done, skipped" in lines
    assert launched == []


def test_fit_arguments_fit_refuses_stop_the_sweep_before_any_run(tmp_path, capsys, monkeypatch):
    """A misspelt key after -- is found once, in the first run's arguments, before anything is
    launched (each run would fail with fit's whole usage)."""
    from segbench.cli import main

    launched: list = []
    monkeypatch.setattr(ProcessLauncher, "launch", lambda self, runs: launched.extend(runs) or [])
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--ablation", "fcn", "--seeds", "3", "--root", str(tmp_path),
              "--", "--trainer.max_epoch=1"])  # fmt: skip
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "segbench fit refuses the arguments of fcn16s-s3 (--trainer.max_epoch=1 after --), " \
        "so every run would fail; nothing was launched: unrecognized arguments: " \
        "--trainer.max_epoch=1" in err  # fmt: skip
    assert "usage:" not in err
    assert launched == []


@pytest.mark.parametrize("arg", ["--run.root", "--run.name=x", "--seed_everything"])
def test_fit_arguments_the_sweep_sets_itself_are_refused(tmp_path, capsys, arg):
    """--run.root after -- used to send the runs elsewhere while the sweep looked for them under
    --root: 'no metrics.json under []' after the runs had trained."""
    from segbench.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--ablation", "fcn", "--seeds", "3", "--root", str(tmp_path),
              "--", arg, str(tmp_path / "elsewhere")])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{arg} after --: the sweep sets each run's --run.root, --run.group, --run.name" in err
    assert not any(tmp_path.iterdir())


def test_a_sweep_whose_runs_fail_says_so_last(tmp_path, monkeypatch):
    """The first run's data checks the per-class metrics; runs that fail all the same end the
    sweep with how many failed and how, not with a missing metrics.json."""
    import dataclasses

    from segbench.errors import ConfigError
    from segbench.study import sweep

    folder = tmp_path / "experiments" / "probe" / "synthetic"
    (folder / "variants").mkdir(parents=True)
    (folder / "base.yaml").write_text((REPO / "experiments" / "quickstart.yaml").read_text())
    (folder / "variants" / "a.yaml").write_text("{}\n")
    (folder / "ablation.yaml").write_text("name: probe\ngroup: probe\nmetrics: [test/IoU/Pole]\n")
    args = ["--ablation", "probe", "--experiments", str(tmp_path / "experiments"), "--seeds", "0",
            "--root", str(tmp_path / "runs")]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"metrics test/IoU/Pole: the data has no class 'Pole' "
                       r"\(its classes: .*pole"):  # fmt: skip
        sweep.main([*args, "--dry-run"])
    (folder / "ablation.yaml").write_text("name: probe\ngroup: probe\nmetrics: [test/IoU/pole]\n")
    launch = ProcessLauncher.launch
    failing = [sys.executable, "-c", "raise SystemExit(2)"]
    monkeypatch.setattr(ProcessLauncher, "launch", lambda self, runs: launch(
        self, [dataclasses.replace(r, cmd=failing) for r in runs]))  # fmt: skip
    with segbench_log() as lines, pytest.raises(SystemExit) as exit_:
        sweep.main(args)
    assert exit_.value.code == 1
    assert lines[-1] == "failed: 1 of 1 runs: a-s0 (exit 2)"
    assert not any(METRICS_FILE in line for line in lines)


def test_a_bad_sweep_option_is_one_line_under_a_short_usage(capsys):
    from segbench.cli import main

    for args, says in ((["--jobs", "0"], "--jobs: must be at least 1, got 0"),
                       (["--variants", "nope"], "--variants nope: not in")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(["sweep", "--ablation", "fcn", *args])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2, err  # the usage line, then the error
        assert says in err[1]


def _report(runs: int, label: str) -> dict:
    """A report's data (segbench.study.runs.report_data) of one row of ``runs`` runs."""
    stat = {"mean": 0.5, "std": 0.01, "n": runs}
    row = {"label": label, "config": {}, "n": runs, "metrics": {"test/mIoU": stat}, "paper": {},
           "provenance": {}, "runs": []}  # fmt: skip
    return {"title": "g", "metrics": ["test/mIoU"], "differing": [], "provenance": [],
            "paper": None, "rows": [row], "unfinished": [], "claims": []}  # fmt: skip


def test_a_results_table_of_more_runs_is_not_replaced_by_one_of_fewer(tmp_path, caplog):
    from segbench.study.publish import publish_results, read_results

    path = tmp_path / "RESULTS.md"
    assert publish_results(path, "g", _report(6, "three-seeds"))
    assert "| three-seeds | 6 | 50.00 ± 1.00 |" in path.read_text()
    assert read_results(tmp_path / "RESULTS.json")["g"]["rows"][0]["label"] == "three-seeds"
    path.write_text(path.read_text().replace("three-seeds", "edited"))  # the page is not read
    assert not publish_results(path, "g", _report(2, "one-seed"))
    assert "| edited |" in path.read_text()
    assert "report holds 6 runs, this one 2: not replaced" in caplog.text
    assert read_results(tmp_path / "RESULTS.json")["g"]["rows"][0]["label"] == "three-seeds"
    assert publish_results(path, "g", _report(8, "more"))
    assert "| more | 8 |" in path.read_text()
    assert "edited" not in path.read_text()


def test_the_repositorys_results_pages_are_their_data_rendered(monkeypatch):
    """Each sweep table of experiments/*/RESULTS.md is its RESULTS.json rendered, and the five
    papers' claims table is claims.json rendered: the data is what a page says."""
    from segbench.study.ablation import find_ablations
    from segbench.study.claims import render_claims
    from segbench.study.publish import read_claims, read_results
    from segbench.study.render import render_report
    from segbench.study.verdicts import judgement_of_data

    monkeypatch.chdir(REPO)  # the claims table links each paper's page as segbench claims does
    ablations = find_ablations(Path("experiments"))
    claims = {c.id: (a, c) for a in ablations.values() for c in a.claims}
    pages = sorted((REPO / "experiments").glob("*/RESULTS.json"))
    assert pages
    for data_file in pages:
        page = data_file.with_suffix(".md").read_text()
        for group, data in read_results(data_file).items():
            begin = page.index("\n", page.index(f"<!-- sweep:{group} ")) + 1
            block = page[begin : page.index(f"<!-- /sweep:{group} -->")]
            rendered = render_report(data, [c for _, c in claims.values()], data_file.parent, REPO)
            assert block == rendered.strip() + "\n", group
            # Its links (the files a claim's paper cell names) resolve from the page's folder.
            for link in re.findall(r"\]\(([^):#]+)[)#]", block):
                assert (data_file.parent / link).is_file(), (data_file, link)
    docs = REPO / "docs" / "results" / "claims.md"
    page = docs.read_text()
    begin = page.index("\n", page.index("<!-- sweep:claims")) + 1
    block = page[begin : page.index("<!-- /sweep:claims -->")]
    entries = read_claims(docs.with_suffix(".json"))
    assert [e["id"] for e in entries] == [c for c in claims], "one verdict per claim, in order"
    judged = [(claims[e["id"]][0], judgement_of_data(claims[e["id"]][1], e)) for e in entries]
    assert block == render_claims(judged, links_from=docs.parent).strip() + "\n"
    # Its links resolve from the page's own folder, as GitHub reads them: they were written
    # from the repository's root (experiments/fcn/RESULTS.md), broken in docs/results/.
    links = re.findall(r"\]\(([^)#]+RESULTS\.md)\)", block)
    assert links
    assert all((docs.parent / link).is_file() for link in links), sorted(set(links))
    # The repository files the paper column names are links too (they were plain text), and
    # resolve from there as well.
    assert "[docs/papers/dupsampling.md](../papers/dupsampling.md)" in block
    links = re.findall(r"\]\(([^):#]+)[)#]", block)
    assert all((docs.parent / link).is_file() for link in links), sorted(set(links))
