"""Tables put where people read them: between ``<!-- sweep:NAME -->`` marks of a markdown file
(a paper's RESULTS.md, the five-papers claims page), rendered from data kept beside the page
(``RESULTS.json``: each sweep group's report; ``claims.json``: each claim's verdict), so that
results made elsewhere are kept, and compared, without reading markdown back."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from segbench.errors import DataError
from segbench.rundir import atomic_write_files, json_writer, text_writer
from segbench.study.ablation import Ablation, Claim
from segbench.study.render import render_report
from segbench.study.runs import count_runs

log = logging.getLogger("segbench")


def results_page(path: Path, group: str, table: str) -> str:
    """The markdown page ``path`` with ``table`` between its ``<!-- sweep:GROUP ... -->`` and
    ``<!-- /sweep:GROUP -->`` marks (a new section at its end if it has none); the rest of the
    page, the reading of the numbers, is left as written."""
    text = path.read_text() if path.is_file() else "# Results\n"
    begin = f"<!-- sweep:{group}"
    end = f"<!-- /sweep:{group} -->"
    if begin in text and end in text:
        eol = text.index("\n", text.index(begin))
        return text[: eol + 1] + table.strip() + "\n" + text[text.index(end) :]
    return (
        text.rstrip()
        + f"\n\n## {group}\n\n{begin} (rendered from {path.stem}.json by segbench sweep) -->\n"
        + table.strip()
        + f"\n{end}\n"
    )


def publish_data_and_page(
    store: Path,
    data: Any,
    page: Path,
    group: str,
    table: str,
    also: Mapping[Path, Callable[[BinaryIO], object]] | None = None,
) -> None:
    """The data file and the page rendered from it, as one version
    (:func:`segbench.rundir.atomic_write_files`): a kill between the two writes left the new data
    beside the page of the old. ``also``: other files of the same version (``segbench claims
    --out``'s table), by path, each with its ``write(file)``."""
    atomic_write_files(
        {
            **(also or {}),
            store: json_writer(data),
            page: text_writer(results_page(page, group, table)),
        }
    )


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """The reports stored beside a paper's ``RESULTS.md`` (``RESULTS.json``), by sweep group
    (empty if there is none); errors name the file."""
    if not path.is_file():
        return {}
    try:
        groups = json.loads(path.read_text())["groups"]
        if not all(isinstance(g, dict) and "rows" in g for g in groups.values()):
            raise TypeError("each group needs its rows")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: not a results data file ({err})") from err
    return dict(groups)


def publish_results(
    page: Path, group: str, data: dict[str, Any], claims: Sequence[Claim] = ()
) -> bool:
    """Store a sweep's report ``data`` under ``group`` in the data beside ``page`` (a paper's
    ``RESULTS.md`` -> ``RESULTS.json``) and render its table between the group's marks of the
    page. A report of more runs is not replaced by one of fewer (a one-seed sweep on a new
    machine does not overwrite a three-seed table): ``False`` then, and both files are left
    alone."""
    store = page.with_suffix(".json")
    groups = read_results(store)
    held = count_runs(groups[group]) if group in groups else 0
    if held > count_runs(data):
        log.warning(
            "%s: its %s report holds %d runs, this one %d: not replaced (a sweep with at least "
            "as many runs replaces it)", store, group, held, count_runs(data),
        )  # fmt: skip
        return False
    groups[group] = data
    # experiments/<paper>/RESULTS.md: the repository is two folders up.
    table = render_report(data, claims, links_from=page.parent, root=page.parent.parent.parent)
    publish_data_and_page(store, {"groups": groups}, page, group, table)
    return True


def read_claims(path: Path) -> list[dict[str, Any]]:
    """The judgements stored in a claims data file (``claims.json``, written by ``segbench claims
    --into``); errors name the file."""
    try:
        data = json.loads(path.read_text())
        entries = data["claims"]
        if not all(isinstance(e, dict) and "id" in e and "verdict" in e for e in entries):
            raise TypeError("each claim needs an id and a verdict")
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a claims data file ({err}); regenerate it with segbench "
                        "claims --into ... --fresh") from err  # fmt: skip
    return list(entries)


def published_claims(ablations: Iterable[Ablation], scale: str = "cpu") -> list[dict[str, Any]]:
    """The claims as each ablation's sweep published them (its paper's ``RESULTS.json``, under
    the ablation's group, ``-<scale>`` unless ``cpu``), as claims data with the ablation named:
    the verdicts of runs made on another machine."""
    out: list[dict[str, Any]] = []
    for ablation in ablations:
        group = ablation.group_at(scale)
        report = read_results(ablation.folder.parent / "RESULTS.json").get(group) or {}
        out += [{**e, "ablation": ablation.name} for e in report.get("claims", [])]
    return out


def keep_decided(
    entries: list[dict[str, Any]], previous: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """``entries`` (this machine's judgements, as data) with each claim that has no runs here
    (``not run``) replaced by its ``previous`` entry where that one was decided; and the ids kept.
    Runs stay on the machine that made them; their verdicts travel as data."""
    decided = {e["id"]: e for e in previous if e["verdict"] != "not run"}
    out, kept = [], []
    for entry in entries:
        if entry["verdict"] == "not run" and entry["id"] in decided:
            out.append(decided[entry["id"]])
            kept.append(entry["id"])
        else:
            out.append(entry)
    return out, kept
