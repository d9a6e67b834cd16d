"""mkdocs hooks: the pages generated from segbench's code, and the files included from the repo.

* ``on_config`` runs ``generate.py`` once, in a Python process of its own with this checkout first
  on its path (so the docs describe this tree's code, not an installed copy), and puts a page per
  command of the ``segbench`` command table under "Reference > Commands" in the navigation.
* ``on_files`` adds those command pages as generated pages.
* ``on_page_markdown`` fills two kinds of markers in the pages under ``docs/``:
  ``<!-- generated: NAME -->`` (a block from ``generate.py``: config keys, ``ablation.yaml``,
  the Python API; or the command table, the ``make`` targets from the Makefile's ``## ``
  comments, the claims' counts by verdict from the claims table) and
  ``<!-- include: PATH [drop-title] [shift=N] -->`` (a markdown file of the repository, e.g.
  ``experiments/fcn/RESULTS.md``, copied in at build time). It rewrites relative links: to a file
  that a page includes -> that page; to another repository file (a YAML recipe, a test) -> its
  path as code, since the site does not carry the repository's files. Last, claims tables show
  their long condition cells as a list under the table, and every table's words may break after
  ``/``, ``_`` and ``.``, its ``mean ± std`` before the ``±`` only (display only).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

from segbench.study.publish import read_claims
from segbench.study.verdicts import verdict_counts

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
COMMANDS_INDEX = "reference/commands/index.md"

INCLUDE = re.compile(r"^<!-- include: (\S+)((?: [\w=-]+)*) -->\s*$", re.MULTILINE)
GENERATED = re.compile(r"^<!-- generated: ([\w-]+) -->\s*$", re.MULTILINE)
LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")

_state: dict[str, Any] = {}


# -- generation ---------------------------------------------------------------------------------
def _generate() -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("COLUMNS", "100")
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("generate.py"))],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise PluginError(f"docs/hooks/generate.py failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def _command_page(name: str) -> str:
    return f"reference/commands/{name}.md"


def on_config(config: Any) -> Any:
    _state.update(_generate())
    top = next(c for c in _state["commands"] if c["name"] == "segbench")
    _state["sections"].update(
        {
            "commands-table": _commands_table(),
            "segbench-help": "```text\n" + top["help"].rstrip() + "\n```\n",
            "make-targets": _make_targets(),
            "claims-summary": _claims_summary(),
            "claims-sentence": _claims_sentence(),
        }
    )
    commands = [c for c in _state["commands"] if c["name"] != "segbench"]

    def expand(items: list[Any]) -> bool:
        for i, item in enumerate(items):
            if isinstance(item, dict):
                ((title, value),) = item.items()
                if value == COMMANDS_INDEX:
                    pages = [{f"segbench {c['name']}": _command_page(c["name"])} for c in commands]
                    items[i] = {title: [COMMANDS_INDEX, *pages]}
                    return True
                if isinstance(value, list) and expand(value):
                    return True
        return False

    if config.nav is not None and not expand(config.nav):
        raise PluginError(f"mkdocs.yml: the nav has no entry '{COMMANDS_INDEX}'")
    return config


def _commands_table() -> str:
    rows = "\n".join(
        f"| [`segbench {c['name']}`]({c['name']}.md) | {c['summary'].replace('|', '/')} |"
        for c in _state["commands"]
        if c["name"] != "segbench"
    )
    return "| command | what |\n|---|---|\n" + rows + "\n"


def _command(c: dict[str, str]) -> str:
    """A command's page: its description (the prose of its ``--help``) as text, then the usage
    and the options as the terminal prints them. The help's whole text in one monospace block
    showed the docstrings' reStructuredText (``literals``, :mod:`roles`, **bold**) as typed."""
    usage, description, options = _help_parts(c["help"])
    if description:
        lead = _help_markdown(description)
    else:
        lead = f"{c['summary']}." if c["summary"] else ""
    block = _help_plain(f"{usage}\n\n{options}".strip())
    page = f"# segbench {c['name']}\n\n{lead}\n\n## Usage and options\n\n```text\n{block}\n```\n"
    return "---\nhide:\n  - toc\n---\n\n" + page  # the help's lines need the width


HELP_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc):`~?([^`]+)`")
HELP_OPTIONS = re.compile(r"^(?:options|positional arguments):$", re.MULTILINE)


def _help_parts(text: str) -> tuple[str, str, str]:
    """A ``--help`` as (usage, description, options): the usage is its first paragraph, the
    options start at argparse's ``options:`` (or ``positional arguments:``) heading."""
    usage, _, rest = text.strip("\n").partition("\n\n")
    found = HELP_OPTIONS.search(rest)
    if found is None:
        return usage, rest, ""
    return usage, rest[: found.start()].strip("\n"), rest[found.start() :].rstrip()


def _help_plain(text: str) -> str:
    """reStructuredText's inline markup as plain text reads: ``x`` and :role:`x` as `x`."""
    return HELP_ROLE.sub(r"`\1`", text).replace("``", "`")


def _help_markdown(text: str) -> str:
    """A command's description (its module docstring's reStructuredText) as markdown: literals
    and roles as code, a ``::`` literal block fenced, a list set off from the paragraph above it."""
    lines = _help_plain(text).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("    ") and (not out or not out[-1].strip()):  # a literal block
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["```text", *textwrap.dedent("\n".join(block)).splitlines(), "```", ""]
            continue
        previous = out[-1] if out else ""
        if re.match(r"[*-] ", line) and previous.strip() and not re.match(r"[*-] | ", previous):
            out.append("")  # markdown starts a list only after a blank line
        out.append(re.sub(r"(\S)::$", r"\1:", line))
        i += 1
    return "\n".join(out).strip()


CLAIMS_DATA = DOCS / "results" / "claims.json"  # written by segbench claims --into claims.md


def claim_counts() -> dict[str, int]:
    """Claims by verdict, from the verdicts as data beside the claims page."""
    return verdict_counts(e["verdict"] for e in read_claims(CLAIMS_DATA))


def _claims_summary() -> str:
    counts = claim_counts()
    rows = "\n".join(f"| **{v}** | {n} |" for v, n in counts.items())
    return f"| verdict | claims |\n|---|---|\n{rows}\n| all | {sum(counts.values())} |\n"


def _claims_sentence() -> str:
    c = claim_counts()
    sentence = (
        f"Of the {sum(c.values())} declared claims, **{c['reproduced']} are reproduced, "
        f"{c['contradicted']} contradicted at this budget and {c['inconclusive']} inconclusive**"
    )
    return sentence + (f"; {c['not run']} are not run yet.\n" if c["not run"] else ".\n")


def _make_targets() -> str:
    rows = []
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([a-zA-Z0-9_%-]+):.*## (.*)$", line)
        if m:
            rows.append(f"| `make {m.group(1)}` | {m.group(2).replace('|', '/')} |")
    return "| target | what |\n|---|---|\n" + "\n".join(sorted(rows)) + "\n"


def on_files(files: Files, config: Any) -> Files:
    for c in _state["commands"]:
        if c["name"] != "segbench":
            files.append(File.generated(config, _command_page(c["name"]), content=_command(c)))
    # Which page includes which repository file: links to that file go to that page.
    pages: dict[str, str] = {}
    for f in files.documentation_pages():
        text = f.content_string
        for m in INCLUDE.finditer(text):
            pages.setdefault(posixpath.normpath(m.group(1)), f.src_uri)
        pages.setdefault(f"docs/{f.src_uri}", f.src_uri)
    _state["pages"] = pages
    return files


# -- markers and links ----------------------------------------------------------------------------
def _include(path: str, options: str, page_uri: str, depth: int = 0) -> str:
    source = ROOT / path
    if not source.is_file():
        raise PluginError(f"docs/{page_uri}: <!-- include: {path} -->: no such file")
    text = source.read_text()
    opts = options.split()
    if "drop-title" in opts:
        text = re.sub(r"\A\s*# [^\n]*\n", "", text, count=1)
    shift = next((int(o.split("=")[1]) for o in opts if o.startswith("shift=")), 0)
    if shift:
        text = _shift_headings(text, shift)
    text = _rewrite_links(text, posixpath.dirname(path), page_uri)
    if depth < 3:
        text = INCLUDE.sub(lambda m: _include(m.group(1), m.group(2), page_uri, depth + 1), text)
    return text


def _shift_headings(text: str, shift: int) -> str:
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        if not fenced and re.match(r"^#{1,5} ", line):
            line = "#" * shift + line
        out.append(line)
    return "\n".join(out) + "\n"


def _rewrite_links(text: str, source_dir: str, page_uri: str) -> str:
    """Links of a text that lives in ``source_dir`` (repository-relative), as the page
    ``page_uri`` (docs-relative) must write them."""
    page_dir = posixpath.dirname(page_uri)
    pages: dict[str, str] = _state["pages"]

    def target(link: str) -> tuple[str, str] | None:
        """(the link as the page writes it, the repository path it named)."""
        path, _, anchor = link.partition("#")
        anchor = f"#{anchor}" if anchor else ""
        for base in (source_dir, ""):  # beside the text, else from the repository's root
            repo_path = posixpath.normpath(posixpath.join(base, path))
            if repo_path in pages:
                return posixpath.relpath(pages[repo_path], page_dir or ".") + anchor, repo_path
            if repo_path.startswith("docs/") and (ROOT / repo_path).exists():
                return posixpath.relpath(repo_path[5:], page_dir or ".") + anchor, repo_path
            if (ROOT / repo_path).exists() and not repo_path.startswith(".."):
                return f"repo:{repo_path}", repo_path
        return None

    def replace(m: re.Match[str]) -> str:
        bang, label, link = m.groups()
        if re.match(r"^[a-z]+:|^#|^/", link):
            return m.group(0)
        found = target(link)
        if found is None:
            return m.group(0)  # mkdocs reports it (a broken link fails the strict build)
        new, path = found
        plain = label.strip("`")
        if new.startswith("repo:"):
            if plain in (path, posixpath.basename(path)):
                return f"`{path}`"
            return f"{label} (`{path}`)"
        if plain == posixpath.basename(path) and not path.startswith("docs/"):
            label = _title(path) or label  # a file named by its name: the page's title instead
        return f"{bang}[{label}]({new})"

    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        out.append(line if fenced else LINK.sub(replace, line))
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _claims_for_reading(markdown: str) -> str:
    """Every claims table (``segbench claims`` and the sweeps' reports write them: a ``claim``
    column, a ``condition`` column last), shown for reading: the long condition cells leave the
    table for a list under it, linked from each row. Display only: the files keep the tables as
    written (``claims --into`` and the sweeps rewrite them); a later step renders them from JSON.
    """
    out: list[str] = []
    lines = markdown.splitlines()
    seen: dict[str, int] = {}
    i = 0
    while i < len(lines):
        header = _cells(lines[i])
        if not (header and header[-1] == "condition" and "claim" in header):
            out.append(lines[i])
            i += 1
            continue
        claim_col = header.index("claim")
        rows = []
        i += 2  # the header and its separator
        while i < len(lines) and lines[i].startswith("|"):
            rows.append(_cells(lines[i]))
            i += 1
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        notes = []
        for cells in rows:
            *head, condition = cells
            found = re.search(r"\(([\w.-]+)\)$", head[claim_col])
            if condition in ("", "–") or not found:
                out.append("| " + " | ".join([*head, condition or "–"]) + " |")
                continue
            seen[found.group(1)] = seen.get(found.group(1), 0) + 1
            anchor = f"condition-{found.group(1)}" + (
                f"-{seen[found.group(1)]}" if seen[found.group(1)] > 1 else ""
            )
            out.append("| " + " | ".join([*head, f"[below](#{anchor})"]) + " |")
            notes += [f'<a id="{anchor}"></a>**{head[claim_col]}**: {condition}', ""]
        if notes:
            out += [
                "",
                "*Test conditions: what must hold for the experiment to be able to show "
                "the claim, and what was measured of it.*",
                "",
                *notes,
            ]
    return "\n".join(out) + ("\n" if markdown.endswith("\n") else "")


#: Where a table cell may break besides its spaces: after a '/', '_' or '.' followed by a letter.
CELL_BREAK = re.compile(r"([/_.])(?=[A-Za-z])")
#: What of a cell is left as written: code spans, HTML tags, a link's target.
CELL_KEEP = re.compile(r"(`[^`]*`|<[^>]*>|\]\([^)]*\))")


def _tables_for_reading(markdown: str) -> str:
    """Tables made to fit the page's width (display only, as :func:`_claims_for_reading`): a
    cell's words may break after ``/``, ``_`` or ``.`` (``test/IoU/SignSymbol (%)``,
    ``remove_max_pooling``, ``docs/papers/gald.md``), not only at its spaces, and a
    ``mean ± std`` breaks before the ``±`` only. Such unbreakable words and three-line numbers
    made the sweeps' runs tables (12 to 14 columns) wider than a 1400 px page; the CSS
    (``docs/stylesheets/extra.css``) does the rest.
    """
    out, fenced = [], False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        cells = None if fenced else _cells(line)
        # A cell split inside a code span (a '|' in the code) is left alone.
        if cells and all(cell.count("`") % 2 == 0 for cell in cells):
            broken = [
                "".join(p if i % 2 else CELL_BREAK.sub(r"\1<wbr>", p)
                        for i, p in enumerate(CELL_KEEP.split(cell)))
                for cell in cells
            ]  # fmt: skip
            if broken != cells:
                line = "| " + " | ".join(broken) + " |"
            line = line.replace(" ± ", " ±\u00a0")
        out.append(line)
    return "\n".join(out) + ("\n" if markdown.endswith("\n") else "")


def _cells(line: str) -> list[str] | None:
    """The cells of a markdown table row (``segbench`` writes no ``|`` inside a cell)."""
    if not line.startswith("|") or line.startswith("|---"):
        return None
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def _title(repo_path: str) -> str | None:
    """The first ``# `` heading of a repository markdown file."""
    m = re.search(r"^# (.+)$", (ROOT / repo_path).read_text(), re.MULTILINE)
    return m.group(1).strip() if m else None


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    uri = page.file.src_uri

    def generated(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in _state["sections"]:
            raise PluginError(f"docs/{uri}: no generated block '{name}' (docs/hooks/generate.py)")
        return _state["sections"][name]

    markdown = _rewrite_links(markdown, posixpath.dirname(f"docs/{uri}"), uri)
    markdown = INCLUDE.sub(lambda m: _include(m.group(1), m.group(2), uri), markdown)
    markdown = GENERATED.sub(generated, markdown)
    return _tables_for_reading(_claims_for_reading(markdown))
