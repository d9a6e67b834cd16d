"""Reference text generated from segbench's code, for the documentation site.

Run by the mkdocs hook (``docs/hooks/segbench_docs.py``) in a Python process of its own, with the
repository first on ``sys.path``; prints one JSON object:

* ``commands``: every command of the ``segbench`` command table (Lightning's subcommands and the
  tools) with its ``--help``, captured by calling the command's own entry point;
* ``sections``: markdown blocks that pages ask for with ``<!-- generated: NAME -->``: the config
  keys of the ``run`` section, the task, every network and every data module (from the same
  jsonargparse signatures the command line parses), the ``ablation.yaml`` schema (from its
  dataclasses), and the Python API the notebooks import.

Nothing here describes a key or a command by hand: a new architecture, tool or field shows up
in the docs by existing, a data module by being exported from ``segbench.data`` (``__all__``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import io
import json
import os
import pkgutil
import re
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from types import NoneType, UnionType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

#: Linked keys: set by the data module, never by hand (segbench.config.LINKS).
LINKED_NOTE = "set by the data module (linked); never set by hand"


# -- text ------------------------------------------------------------------------------------
def markdown_text(text: str | None) -> str:
    """A docstring fragment as one markdown table cell: RST roles and ``literals`` as code."""
    text = " ".join((text or "").split())
    text = re.sub(r":(?:class|func|meth|attr|mod|data|obj):`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return text.replace("|", "\\|")


def type_name(hint: Any) -> str:
    """A type hint as a reader of a YAML file needs it."""
    if hint is NoneType or hint is None:
        return "null"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return " \\| ".join(f'"{a}"' if isinstance(a, str) else json.dumps(a) for a in args)
    if origin in (typing.Union, UnionType):
        return " \\| ".join(type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list[{type_name(args[0])}]"
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is not None and getattr(origin, "__name__", "") in ("list", "Sequence", "Iterable"):
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is not None and getattr(origin, "__name__", "") == "Callable":
        ret = args[-1] if args else None
        return f"class_path ({type_name(ret)})" if ret is not None else "class_path"
    if origin is dict:
        return "mapping"
    if isinstance(hint, type):
        return hint.__name__
    return markdown_text(str(hint).replace("typing.", ""))


def yaml_value(value: Any) -> str:
    """A default as it would be written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str).replace("|", "\\|")
    if isinstance(value, str):
        return value if value else '""'
    return str(value)


# -- config keys (jsonargparse, as the command line parses them) -----------------------------
def key_rows(cls: type, prefix: str, skip: set[str] = frozenset()) -> list[str]:
    """Markdown table rows ``key | type | default | description`` of a class's init args."""
    from jsonargparse import ArgumentParser
    from jsonargparse._typehints import ActionTypeHint

    from segbench.config import LINKS

    linked = {target for _, target in LINKS}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, prefix, skip=set(skip), sub_configs=True)
    rows = []
    for action in parser._actions:
        if not isinstance(action, ActionTypeHint):
            continue
        key = action.dest
        hint = getattr(action, "_typehint", None)
        default = action.default
        if key in linked:
            # A help that already says the data module sets it gets the rest of the note only.
            said = "set by the data module" in (action.help or "")
            default_text = "–"
            note = " *(linked; never set by hand)*" if said else f" *({LINKED_NOTE})*"
        else:
            default_text = (
                "*required*"
                if default is None and getattr(action, "required", False)
                else f"`{yaml_value(default)}`"
            )
            note = ""
        rows.append(
            f"| `{key}` | {type_name(hint)} | {default_text} | {markdown_text(action.help)}{note} |"
        )
    return rows


def key_table(cls: type, prefix: str, skip: set[str] = frozenset()) -> str:
    rows = key_rows(cls, prefix, skip)
    if not rows:
        return "*(no keys)*\n"
    return "| key | type | default | what |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"


def api_block(obj: Any, heading_level: int = 3, **options: Any) -> str:
    """A mkdocstrings block for ``obj``, named by the module that defines it."""
    module = obj if inspect.ismodule(obj) else inspect.getmodule(obj)
    path = module.__name__ if inspect.ismodule(obj) else f"{module.__name__}.{obj.__qualname__}"
    lines = [f"::: {path}", "    options:", f"      heading_level: {heading_level}"]
    lines += [f"      {k}: {json.dumps(v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


def config_run() -> str:
    from segbench.config import RunConfig

    return key_table(RunConfig, "run")


def config_model() -> str:
    from segbench.task import SegmentationTask

    return key_table(SegmentationTask, "model", skip={"net"})


def networks() -> list[type]:
    """Every architecture (the registry), then the other networks ``segbench.models`` exports."""
    import torch.nn as nn

    import segbench.models as models

    found = dict(models.architectures())
    for name in getattr(models, "__all__", []):
        obj = getattr(models, name, None)
        if (
            isinstance(obj, type)
            and issubclass(obj, nn.Module)
            and obj is not models.SegmentationModel
            and name not in found
        ):
            found[name] = obj
    return [found[n] for n in sorted(found)]


def data_modules() -> list[type]:
    import segbench.data as data
    from segbench.data.base import SegmentationDataModule

    out = []
    for name in sorted(getattr(data, "__all__", dir(data))):
        obj = getattr(data, name, None)
        if (
            isinstance(obj, type)
            and issubclass(obj, SegmentationDataModule)
            and obj is not SegmentationDataModule
        ):
            out.append(obj)
    return out


def first_line(obj: Any) -> str:
    return markdown_text((inspect.getdoc(obj) or "").split("\n\n")[0])


def class_sections(classes: list[type], package: str, prefix: str) -> list[str]:
    """An index of ``classes`` (``class_path: <package>.<Name>``), then a section per class: its
    module's documentation (where it says more than one line) and its keys under ``prefix``."""
    parts = ["| `class_path` | what |\n|---|---|\n"]
    parts += [
        f"| [`{package}.{c.__name__}`](#{c.__name__.lower()}) | {first_line(c)} |\n"
        for c in classes
    ]
    shown: dict[Any, str] = {}  # module -> the class whose section shows its documentation
    for cls in classes:
        parts.append(
            f"\n## {cls.__name__}\n\n`class_path: {package}.{cls.__name__}`: {first_line(cls)}\n\n"
        )
        module = inspect.getmodule(cls)
        if module in shown:
            parts.append(
                f"Its module's documentation: [{shown[module]}](#{shown[module].lower()}).\n"
            )
        elif len((inspect.getdoc(module) or "").strip().split("\n\n")) > 1:
            shown[module] = cls.__name__
            parts.append(
                api_block(
                    module,
                    heading_level=3,
                    show_root_heading=False,
                    members=False,
                    show_source=False,
                    show_root_toc_entry=False,
                )
            )
        parts.append("\n" + key_table(cls, prefix) + "\n")
    return parts


def config_networks() -> str:
    return "".join(class_sections(networks(), "segbench.models", "model.net.init_args"))


def config_data() -> str:
    from segbench.data.transforms import Augment

    parts = class_sections(data_modules(), "segbench.data", "data.init_args")
    parts.append(
        f"\n## Augment\n\n`data.init_args.augment`: {first_line(Augment)} "
        "Every data module's `augment` key takes these fields.\n\n"
    )
    parts.append(key_table(Augment, "data.init_args.augment"))
    return "".join(parts)


# -- ablation.yaml (its dataclasses, wherever the study code lives) --------------------------
def segbench_modules() -> Iterator[Any]:
    import segbench

    for info in pkgutil.walk_packages(segbench.__path__, "segbench."):
        try:
            yield importlib.import_module(info.name)
        except ImportError:  # an optional extra (onnx, submitit) not installed
            continue


def find_dataclass(name: str, field_names: set[str]) -> type:
    """The dataclass ``name`` of segbench that has these fields (found, not imported by path,
    so the page follows the code when it moves)."""
    for module in segbench_modules():
        obj = getattr(module, name, None)
        if (
            dataclasses.is_dataclass(obj)
            and obj.__module__ == module.__name__
            and field_names <= {f.name for f in dataclasses.fields(obj)}
        ):
            return obj
    raise LookupError(f"no dataclass {name} with fields {sorted(field_names)} in segbench")


def field_table(cls: type, skip: set[str] = frozenset()) -> str:
    import docstring_parser

    doc = docstring_parser.parse(inspect.getdoc(cls) or "")
    described = {p.arg_name: p.description for p in doc.params}
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | what |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.default is not dataclasses.MISSING:
            default = f"`{yaml_value(f.default)}`"
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f"`{yaml_value(f.default_factory())}`"  # type: ignore[misc]
        else:
            default = "*required*"
        rows.append(
            f"| `{f.name}` | {type_name(hints[f.name])} | {default} | "
            f"{markdown_text(described.get(f.name, ''))} |"
        )
    return "\n".join(rows) + "\n"


def ablation_schema() -> str:
    ablation = find_dataclass("Ablation", {"name", "group", "claims"})
    step = find_dataclass("Step", {"command", "only"})
    claim = find_dataclass("Claim", {"id", "claim", "metric", "a", "b", "direction"})
    tune = find_dataclass("TuneSpec", {"space", "trials", "seed"})
    parts = [
        f"### The file (`{ablation.__module__}.{ablation.__name__}`)\n\n",
        field_table(ablation, skip={"path"}),
        f"\n### A step: `before`, `after_each`, `after` (`{step.__module__}.{step.__name__}`)\n\n",
        markdown_text(inspect.getdoc(step)).replace("\\|", "|") + "\n\n",
        "A step is a list (the command) or a mapping with these keys:\n\n",
        field_table(step),
        f"\n### A claim: `claims` (`{claim.__module__}.{claim.__name__}`)\n\n",
        field_table(claim),
        f"\n### Tuning each variant first: `tune` (`{tune.__module__}.{tune.__name__}`)\n\n",
        "Read by `segbench sweep --ablation NAME --tune` ([tune](../how-to/tune.md)).\n\n",
        field_table(tune),
    ]
    return "".join(parts)


# -- the Python API: what the notebooks import ---------------------------------------------
IMPORT = re.compile(r"^\s*from\s+(segbench[\w.]*)\s+import\s+(.+)$")


def notebook_imports() -> dict[str, list[tuple[str, str]]]:
    """``{notebook: [(module, name), ...]}`` of the ``from segbench... import`` lines."""
    found: dict[str, list[tuple[str, str]]] = {}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        for cell in cells:
            if cell.get("cell_type") != "code":
                continue
            for line in "".join(cell["source"]).splitlines():
                m = IMPORT.match(line)
                if m:
                    names = [n.strip().split(" as ")[0] for n in m.group(2).strip("()").split(",")]
                    found.setdefault(nb.name, []).extend((m.group(1), n) for n in names if n)
    return found


def public_api() -> list[tuple[str, Any]]:
    """``(name, object)`` of what ``segbench`` declares public (its ``__all__``), in that order:
    the functions and classes (``__version__`` is no API to document). Declared rather than
    found in the notebooks, which use none of it: the page omitted ``segbench.load``."""
    import segbench

    out = []
    for name in segbench.__all__:
        obj = getattr(segbench, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            out.append((name, obj))
    return out


def python_api() -> str:
    from segbench.cli.lightning import build

    parts = ["## The public API: `segbench`\n\n"]
    parts.append(
        "What `import segbench` declares (`segbench.__all__`): a trained run as a function from "
        "images to label maps ([predict from Python](../how-to/python-api.md)).\n"
    )
    seen = {(build.__module__, build.__qualname__)}
    for name, obj in public_api():
        seen.add((inspect.getmodule(obj).__name__, obj.__qualname__))
        parts.append("\n" + api_block(obj, heading_level=3, show_root_full_path=False))
        parts.append(f"\nImported as `segbench.{name}` (`from segbench import {name}`).\n")
    imports = notebook_imports()
    used: dict[tuple[str, str], list[str]] = {}
    for nb, pairs in imports.items():
        for pair in pairs:
            used.setdefault(pair, []).append(nb)
    parts += ["\n## Building a config in Python\n\n", api_block(build, heading_level=3)]
    parts.append("\n## What the notebooks import\n\n| import | used in |\n|---|---|\n")
    for (module, name), nbs in sorted(used.items()):
        where = ", ".join(f"`notebooks/{n}`" for n in nbs)
        parts.append(f"| `from {module} import {name}` | {where} |\n")
    for (module, name), _ in sorted(used.items()):
        obj = getattr(importlib.import_module(module), name)
        key = (inspect.getmodule(obj).__name__, obj.__qualname__)
        if key in seen:
            continue
        seen.add(key)
        parts.append("\n" + api_block(obj, heading_level=3, show_root_full_path=False))
        parts.append(f"\nImported as `from {module} import {name}`.\n")
    return "".join(parts)


# -- commands ---------------------------------------------------------------------------------
def command_table() -> list[str]:
    """The names ``segbench`` dispatches: Lightning's subcommands, then the command table."""
    from lightning.pytorch.cli import LightningCLI

    import segbench.cli as cli

    return [*LightningCLI.subcommands(), *cli.COMMANDS]


def capture_help(argv: list[str]) -> str:
    """What ``segbench ARGV`` prints (``--help`` exits)."""
    import segbench.cli as cli

    out = io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(io.StringIO()),
        contextlib.suppress(SystemExit),  # --help exits
    ):
        cli.main(argv)
    # jsonargparse's "--print_config \b[=flags]": a backspace erases the character before it on
    # a terminal; in a page it is a box. Apply it as the terminal does.
    return re.sub(r".\x08", "", out.getvalue())


def summary(help_text: str) -> str:
    """The first sentence of a help's description (the paragraph after the usage), without a
    leading synopsis (``segbench TOOL [...]``:)."""
    paragraphs = [p for p in re.split(r"\n\s*\n", help_text) if p.strip()]
    for p in paragraphs:
        lines = [line for line in p.splitlines() if not re.match(r"\s*usage:|\s{8,}\S", line)]
        text = " ".join(" ".join(lines).split())
        if not text or text.startswith("-") or text.endswith(":"):
            continue
        if "``segbench" in text[:400]:  # the synopsis, which the usage line already gives
            text = re.sub(r"^.*?``segbench[^`]*``[.:]?\s*", "", text, count=1)
            if not text:  # a synopsis alone in its paragraph: the next one says what it does
                continue
        text = text.replace("``", "`")
        text = re.split(r"(?<!\bal)(?<!\bsec)(?<!e\.g)(?<!i\.e)\.\s", text, maxsplit=1)[0]
        if len(text) > 120:  # a long sentence: its lead-in, where it has one
            head = text.split(": ", 1)[0]
            text = head if len(head) >= 40 else text
        text = text.rstrip(".:")
        return text[:1].upper() + text[1:]
    return ""


def commands() -> list[dict[str, str]]:
    out = [{"name": "segbench", "help": capture_help(["--help"]), "summary": ""}]
    for name in command_table():
        text = capture_help([name, "--help"])
        out.append({"name": name, "help": text, "summary": summary(text)})
    return out


SECTIONS: dict[str, Callable[[], str]] = {
    "config-run": config_run,
    "config-model": config_model,
    "config-networks": config_networks,
    "config-data": config_data,
    "ablation-schema": ablation_schema,
    "python-api": python_api,
}


def main() -> None:
    os.chdir(ROOT)  # the commands find experiments/ relative to the working directory
    os.environ.setdefault("COLUMNS", "100")
    sys.argv[0] = "segbench"  # the program name the help texts show
    result = {"commands": commands(), "sections": {k: f() for k, f in SECTIONS.items()}}
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
