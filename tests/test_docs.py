"""The documentation site builds, strictly, and the README stays a short, true front page.

The site (``mkdocs.yml``, ``docs/``) is built as ``make docs`` builds it: ``mkdocs build --strict``,
so a broken link, a missing page in the navigation or a docstring the API pages cannot read fails
here. Its reference pages are generated from the code at build time (``docs/hooks/``), so a command,
a config key or a notebook import that changes shows up in this build.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from segbench.rundir import file_lock

ROOT = Path(__file__).resolve().parents[1]
DOCS_TOOLS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")

#: Pages a reader must find, one of each kind; the generated ones included.
KEY_PAGES = (
    "index.html",
    "tutorial/demo.html",
    "tutorial/first-ablation.html",
    "tutorial/predict.html",
    "how-to/add-architecture.html",
    "how-to/add-dataset.html",
    "how-to/add-analysis-tool.html",
    "how-to/camvid.html",
    "how-to/resume.html",
    "how-to/slurm.html",
    "how-to/export.html",
    "reference/commands/index.html",
    "reference/commands/fit.html",
    "reference/commands/sweep.html",
    "reference/config/run.html",
    "reference/config/model.html",
    "reference/config/networks.html",
    "reference/config/data.html",
    "reference/run-directory.html",
    "reference/ablation-yaml.html",
    "reference/python-api.html",
    "explanation/exact-resume.html",
    "explanation/claim-statistics.html",
    "explanation/numerics.html",
    "explanation/test-conditions.html",
    "explanation/camvid-splits.html",
    "papers/fcn.html",
    "papers/parsenet.html",
    "papers/drn.html",
    "papers/gald.html",
    "papers/dupsampling.html",
    "results/claims.html",
    "results/fcn.html",
)

VERDICT = re.compile(r"\| \*\*(reproduced|contradicted|inconclusive|not run)\*\*")


def _missing_docs_tools() -> list[str]:
    missing = []
    for name in DOCS_TOOLS:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


# The site takes ~13 s to build (~30 s beside other tests), once per make test: the first
# pytest-xdist worker to need it builds it into the run's shared temporary folder, under a lock
# the other waits on: the site is built once with any pytest-xdist schedule (an xdist_group is
# heeded only under --dist loadgroup, and there through tests/conftest.py).
@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = _missing_docs_tools()
    if missing:
        pytest.skip(
            f"the docs tools are not installed ({', '.join(missing)}): "
            "pip install -e '.[docs]' (make venv installs them)"
        )
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder of every worker's own
    out, built = shared / "docs-site", shared / "docs-site.built"
    with file_lock(shared / "docs-site.lock"):
        if not built.is_file():
            _build_site(out)
            built.touch()
    return out


def _build_site(out: Path) -> None:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--site-dir",
            str(out),
            "--config-file",
            str(ROOT / "mkdocs.yml"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-6000:]}"


def test_the_site_builds_strictly_with_every_key_page(site: Path) -> None:
    missing = [page for page in KEY_PAGES if not (site / page).is_file()]
    assert not missing, f"pages missing from the built site: {missing}"


def test_every_command_has_a_generated_page(site: Path) -> None:
    from segbench.cli import COMMANDS

    for name in ("fit", "validate", "test", "predict", *COMMANDS):
        page = site / "reference" / "commands" / f"{name}.html"
        assert page.is_file(), f"no page for segbench {name}"
        assert "usage: segbench" in page.read_text(), f"no --help captured for segbench {name}"


def test_every_commands_help_says_what_it_does_and_names_its_types() -> None:
    """The table of commands (and each command's page) leads with the first sentence of the
    command's description; a docstring whose first paragraph is its synopsis alone gave an empty
    cell for four tools."""
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        import generate
    finally:
        sys.path.remove(str(ROOT / "docs" / "hooks"))
    from segbench.cli import COMMANDS

    helps = {name: generate.capture_help([name, "--help"]) for name in COMMANDS}
    empty = [name for name, text in helps.items() if not generate.summary(text)]
    assert not empty, f"no summary in the command table for: {empty}"
    # An option's type by its name: tune's and sweep's said '<function <locals>.<lambda> at
    # 0x7f...>' for their choices and '<function _positive at 0x...>' for --jobs.
    unnamed = [name for name, text in helps.items() if "<function " in text]
    assert not unnamed, f"a type said as a function object in the --help of: {unnamed}"
    assert "(type: positive_int, default: 1)" in " ".join(helps["sweep"].split())


def _article_text(page: Path) -> str:
    """A built page's article as a reader sees it: the text without its tags."""
    found = re.search(r"<article.*?</article>", page.read_text(), re.S)
    assert found, f"no article in {page}"
    return html.unescape(re.sub(r"<[^>]+>", "", found.group(0)))


def test_a_commands_page_shows_its_description_as_text_without_restructuredtext(
    site: Path,
) -> None:
    """Each command's page renders its description (the ``--help`` prose) as text and keeps the
    usage and options as printed. The whole help in one monospace block showed the docstrings'
    markup as typed: ``--patch``, :mod:`segbench.analysis.tool`, **Empirical**; and the table
    of commands summed up convert-sbd by what SBD ships, not by what the command does."""
    from segbench.cli import COMMANDS

    for name in ("fit", "validate", "test", "predict", *COMMANDS):
        text = _article_text(site / "reference" / "commands" / f"{name}.html")
        shown = [m for m in ("``", ":class:`", ":func:`", ":meth:`", ":mod:`") if m in text]
        assert not shown, f"the page of segbench {name} shows reStructuredText: {shown}"
        assert "usage: segbench" in text, name
    erf = (site / "reference/commands/erf.html").read_text()
    assert "<strong>Empirical</strong>" in erf, "erf's description is not rendered as text"
    benchmark = (site / "reference/commands/benchmark.html").read_text()
    assert "<li><code>step</code>" in benchmark, "benchmark's list of measurements is no list"
    index = _article_text(site / "reference/commands/index.html")
    assert "segbench convert-sbd SBD's .mat class labels to PNGs" in " ".join(index.split())


def test_the_captured_help_holds_no_control_characters() -> None:
    """jsonargparse writes ``--print_config \\b[=flags]``: a terminal erases the space before the
    backspace, the reference pages showed a box for it (fit, validate, test, predict)."""
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        import generate
    finally:
        sys.path.remove(str(ROOT / "docs" / "hooks"))
    for name in ("fit", "validate", "test", "predict"):
        text = generate.capture_help([name, "--help"])
        controls = sorted({c for c in text if ord(c) < 32 and c != "\n"})
        assert not controls, f"segbench {name} --help captured with {controls}"
        assert "--print_config[=flags]" in text, name  # as a terminal shows it


def test_the_config_reference_lists_every_architecture_and_data_module(site: Path) -> None:
    import segbench.data
    from segbench.data.base import SegmentationDataModule
    from segbench.models import architectures

    networks = (site / "reference/config/networks.html").read_text()
    for name in architectures():
        assert f"segbench.models.{name}" in networks, name
    data = (site / "reference/config/data.html").read_text()
    assert "data.init_args.batch_size" in data
    # A linked key's row says once that the data module sets it (model.num_classes read "K; set
    # by the data module (linked by the CLI). (set by the data module (linked); never set by
    # hand)").
    for page in (site / "reference/config").glob("*.html"):
        for row in re.findall(r"<tr>.*?</tr>", page.read_text(), re.S):
            assert row.count("set by the data module") <= 1, (page.name, row)
    for name in segbench.data.__all__:
        cls = getattr(segbench.data, name)
        if (
            isinstance(cls, type)
            and issubclass(cls, SegmentationDataModule)
            and cls is not SegmentationDataModule
        ):
            assert f"segbench.data.{name}" in data, name


def test_the_generated_reference_pages_show_no_restructuredtext(site: Path) -> None:
    """The config keys, the ablation.yaml schema and the Python API come from docstrings written
    in reStructuredText; inside a module's literal block nothing translates ``x``, and the data
    modules' layouts showed it (``palette``, ``split_dir``, ``segbench convert-sbd <sbd_root>``)."""
    pages = [*(site / "reference/config").glob("*.html"), site / "reference/python-api.html"]
    for page in [*pages, site / "reference/ablation-yaml.html"]:
        text = _article_text(page)
        shown = [m for m in ("``", ":class:`", ":func:`", ":meth:`", ":mod:`") if m in text]
        assert not shown, f"{page.relative_to(site)} shows reStructuredText: {shown}"


def test_the_python_api_reference_documents_the_public_api(site: Path) -> None:
    """Every function and class ``segbench.__all__`` declares has its entry (the page was built
    from the notebooks' imports alone, which use none of ``load``, ``Segmenter``,
    ``Prediction``), and the notebooks' imports keep theirs."""
    import inspect

    import segbench
    from segbench.cli.lightning import build

    page = (site / "reference/python-api.html").read_text()
    public = [getattr(segbench, n) for n in segbench.__all__]
    objects = [o for o in public if inspect.isfunction(o) or inspect.isclass(o)]
    assert {o.__name__ for o in objects} >= {"load", "Segmenter", "Prediction"}
    for obj in [*objects, build]:
        assert f'id="{obj.__module__}.{obj.__qualname__}"' in page, obj
    assert 'id="segbench.deploy.api.Segmenter.predict"' in page
    assert "from segbench.analysis.loading import load_model" in page


def test_no_page_skips_a_heading_level(site: Path) -> None:
    """Headings go down one level at a time: the precision results page included its
    RESULTS.md shifted one level too deep, so its sections (h3) sat right under the title (h1)."""
    for page in sorted(site.rglob("*.html")):
        article = re.search(r"<article.*?</article>", page.read_text(), re.S)
        if article is None:
            continue
        level = 0
        for found in re.findall(r"<h([1-6])[\s>]", article.group(0)):
            assert int(found) <= level + 1, f"{page.relative_to(site)}: h{level} -> h{found}"
            level = int(found)


def test_the_claims_page_carries_the_table(site: Path) -> None:
    source = (ROOT / "docs/results/claims.md").read_text()
    assert "<!-- sweep:claims" in source
    assert "<!-- /sweep:claims -->" in source
    page = (site / "results/claims.html").read_text()
    assert "reproduced" in page
    assert "Test conditions" in page
    # The repository files its paper column names are links to their pages (they were text).
    table = page[page.index("<table>") : page.index("</table>", page.index("Holm ("))]
    assert 'href="../papers/dupsampling.html"' in table
    assert 'href="../explanation/numerics.html"' in table


#: The longest word a wide table's cell may hold (characters between two places a line may break).
LONGEST_TABLE_WORD = 14


def _unbreakable_words(cell: str) -> list[str]:
    """The words of a built table cell that a browser cannot break: a space, a ``<wbr>`` or a
    hyphen is a place to break, a no-break space is not; code is left out (the theme breaks it
    anywhere)."""
    cell = re.sub(r"<code>.*?</code>", " ", cell, flags=re.S)
    text = html.unescape(re.sub(r"<(?!wbr>)[^>]+>", "", cell).replace("<wbr>", " "))
    return [w for w in re.split(r"[ \t\n]+|(?<=-)", text) if w]


def test_the_results_tables_fit_the_page(site: Path) -> None:
    """A results page's wide tables (seven columns or more: a sweep's runs, the claims) fit a
    1400 px window without scrolling sideways only if no cell holds a long word a line cannot
    break: the runs tables' 'test/IoU/SignSymbol', 'remove_max_pooling', a tuned learning rate in
    full (0.00044844120430272773) and the claims' 'docs/papers/dupsampling.md)' made them 200 to
    900 px wider than the page, hiding the paper's numbers and the verdicts. Measured in Chromium
    at 1400 px (docs/stylesheets/extra.css lifts the theme's 5rem minimum per header); here the
    words the hook's breaks leave."""
    long_words: dict[str, set[str]] = {}
    pages = sorted((site / "results").glob("*.html"))
    assert len(pages) > 5
    for page in pages:
        for table in re.findall(r"<table>.*?</table>", page.read_text(), re.S):
            if len(re.findall(r"<th[ >]", table)) < 7:
                continue
            for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", table, re.S):
                for word in _unbreakable_words(cell):
                    if len(word) > LONGEST_TABLE_WORD:
                        long_words.setdefault(page.name, set()).add(word)
    assert not long_words, f"words no line can break in the results tables: {long_words}"
    # A mean and its std break before the '±' only: '47.55 ±' / '0.55' read as two numbers.
    tables = "".join(
        re.findall(r"<table>.*?</table>", (site / "results/fcn.html").read_text(), re.S)
    )
    assert "± " not in tables
    assert "±\u00a0" in tables


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def test_the_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = _readme().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; the docs hold the rest"
    block = _readme().split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[:2] for line in block] == [["make", "demo"], ["make", "test"]]


def test_the_readme_links_only_inside_the_repository() -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", _readme()):
        assert not re.match(r"^[a-z]+:", target), f"README links off the repository: {target}"
        assert not target.startswith("/"), f"README links by an absolute path: {target}"
        path = (ROOT / target.split("#")[0]).resolve()
        assert ROOT in path.parents, f"README links outside the repository: {target}"
        assert path.exists(), f"README links to a missing file: {target}"


def test_nothing_in_the_docs_points_outside_the_repository() -> None:
    outside = "/".join(("..", "shared"))  # the development machines' folder beside the clone
    for path in [ROOT / "README.md", ROOT / "mkdocs.yml", *(ROOT / "docs").rglob("*.md")]:
        text = path.read_text()
        assert outside not in text, path
        assert "/work/" not in text, path


def test_the_readme_counts_are_the_claims_tables() -> None:
    from segbench.study.publish import read_claims
    from segbench.study.verdicts import verdict_counts

    source = (ROOT / "docs/results/claims.md").read_text()
    block = source[source.index("<!-- sweep:claims") : source.index("<!-- /sweep:claims -->")]
    block = block.split("\nTuned: ")[0]  # the table, not the tuned claims under it
    counts = verdict_counts(VERDICT.findall(block))
    data = read_claims(ROOT / "docs/results/claims.json")
    assert counts == verdict_counts(e["verdict"] for e in data), "claims.md and claims.json"
    said = ", ".join(f"{n} {v}" for v, n in counts.items())
    assert said in _readme(), f"README.md should say '{said}' (the claims table's counts)"
    assert f"test {sum(counts.values())} of the papers' claims" in _readme()
