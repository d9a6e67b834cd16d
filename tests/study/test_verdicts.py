"""Claims and their verdicts: the intervals are Student's t (paired or Welch), as scipy's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from scipy import stats

from segbench.errors import ConfigError
from segbench.study.ablation import Claim
from segbench.study.render import claims_table
from segbench.study.runs import Row, Run
from segbench.study.stats import holm
from segbench.study.verdicts import holm_verdicts, judge, judge_claims, p_value


def claim(**kw) -> Claim:
    return Claim(**{"id": "c", "claim": "a beats b", "metric": "test/mIoU", "a": "a", "b": "b",
                    **kw})  # fmt: skip


A = {0: 0.61, 1: 0.64, 2: 0.60, 3: 0.66}
B = {0: 0.58, 1: 0.62, 2: 0.59, 3: 0.61}


def test_paired_interval_is_scipys():
    j = judge(claim(), A, B, scale=100)
    want = stats.ttest_rel([100 * A[s] for s in A], [100 * B[s] for s in A]).confidence_interval()
    assert (j.low, j.high) == pytest.approx((want.low, want.high))
    assert j.difference == pytest.approx(100 * (sum(A.values()) - sum(B.values())) / 4)
    assert j.test == "paired t (4 seeds)"
    assert j.verdict == "reproduced"
    assert j.a[2] == j.b[2] == 4


def test_welch_interval_when_the_seeds_differ():
    b = {10 + s: v for s, v in B.items()}
    j = judge(claim(), A, b)
    want = stats.ttest_ind(list(A.values()), list(b.values()), equal_var=False)
    ci = want.confidence_interval()
    assert (j.low, j.high) == pytest.approx((ci.low, ci.high))
    assert j.test.startswith("Welch t")


def test_verdicts_follow_the_interval_and_the_direction():
    assert judge(claim(direction="less"), A, B).verdict == "contradicted"
    noisy = {0: 0.50, 1: 0.70, 2: 0.55, 3: 0.66}
    j = judge(claim(), noisy, B, scale=100)
    assert j.verdict == "inconclusive"
    se = (j.high - j.low) / 2 / stats.t.ppf(0.975, 3)
    assert j.detectable == pytest.approx((stats.t.ppf(0.975, 3) + stats.t.ppf(0.8, 3)) * se)


def test_equal_claims_use_two_one_sided_tests_within_the_margin():
    near = {s: v + 0.001 * (-1) ** s for s, v in A.items()}
    assert judge(claim(direction="equal", margin=1.0), A, near, scale=100).verdict == "reproduced"
    assert judge(claim(direction="equal", margin=0.5), A, B, scale=100).verdict == "contradicted"
    assert judge(claim(direction="equal", margin=1.0), A, B, scale=100).verdict == "inconclusive"
    j = judge(claim(direction="equal", margin=1.0), A, near, scale=100)
    want = stats.ttest_rel([100 * v for v in A.values()], [100 * v for v in near.values()])
    ci = want.confidence_interval(confidence_level=0.90)
    assert (j.low, j.high) == pytest.approx((ci.low, ci.high))


def test_too_few_runs_are_inconclusive_or_not_run():
    assert judge(claim(), {0: 0.6}, {0: 0.5}).verdict == "inconclusive"
    assert judge(claim(), {}, B).verdict == "not run"


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"id": "x", "claim": "c", "metric": "m", "a": "a", "b": "b", "dirction": "less"},
         "unknown claim key"),
        ({"id": "x", "claim": "c", "metric": "m", "a": "a"}, r"lacks \['b'\]"),
        ({"id": "x", "claim": "c", "metric": "m", "a": "a", "b": "b", "direction": "up"},
         "greater, less or equal"),
        ({"id": "x", "claim": "c", "metric": "m", "a": "a", "b": "b", "direction": "equal"},
         "needs a margin"),
        ({"id": "x", "claim": "c", "metric": [], "a": "a", "b": "b"}, "a list of names"),
    ],
)  # fmt: skip
def test_a_bad_claim_is_named(entry, says):
    with pytest.raises(ConfigError, match=says) as err:
        Claim.load(entry, "experiments/x/ablation.yaml")
    assert "experiments/x/ablation.yaml" in str(err.value)


def test_the_report_judges_claims_from_its_rows():
    def runs(label: str, values: dict[int, float]) -> Row:
        row = Row(label, {})
        for seed, v in values.items():
            config = {"seed_everything": seed, "run.name": f"{label}-s{seed}"}
            row.runs.append(Run(Path(f"runs/g/{label}-s{seed}"), config, {"test/mIoU": v}))
        return row

    rows = [runs("a", A), runs("b", B)]
    (j,) = judge_claims([claim(paper="62.7 vs 62.4", source="FCN table 2")], rows)
    assert j.verdict == "reproduced"
    table = claims_table([j])
    assert "| a beats b (c) | 62.7 vs 62.4; FCN table 2 | test/mIoU: a > b |" in table
    assert "**reproduced**" in table
    assert "62.75 ± 2.75 (n=4)" in table


def test_a_run_not_finished_is_left_out_of_a_verdict_and_named():
    """A sweep writing its runs while ``segbench claims`` or ``report`` reads them: a run still
    training that a ``segbench test`` of its best checkpoint gave test numbers (found live: the
    claim was judged from it, 'n=1', without a word) is not a seed of the verdict; its note names
    it. With it, seed 4 of ``a`` (0.40, half trained) turned a reproduced claim inconclusive."""
    rows = [Row("a", {}), Row("b", {})]
    for row, values in zip(rows, (A, B), strict=True):
        for seed, v in values.items():
            config = {"seed_everything": seed, "run.name": f"{row.label}-s{seed}"}
            run = Run(Path(f"runs/g/{row.label}-s{seed}"), config, {"test/mIoU": v})
            row.runs.append(run)
    still = "still training after 1 epoch, by pid 7 on host since 10:00:00"
    rows[0].runs.append(Run(Path("runs/g/a-s4"), {"seed_everything": 4, "run.name": "a-s4"},
                            {"test/mIoU": 0.40}, unfinished=still))  # fmt: skip
    (j,) = judge_claims([claim()], rows)
    assert j.verdict == "reproduced"
    assert j.a[2] == 4  # the four finished seeds
    assert j.note == f"not finished, left out: a-s4 ({still})"
    assert f"**reproduced**; not finished, left out: a-s4 ({still})" in claims_table([j])
    # A variant whose only runs are unfinished is not run, and says so.
    rows[1].runs = [
        dataclasses.replace(r, unfinished="stopped after 1 epoch") for r in rows[1].runs
    ]
    (j,) = judge_claims([claim()], rows)
    assert j.verdict == "not run"
    assert j.note.startswith(f"no finished run of b; not finished, left out: a-s4 ({still}); ")
    assert "; b-s0 (stopped after 1 epoch); b-s1 (stopped after 1 epoch);" in j.note


def test_a_claim_with_a_typo_fails_when_its_ablation_loads(tmp_path, capsys):
    """A claim naming no variant of its ablation, or a metric no run logs, is an error naming the
    file, the claim and the value before anything runs (a dry run included), not a 'not run'
    verdict after the sweep."""
    import shutil

    from segbench.cli import main
    from segbench.study.ablation import Ablation
    from tests.helpers import REPO

    shutil.copytree(REPO / "experiments" / "fcn", tmp_path / "fcn")
    path = tmp_path / "fcn" / "synthetic" / "ablation.yaml"
    text = path.read_text()
    path.write_text(text.replace("a: fcn16s", "a: fcn16", 1))
    with pytest.raises(ConfigError, match=r"claim fcn-16s-over-32s: a: fcn16 is not a variant "
                       r"of this ablation \(its variants.*: fcn16s, fcn32s, fcn8s\)"):  # fmt: skip
        Ablation.load(path)
    path.write_text(text.replace("metric: test/mIoU", "metric: test/mIOU", 1))
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--ablation", str(path), "--seeds", "0", "--dry-run"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert f"{path}: claim fcn-16s-over-32s: metric test/mIOU: the task does not log it (did " \
        "you mean test/mIoU?)" in err  # fmt: skip
    assert "fcn-skips/fcn32s-s0" not in err  # nothing planned
    # The analysis tools' records and a run's numbers are names a claim or column may use; a
    # per-class metric's class is checked where the data's classes are known (a sweep's plan).
    path.write_text(text.replace("test/IoU/bird]", "test/IoU/bird, gridding/impulse, params]"))
    ablation = Ablation.load(path)
    ablation.check_names(["pole", "bird"])
    with pytest.raises(ConfigError, match=r"metrics test/IoU/pole: the data has no class 'pole' "
                       r"\(its classes: Pole, Bird\)"):  # fmt: skip
        ablation.check_names(["Pole", "Bird"])


def test_a_claim_without_a_verdict_says_what_is_missing():
    """'not run' says whether a variant has no runs or its runs lack the claim's metric."""
    row = Row("a", {})
    row.runs.append(Run(Path("runs/g/a-s0"), {"seed_everything": 0}, {"test/mIoU": 0.6}))
    (typo, absent) = judge_claims([claim(metric="test/IoU/pole"), claim(b="c")], [row])
    assert (typo.verdict, typo.note) == ("not run", "no run of a has test/IoU/pole")
    assert (absent.verdict, absent.note) == ("not run", "no finished run of c")


def test_a_claim_on_several_metrics_compares_their_mean_per_run():
    """CamVid's thin classes as one claim: each run's value is the mean of the classes' IoU."""
    entry = {"id": "thin", "claim": "c", "metric": ["test/IoU/Pole", "test/IoU/SignSymbol"],
             "a": "a", "b": "b"}  # fmt: skip
    c = Claim.load(entry, "experiments/x/ablation.yaml")
    assert c.metrics == ("test/IoU/Pole", "test/IoU/SignSymbol")
    assert c.metric_label == "mean test/IoU/{Pole, SignSymbol}"

    def row(label: str, per_seed: dict[int, tuple[float, ...]]) -> Row:
        r = Row(label, {})
        for seed, values in per_seed.items():
            config = {"seed_everything": seed, "run.name": f"{label}-s{seed}"}
            metrics = dict(zip(c.metrics, values, strict=False))
            r.runs.append(Run(Path(f"runs/g/{label}-s{seed}"), config, metrics))
        return r

    # Seed 2 of b lacks SignSymbol: it is left out, so the test is Welch's, not paired.
    rows = [row("a", {0: (0.2, 0.4), 1: (0.3, 0.5), 2: (0.25, 0.45)}),
            row("b", {0: (0.1, 0.2), 1: (0.2, 0.2), 2: (0.9,)})]  # fmt: skip
    (j,) = judge_claims([c], rows)
    assert j.a[:2] == pytest.approx((35.0, 5.0))  # means 30, 40, 35 (percent)
    assert j.b[0] == pytest.approx(17.5)
    assert j.b[2] == 2
    assert j.test.startswith("Welch t")
    assert "| mean test/IoU/{Pole, SignSymbol}: a > b |" in claims_table([j])


def test_every_declared_claim_loads_and_names_the_ablations_variants_and_metrics():
    import yaml

    from segbench.study.ablation import find_ablations
    from tests.helpers import REPO

    ids = []
    for ablation in find_ablations(REPO / "experiments").values():
        raw = yaml.safe_load(ablation.path.read_text()).get("claims", [])
        assert len(ablation.claims) == len(raw)
        _, variants = ablation.configs("cpu")
        labels = {Path(v).stem for v in variants}
        for c in ablation.claims:
            assert {c.a, c.b} <= labels, (ablation.path, c.id)
            assert set(c.metrics) <= set(ablation.metrics), (ablation.path, c.id)
            ids.append(c.id)
    assert len(ids) == len(set(ids)) >= 29  # the five papers' (a new paper's add to them)


def declared_claims() -> int:
    """How many claims the repository's ablations declare."""
    from segbench.study.ablation import find_ablations
    from tests.helpers import REPO

    return sum(len(a.claims) for a in find_ablations(REPO / "experiments").values())


def test_segbench_claims_judges_every_ablation_from_its_runs(tmp_path, capsys):
    """Three finished FCN runs per variant (metrics.json as a sweep writes them) decide FCN's
    claims; the other ablations' claims are listed as not run."""
    import json
    import os
    import shutil

    from segbench.study.claims import main
    from tests.helpers import REPO

    values = {
        "fcn32s": (0.50, 0.52, 0.51),
        "fcn16s": (0.55, 0.58, 0.565),
        "fcn8s": (0.56, 0.575, 0.56),
    }
    for variant, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            run = tmp_path / "runs" / "fcn-skips" / f"{variant}-s{seed}"
            run.mkdir(parents=True)
            data = {
                "config": {"seed_everything": seed, "run.name": run.name,
                           "model.net.init_args.variant": variant[3:]},
                "fit": {"test": {"test/mIoU": v}, "best_val": {"val/mIoU": v}},
            }  # fmt: skip
            (run / "metrics.json").write_text(json.dumps(data))
            # fcn16s still climbs (+3 points in its last epoch of 4), the others are flat.
            last = 0.03 if variant == "fcn16s" else 0.005
            curve = [v - 0.1, v - 0.05, v - last, v]
            lines = ["epoch,step,val/mIoU"] + [f"{e},{e},{c}" for e, c in enumerate(curve)]
            (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    n = declared_claims()  # not a fixed number: a new paper's claims join them
    out = tmp_path / "claims.md"
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- sweep:claims -->\nSTALE\n<!-- /sweep:claims -->\n\nmore\n")
    # The ablations without the verdicts their sweeps published (RESULTS.json): see the end.
    experiments = tmp_path / "experiments"
    shutil.copytree(REPO / "experiments", experiments)
    for published in experiments.glob("*/RESULTS.json"):
        published.unlink()
    main(["--experiments", str(experiments), "--root", str(tmp_path / "runs"), "--out", str(out),
          "--into", str(readme)])  # fmt: skip
    printed = capsys.readouterr().out
    # Each table links the papers' pages relative to where it goes: the printed one to the
    # working directory, --out's and --into's to their own folder (here both tmp_path).
    text = out.read_text()
    assert text.strip() in readme.read_text()
    assert "STALE" not in readme.read_text()
    assert readme.read_text().endswith("more\n")
    assert "| [fcn](experiments/fcn/RESULTS.md) |" in text
    assert (
        f"| [fcn]({Path(os.path.relpath(experiments / 'fcn' / 'RESULTS.md')).as_posix()}) |"
        in printed
    )
    assert [line.split(") |", 1)[-1] for line in printed.splitlines()] == [
        line.split(") |", 1)[-1] for line in text.splitlines()
    ]  # the same table, but for its links
    fcn16 = next(line for line in text.splitlines() if "(fcn-16s-over-32s)" in line)
    assert "**reproduced**" in fcn16  # +5.0, +6.0, +5.5 points: the paired interval is above 0
    assert "**no** (+3.0 / +0.5 in the last quarter)" in fcn16
    fcn8 = next(line for line in text.splitlines() if "(fcn-8s-over-16s)" in line)
    assert "**inconclusive**" in fcn8  # +1.0, -0.5, -0.5
    assert "**no** (+0.5 / +3.0 in the last quarter)" in fcn8
    assert f"1 reproduced, 0 contradicted, 1 inconclusive, {n - 2} not run of {n} claims" in text
    # Holm's family is the claims tested, not those declared: those without runs have no p-value.
    assert "| Holm (2 claims) |" in text
    assert "Holm's correction over the 2 tested" in text

    # On a machine without those runs the README keeps its decided rows; --fresh drops them.
    (tmp_path / "none").mkdir()  # a folder without runs
    empty = ["--experiments", str(experiments), "--root", str(tmp_path / "none"),
             "--into", str(readme)]  # fmt: skip
    main(empty)
    again = capsys.readouterr().out
    for claim in ("(fcn-16s-over-32s)", "(fcn-8s-over-16s)"):  # both printed: the same links
        kept = next(line for line in again.splitlines() if claim in line)
        assert kept == next(line for line in printed.splitlines() if claim in line)
    assert f"1 reproduced, 0 contradicted, 1 inconclusive, {n - 2} not run of {n} claims" in again
    assert fcn16 in readme.read_text()
    assert fcn8 in readme.read_text()
    # The kept verdicts come from the data beside the page, not from its markdown.
    data = json.loads((tmp_path / "README.json").read_text())["claims"]
    assert [e["id"] for e in data if e["verdict"] != "not run"] == ["fcn-16s-over-32s",
                                                                     "fcn-8s-over-16s"]  # fmt: skip
    readme.write_text("# x\n\n<!-- sweep:claims -->\nEDITED\n<!-- /sweep:claims -->\n")
    main(empty)
    assert capsys.readouterr().out == again
    main([*empty, "--fresh"])
    fresh = capsys.readouterr().out
    assert f"0 reproduced, 0 contradicted, 0 inconclusive, {n} not run of {n} claims" in fresh

    # The runs of a longer schedule (group fcn-skips-long) are judged with --scale long, and
    # their rows say so: in the README they may sit beside rows decided at the cpu scale.
    shutil.copytree(tmp_path / "runs" / "fcn-skips", tmp_path / "runs" / "fcn-skips-long")
    main(["--experiments", str(experiments), "--root", str(tmp_path / "runs"), "--scale", "long"])
    long = capsys.readouterr().out
    fcn16_long = next(line for line in long.splitlines() if "(fcn-16s-over-32s)" in line)
    assert "| paired t (3 seeds), SCALE=long |" in fcn16_long
    assert "| paired t (3 seeds) |" in fcn16

    # A claim with no runs here and none in the claims data keeps the verdict its sweep
    # published beside the paper's page (the CamVid FCN rows, run on another machine).
    shutil.copy(REPO / "experiments" / "fcn" / "RESULTS.json", experiments / "fcn")
    published = json.loads((experiments / "fcn" / "RESULTS.json").read_text())["groups"]
    want = {e["id"]: e["verdict"] for e in published["fcn-skips-camvid"]["claims"]}
    main(empty)
    capsys.readouterr()
    kept = {
        e["id"]: e["verdict"] for e in json.loads((tmp_path / "README.json").read_text())["claims"]
    }
    assert {i: kept[i] for i in want} == want
    assert kept["fcn-16s-over-32s"] == "reproduced"  # the claims data's own verdict stands
    main([*empty, "--fresh"])
    assert f"0 reproduced, 0 contradicted, 0 inconclusive, {n} not run" in capsys.readouterr().out


def test_segbench_claims_refuses_runs_the_recipe_did_not_train(tmp_path):
    """A smoke sweep (fit arguments after --) leaves runs under the recipe's names; the claims
    table would be judged from them. Runs of the recipe itself are judged as before."""
    import json

    from segbench.cli.lightning import parse_fit
    from segbench.errors import ConfigError
    from segbench.study.ablation import find_ablation
    from segbench.study.claims import main
    from segbench.study.plan import fit_command
    from tests.helpers import REPO

    ablation = find_ablation("fcn", REPO / "experiments")
    base, variants = ablation.configs("cpu")
    fcn8s = next(v for v in variants if v.endswith("fcn8s.yaml"))
    run = tmp_path / "runs" / ablation.group / "fcn8s-s0"
    run.mkdir(parents=True)

    def record(extra: list[str]) -> None:
        cmd = fit_command(base=base, variant=fcn8s, seed=0, group=ablation.group,
                          root=str(tmp_path / "runs"), extra=extra, resume=False)  # fmt: skip
        data = {"config": parse_fit(cmd[cmd.index("fit") + 1 :]),
                "fit": {"test": {"test/mIoU": 0.5}, "best_val": {"val/mIoU": 0.5}}}  # fmt: skip
        (run / "metrics.json").write_text(json.dumps(data))

    args = ["--root", str(tmp_path / "runs"), "--out", str(tmp_path / "claims.md")]
    record(["--trainer.max_epochs", "1"])
    with pytest.raises(ConfigError) as err:
        main(args)
    assert f"{run}: trainer.max_epochs 1 (run) vs " in str(err.value)
    assert "were not trained by the recipe" in str(err.value)
    main([*args, "--other_settings"])  # judged as they are when asked, and never published
    assert "(fcn-8s-over-16s)" in (tmp_path / "claims.md").read_text()
    with pytest.raises(SystemExit):
        main([*args, "--other_settings", "--into", str(tmp_path / "page.md")])
    record(["--trainer.accelerator", "cpu", "--data.init_args.num_workers", "0"])
    main(args)  # where it ran and how it loaded its data are not the recipe
    assert "(fcn-8s-over-16s)" in (tmp_path / "claims.md").read_text()


def test_segbench_claims_names_a_folder_given_that_is_not_there_or_holds_no_ablation(tmp_path):
    from segbench.errors import MissingFileError
    from segbench.study.claims import main

    with pytest.raises(MissingFileError, match=r"--root /nonexistent: no such folder"):
        main(["--root", "/nonexistent"])
    with pytest.raises(MissingFileError, match=rf"--experiments {tmp_path}: no ablation in it"):
        main(["--experiments", str(tmp_path)])
    with pytest.raises(MissingFileError, match=r"--experiments /nonexistent: no such folder"):
        main(["--experiments", "/nonexistent"])


def test_last_quarter_gain_is_of_the_mean_curve():
    from segbench.study.stats import last_quarter_gain

    curves = [{e: 0.1 * e for e in range(8)}, {e: 0.1 * e + 0.02 for e in range(8)}]
    assert last_quarter_gain(curves) == pytest.approx(20.0)  # 2 of 8 epochs, 0.1 each
    assert last_quarter_gain([{0: 0.5}]) is None


def test_a_claims_data_file_that_is_not_one_is_named(tmp_path):
    from segbench.errors import DataError
    from segbench.study.claims import main
    from tests.helpers import REPO

    page = tmp_path / "claims.md"
    (tmp_path / "claims.json").write_text('{"rows": []}')
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match=r"claims.json: not a claims data file"):
        main(["--experiments", str(REPO / "experiments"), "--root", str(tmp_path / "none"),
              "--into", str(page)])  # fmt: skip


def test_holm_adjusts_as_a_hand_computation():
    # sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06 kept: never below the last),
    # 0.04 (x1 = 0.04 -> 0.06, monotone); None is outside the family
    assert holm([0.03, None, 0.01, 0.04, 0.02]) == pytest.approx(
        [0.06, None, 0.04, 0.06, 0.06], abs=1e-12
    )
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_p_values_read_from_the_interval_are_scipys():
    j = judge(claim(), A, B, scale=100)
    want = stats.ttest_rel([100 * A[s] for s in A], [100 * B[s] for s in A]).pvalue
    assert p_value(j) == pytest.approx(want)
    b = {10 + s: v for s, v in B.items()}
    welch = judge(claim(), A, b, scale=100)
    want = stats.ttest_ind(list(A.values()), list(b.values()), equal_var=False).pvalue
    assert p_value(welch) == pytest.approx(want, rel=1e-3)  # the df as the test string shows it
    # equivalence within +-1 point: the larger of the two one-sided p-values
    near = {s: v + 0.001 * (-1) ** s for s, v in A.items()}
    eq = judge(claim(direction="equal", margin=1.0), A, near, scale=100)
    x, y = [100 * v for v in A.values()], [100 * v for v in near.values()]
    lower = stats.ttest_rel([a + 1.0 for a in x], y, alternative="greater").pvalue
    upper = stats.ttest_rel([a - 1.0 for a in x], y, alternative="less").pvalue
    assert p_value(eq) == pytest.approx(max(lower, upper))


def test_under_holm_a_decided_claim_stands_only_at_the_corrected_level():
    weak_a = {0: 0.59, 1: 0.63, 2: 0.61, 3: 0.64}  # B + 1, 1, 2, 3 points: paired p = 0.035
    weak = judge(claim(id="weak"), weak_a, B, scale=100)
    assert weak.verdict == "reproduced"
    assert p_value(weak) == pytest.approx(0.0354, abs=1e-3)
    assert holm_verdicts([weak]) == ["reproduced"]  # alone: 0.035 <= 0.05
    # two such claims: the smaller p is doubled (0.07), the larger kept at least as large
    assert holm_verdicts([weak, weak]) == ["inconclusive", "inconclusive"]
    strong = judge(claim(id="strong"), {s: v + 0.05 for s, v in B.items()}, B, scale=100)
    assert holm_verdicts([strong, weak])[0] == "reproduced"  # p ~ 0: stands in any family
    table = claims_table([weak], holm=(2, ["inconclusive"]))
    assert "| Holm (2 claims) |" in table.splitlines()[0]
    assert "| **reproduced** | inconclusive |" in table


def test_claims_out_and_into_are_one_version(tmp_path, monkeypatch):
    """``segbench claims --out TABLE --into PAGE`` wrote the table, then the page and its data:
    SIGKILLed at each step of its writes, a kill between the two left the new table beside the
    page and data of the earlier run. They are one version: a write that fails (a kill, a full
    disk) leaves the three files of the earlier run."""
    from segbench.study import publish
    from segbench.study.claims import main
    from tests.helpers import REPO

    (tmp_path / "none").mkdir()  # no runs: every claim 'not run'
    out, page, data = tmp_path / "claims.md", tmp_path / "README.md", tmp_path / "README.json"
    args = ["--experiments", str(REPO / "experiments"), "--root", str(tmp_path / "none"),
            "--fresh", "--out", str(out), "--into", str(page)]  # fmt: skip
    main(args)
    earlier = {p: p.read_bytes() for p in (out, page, data)}

    def fails(data):
        def write(f):
            f.write(b"half")
            raise OSError("killed mid-write")

        return write

    monkeypatch.setattr(publish, "json_writer", fails)
    with pytest.raises(OSError, match="mid-write"):
        main([*args, "--scale", "long"])  # another table
    assert {p: p.read_bytes() for p in earlier} == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.json",
        "README.md",
        "claims.md",
        "none",
    ]
