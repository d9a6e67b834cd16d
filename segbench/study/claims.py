"""``segbench claims [--root runs] [--scale cpu] [--out FILE.md] [--into FILE.md]``: every claim
of every ablation found (``experiments/*/*/ablation.yaml``, each claim's ``id``, ``claim``,
``paper``, ``metric``, variants ``a`` and ``b``, ``direction`` and test ``condition``), judged from
the runs under ``ROOT/<group>[-<scale>]``: the five papers in one table.

Each verdict compares the runs of ``a`` and ``b`` seed by seed: the difference of means with a
95% interval from Student's t (paired by seed when both ran the same seeds, else Welch's);
a run that has not finished training (one a sweep is still writing) is left out, named in the
verdict's note.
*reproduced*: the interval excludes 0 in the paper's direction; *contradicted*: it excludes 0 the
other way; *inconclusive*: neither (the table gives the smallest difference the sweep could have
detected). ``equal`` claims use the 90% interval against their margin. A variant is *flat* when
its validation mIoU gained less than 1 point over its last quarter of epochs. The statistics are
explained in the documentation (explanation: claim statistics); a sweep's report shows its own
ablation's claims. Under the counts, the claims a tuned sweep (``segbench sweep --tune``, group
``<group>-tuned`` in the paper's RESULTS.json) judged again with each variant at its own setting,
beside their verdicts at the shared setting.

A ``--root`` given that is not a folder, and an ``--experiments`` that is not one or holds no
ablation, are errors naming it (without ``--root``, ``runs`` is read where it is there: on a
fresh clone every verdict is then the one its sweep published).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from segbench.errors import MissingFileError
from segbench.options import command_parser
from segbench.rundir import atomic_write_files, text_writer
from segbench.study.ablation import Ablation, find_ablations
from segbench.study.publish import (
    keep_decided,
    publish_data_and_page,
    published_claims,
    read_claims,
    read_results,
)
from segbench.study.render import BEFORE_AFTER, before_after_rows, claims_table, merge_tables
from segbench.study.verdicts import (
    Judgement,
    holm_verdicts,
    judge_ablations,
    judgement_data,
    judgement_of_data,
    p_value,
    verdict_counts,
)
from segbench.tables import markdown_table

log = logging.getLogger("segbench")


def main(argv: list[str]) -> None:
    parser = command_parser("segbench claims", __doc__ or "")
    parser.add_argument(
        "--experiments", type=str, default="experiments", help="where ablations are"
    )
    parser.add_argument(
        "--root", type=str, help="the sweeps' runs: ROOT/<group>/... (default: runs)"
    )
    parser.add_argument(
        "--scale", type=str, default="cpu", help="cpu, or NAME for the -NAME groups"
    )
    parser.add_argument("--out", type=str, help="also write the table to this markdown file")
    parser.add_argument(
        "--into",
        type=str,
        help="also put the table between the <!-- sweep:claims --> marks of this markdown file "
        "(docs/results/claims.md: the five papers' table) and the verdicts, as data, beside it "
        "(FILE.json)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="judge only from the runs under --root; without it a claim with no finished runs "
        "there keeps the verdict the --into data has, else the one its sweep published (the "
        "paper's RESULTS.json): runs stay on the machine that made them, verdicts travel as data",
    )
    parser.add_argument(
        "--other_settings",
        action="store_true",
        help="judge from runs trained with other settings than the recipe's too (a smoke or try "
        "sweep's, with fit arguments after --), which are refused otherwise; their verdicts are "
        "not the recipe's, so --into refuses it",
    )
    args = parser.parse_args(argv)
    if args.other_settings and args.into:
        parser.error("--other_settings with --into: verdicts of runs other than the recipe's "
                     "are never published; write them with --out")  # fmt: skip
    experiments = Path(args.experiments)
    if not experiments.is_dir():
        raise MissingFileError(
            f"--experiments {experiments}: no such folder ({experiments.resolve()}); run segbench "
            "from the repository's root folder, or give --experiments the folder of the ablations"
        )
    if not find_ablations(experiments):
        raise MissingFileError(
            f"--experiments {experiments}: no ablation in it (none at "
            f"{experiments}/<paper>/<set>/ablation.yaml); give the folder that holds them"
        )
    # A root given that is not there is a typo; the default may well be missing (a fresh clone:
    # every verdict is then the published one).
    if args.root is not None and not Path(args.root).is_dir():
        raise MissingFileError(f"--root {args.root}: no such folder (give where the sweeps' "
                               "runs are: ROOT/<group>/<run>)")  # fmt: skip
    judged = judge_ablations(
        experiments, Path(args.root or "runs"), args.scale, recipe_only=not args.other_settings
    )
    entries = [judgement_data(j, a.name) for a, j in judged]
    data_file = Path(args.into).with_suffix(".json") if args.into else None
    if not args.fresh:
        # A claim with no runs here keeps the verdict the claims data already has (it may be
        # another scale's), else the one its sweep published (RESULTS.json).
        previous = read_claims(data_file) if data_file and data_file.is_file() else []
        ablations = {a.path: a for a, _ in judged}.values()
        entries, kept = keep_decided(entries, [*published_claims(ablations, args.scale), *previous])
        if kept:
            log.info("claims without runs here, verdicts kept from the published results: %s",
                     ", ".join(kept))  # fmt: skip
    judged = [(a, judgement_of_data(j.claim, e)) for (a, j), e in zip(judged, entries, strict=True)]
    # Each table links its papers' results relative to the file it goes into (the working
    # directory for the printed one): docs/results/claims.md read on GitHub resolves its links
    # from docs/results/.
    # --out's table and --into's data and page are one version (rundir.atomic_write_files): a
    # kill between the writes left the new table beside the page and data of the old.
    out = (
        {Path(args.out): text_writer(render_claims(judged, args.scale, Path(args.out).parent))}
        if args.out
        else {}
    )
    if args.into and data_file:
        into = Path(args.into)
        table = render_claims(judged, args.scale, into.parent)
        publish_data_and_page(data_file, {"claims": entries}, into, "claims", table, also=out)
    elif out:
        atomic_write_files(out)
    sys.stdout.write(render_claims(judged, args.scale))


def render_claims(
    judged: list[tuple[Ablation, Judgement]], scale: str = "cpu", links_from: Path = Path(".")
) -> str:
    """The five papers' table: a row per claim, its ablation linked to its paper's results
    page (relative to the folder ``links_from`` of the file the table goes into); then the
    counts by verdict, and the claims judged again with each variant tuned
    (:func:`tuned_claims`)."""
    text = ""
    corrected = holm_verdicts([j for _, j in judged])
    family = sum(p_value(j) is not None for _, j in judged)  # the claims tested (run) together
    ablations = {a.path: a for a, _ in judged}  # in order, once each
    for ablation in ablations.values():
        mine = [i for i, (a, _) in enumerate(judged) if a is ablation]
        text += claims_table(
            [judged[i][1] for i in mine],
            group=_label(ablation, links_from),
            holm=(family, [corrected[i] for i in mine]),
            links_from=links_from,
            root=ablation.folder.parent.parent.parent,  # experiments/<paper>/<set> -> the repo
        )
    counts = verdict_counts(j.verdict for _, j in judged)
    said = ", ".join(f"{n} {v}" for v, n in counts.items())
    held = ", ".join(f"{n} {v}" for v, n in verdict_counts(corrected).items())
    return (
        merge_tables(text)
        + f"\n{said} of {len(judged)} claims; with Holm's correction over the {family} tested "
        f"(familywise error 5%): {held}\n"
        + tuned_claims(list(ablations.values()), scale, links_from)
    )


def _label(ablation: Ablation, links_from: Path = Path(".")) -> str:
    """The ablation's name, linked to its paper's results (relative to the folder ``links_from``
    the table goes into) once its recipe's sweep has written them."""
    results = ablation.folder.parent / "RESULTS.md"
    if not results.is_file():
        return ablation.name
    return f"[{ablation.name}]({Path(os.path.relpath(results, links_from)).as_posix()})"


def tuned_claims(
    ablations: list[Ablation], scale: str = "cpu", links_from: Path = Path(".")
) -> str:
    """The claims an ablation judged again with each variant at its own tuned setting
    (``segbench sweep --tune``, published as ``<group>-tuned`` in its paper's RESULTS.json),
    beside their verdicts at the recipe's shared setting; empty if no ablation has."""
    rows = []
    for ablation in ablations:
        group = f"{ablation.group_at(scale)}-tuned"
        report = read_results(ablation.folder.parent / "RESULTS.json").get(group) or {}
        if not report.get("tuned"):
            continue
        by_id = {c.id: c for c in ablation.claims}
        judged = [judgement_of_data(by_id[e["id"]], e) for e in report.get("claims", [])
                  if e["id"] in by_id]  # fmt: skip
        rows += [
            [_label(ablation, links_from), *row]
            for row in before_after_rows(judged, report["tuned"])
        ]
    if not rows:
        return ""
    return (
        "\nTuned: the same claims with each variant at its own setting, chosen on the "
        "validation split (`segbench sweep --tune`), beside the verdicts of the shared-setting "
        "sweep they were tuned against, as published then (a row of the table above may come "
        "from another scale):\n\n" + markdown_table(["ablation", *BEFORE_AFTER], rows)
    )
