"""Tables put where people read them: between ``<!-- sweep:NAME -->`` marks of a markdown file
(a paper's RESULTS.md, the five-paper claims table), keeping rows decided elsewhere."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from segbench.rundir import atomic_write_text

log = logging.getLogger("segbench")


def write_results(path: Path, group: str, table: str, *, runs: int | None = None) -> bool:
    """Put ``table`` (the sweep's report) between the ``<!-- sweep:GROUP ... -->`` and
    ``<!-- /sweep:GROUP -->`` marks of a paper's ``RESULTS.md`` (a new section at its end if it
    has none); the rest of the file, the reading of the numbers, is left as written.

    ``runs``: how many runs the table reports, kept in the opening mark (``runs=N``). A table
    of more runs is not replaced by one of fewer (a one-seed sweep on a new machine does not
    overwrite a three-seed table): ``False`` then, and the file is left alone."""
    text = path.read_text() if path.is_file() else "# Results\n"
    begin = f"<!-- sweep:{group}"
    end = f"<!-- /sweep:{group} -->"
    count = f" runs={runs}" if runs is not None else ""
    if begin in text and end in text:
        start = text.index(begin)
        eol = text.index("\n", start)
        mark = text[start:eol]
        held = re.search(r" runs=(\d+)", mark)
        if held and runs is not None and int(held.group(1)) > runs:
            log.warning(
                "%s: its %s table reports %s runs, this one %d: not replaced (a sweep with at "
                "least as many finished runs replaces it)", path, group, held.group(1), runs,
            )  # fmt: skip
            return False
        rest = re.sub(r" runs=\d+", "", mark[len(begin) :])
        text = (
            text[:start]
            + begin
            + count
            + rest
            + "\n"
            + table.strip()
            + "\n"
            + text[text.index(end) :]
        )
    else:
        text = (
            text.rstrip()
            + f"\n\n## {group}\n\n{begin}{count} (written by segbench sweep) -->\n"
            + table.strip()
            + f"\n{end}\n"
        )
    atomic_write_text(path, text)
    return True


_VERDICT = re.compile(r"\*\*(reproduced|contradicted|inconclusive|not run)\*\*")


def _claim_id(row: str) -> str | None:
    """The id of a claims-table row: the parenthesised name ending its claim cell."""
    cells = row.split(" | ")
    found = re.search(r"\(([\w.-]+)\)$", cells[1]) if len(cells) > 2 else None
    return found.group(1) if found else None


def keep_decided_rows(
    text: str, verdicts: dict[str, str], previous: str
) -> tuple[str, dict[str, str]]:
    """``text`` with the row of each claim that has no runs (``not run``) replaced by its row in
    the ``previous`` file's claims table, where that row was decided; and those claims' verdicts.
    """
    begin, end = "<!-- sweep:claims", "<!-- /sweep:claims -->"
    if begin not in previous or end not in previous:
        return text, {}
    block = previous[previous.index(begin) : previous.index(end)]
    old = {}
    for row in block.splitlines():
        claim, verdict = _claim_id(row), _VERDICT.search(row)
        if claim and verdict and verdict.group(1) != "not run":
            old[claim] = (row, verdict.group(1))
    kept: dict[str, str] = {}
    lines = text.splitlines()
    for i, row in enumerate(lines):
        claim = _claim_id(row)
        if claim in old and verdicts.get(claim) == "not run":
            lines[i], kept[claim] = old[claim]
    return "\n".join(lines) + "\n", kept
