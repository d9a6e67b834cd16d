"""Markdown tables: the one way segbench writes a table for people (reports, tools, benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """``| a | b |`` lines: the header, its rule, one line per row (cells as ``str``; a ``|``
    inside a cell becomes ``/`` so it cannot split the row)."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)]) + "\n"
