"""How segbench's own commands read their options: with jsonargparse, as ``segbench fit`` does.

Every command that is not one of Lightning's (``fit``, ``validate``, ``test``, ``predict``) builds
its parser with :func:`command_parser`: typed values checked as they are parsed, the same
``--help`` layout, and an error in two lines (the usage, then the error naming the option). A
command whose options are a dataclass (the analysis tools, ``benchmark``, ``summary``) adds it with
``parser.add_class_arguments`` and reads it back with :func:`options_of`; its docstring's
``Args:`` section is the help. A command that passes ``segbench fit`` arguments on splits them
off first with :func:`split_argv`.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import inspect
import re
import sys
from collections.abc import Sequence
from dataclasses import fields
from types import FunctionType, UnionType
from typing import Any, Literal, NoReturn, TypeVar, Union, get_args, get_origin, get_type_hints

from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace

from segbench.errors import ConfigError
from segbench.rundir import RunDir

__all__ = [
    "CommandParser",
    "OptionKind",
    "command_parser",
    "option_keys",
    "option_kind",
    "options_of",
    "positive_int",
    "split_argv",
]

T = TypeVar("T")


class _Formatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description (a module docstring) as written, and a type
    said by its name: an option with choices shows them in place of a type (jsonargparse's
    checker of them is a lambda), one of a function by the function's name (``positive_int``),
    never as ``<function <locals>.<lambda> at 0x...>``."""

    def _get_type_str(self, action: argparse.Action) -> str | None:
        if action.choices is not None:
            return None
        if isinstance(action.type, FunctionType):
            return None if action.type.__name__ == "<lambda>" else action.type.__name__
        return super()._get_type_str(action)


def positive_int(text: str) -> int:
    """An option's type: a whole number of at least 1 (runs at once, minutes, nodes)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class CommandParser(ArgumentParser):
    """jsonargparse's parser whose errors are two lines: the usage, then the error."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {' '.join(plain_choices(message).split())}\n")
        raise SystemExit(2)


_LITERAL = re.compile(r"Expected a typing\.Literal\[(.*?)\]\. Got value: (\S+)")
#: A Literal or null (``Optional[Literal[...]]``): jsonargparse lists the subtypes and the errors.
_OPTIONAL_LITERAL = re.compile(
    r"Does not validate against any of the Union subtypes\s+"
    r"Subtypes: \[typing\.Literal\[(.*?)\], <class 'NoneType'>\]\s+"
    r"Errors:.*?Given value: (\S+)",
    re.DOTALL,
)


#: An unknown argument of a class given by ``class_path`` (a network, an optimiser, a data module).
_UNKNOWN_ARGUMENT = re.compile(r"Option '(\w+)' is not accepted")
_CLASS_PATH = re.compile(r"class_path(?:=| )'([\w.]+)'")
_PARSER_KEY = re.compile(r'^Parser key "([\w.]+)"')


def init_arguments(class_path: str) -> list[str]:
    """The keyword arguments ``class_path``'s constructor takes (what its ``init_args`` may
    hold), in their order."""
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", "params")
    ]


def plain_unknown_argument(message: str) -> str:
    """jsonargparse's error for a misspelt ``init_args`` key (``Option 'lrr' is not accepted``,
    inside several lines of Union subtypes for an optimiser or a data module) said in one line
    naming the key, the class, the nearest argument and all of them: ``model.optimizer:
    torch.optim.SGD takes no argument lrr (did you mean lr?); it takes lr, momentum, ...``."""
    unknown, cls, key = (p.search(message) for p in (_UNKNOWN_ARGUMENT, _CLASS_PATH, _PARSER_KEY))
    if not (unknown and cls and key):
        return message
    try:
        names = init_arguments(cls.group(1))
    except Exception:  # the class is not importable: jsonargparse's message stands
        return message
    got = unknown.group(1)
    return f"{key.group(1)}: {cls.group(1)} takes no argument {got}{_nearest(got, names)}; " + (
        f"it takes {', '.join(names)}"
    )


def _nearest(got: str, names: list[str]) -> str:
    """`` (did you mean NAME?)`` for the name nearest ``got``, or nothing if none is near."""
    near = difflib.get_close_matches(got, names, n=1, cutoff=0.5)
    return f" (did you mean {near[0]}?)" if near else ""


def plain_choices(message: str) -> str:
    """jsonargparse's ``Expected a typing.Literal['whole', 'slide']. Got value: slid`` said as
    ``must be one of whole, slide (did you mean slide?); got slid`` (and its several lines for
    a Literal or null as ``must be one of ..., null; got ...``)."""

    def plain(match: re.Match[str], null: bool = False) -> str:
        try:
            values = ast.literal_eval(f"[{match.group(1)}]")
        except (ValueError, SyntaxError):
            return match.group(0)
        choices = list(dict.fromkeys(str(c) for c in values)) + (["null"] if null else [])
        got = match.group(2)
        return f"must be one of {', '.join(choices)}{_nearest(got, choices)}; got {got}"

    message = plain_unknown_argument(message)
    message = _OPTIONAL_LITERAL.sub(lambda m: plain(m, null=True), message)
    return _LITERAL.sub(plain, message)


def command_parser(prog: str, description: str, *, usage: str | None = None) -> CommandParser:
    """The parser of the command ``prog`` (``"segbench report"``); ``usage`` replaces the one
    listing every option (a short one is printed above each error)."""
    return CommandParser(
        prog=prog, description=description, usage=usage, formatter_class=_Formatter
    )


def options_of(cls: type[T], ns: Namespace) -> T:
    """The dataclass ``cls`` from the values parsed for it."""
    return cls(**{f.name: ns[f.name] for f in fields(cls)})  # type: ignore[arg-type]


OptionKind = Literal["flag", "list", "value"]


def option_kind(hint: Any) -> OptionKind:
    """``flag`` for a bool, ``list`` for a list or tuple of any length (``X | None`` too),
    ``value`` otherwise."""
    if hint is bool:
        return "flag"
    kinds = [hint, *get_args(hint)] if get_origin(hint) in (Union, UnionType) else [hint]
    for kind in kinds:
        if get_origin(kind) is list or (get_origin(kind) is tuple and Ellipsis in get_args(kind)):
            return "list"
    return "value"


def option_keys(*classes: type) -> dict[str, OptionKind]:
    """The option names of the dataclasses ``classes``, each with its kind."""
    return {
        name: option_kind(hint) for cls in classes for name, hint in get_type_hints(cls).items()
    }


#: The ``segbench fit`` options that are not dotted keys; every other fit key has a dot
#: (``--model.net.init_args.width``), so a plain ``--name`` a command does not know is a typo.
FIT_TOP_KEYS = ("config", "c", "seed_everything", "print_config", "ckpt_path", "trainer", "model",
                "data", "run", "optimizer", "lr_scheduler")  # fmt: skip


def split_argv(
    argv: Sequence[str], keys: dict[str, OptionKind], *, runs: bool = True
) -> tuple[list[str], list[str], list[str]]:
    """``argv`` as (run directories, the command's options, ``segbench fit`` arguments).

    With ``runs``, leading positional words are run directories; an option whose key is one of
    ``keys`` goes to the command with the words after it (the words of a list option, or several
    words, become one list value: ``--dims 11`` and ``--dims 16 32``; a flag alone means
    ``true``), any other option (``--config``, ``--model...``, ``--data...``) to ``segbench fit``
    with its value.
    """
    argv = list(argv)
    run_dirs: list[str] = []
    while runs and argv and not argv[0].startswith("-"):
        word = argv.pop(0)
        RunDir.given(word)
        run_dirs.append(word)
    own: list[str] = []
    fit: list[str] = []
    while argv:
        word = argv.pop(0)
        if not word.startswith("-"):
            where = "run directories come first (segbench TOOL RUN_DIR ... [options])"
            if not runs and RunDir(word).is_run():
                config = RunDir(word).config
                where = f"a run directory; this command takes its config: --config {config}"
            elif not runs:
                where = "not an option"
            raise ConfigError(f"{word!r}: {where}")
        key, has_value, _ = word.lstrip("-").partition("=")
        values: list[str] = []
        while not has_value and argv and not re.match(r"--?[A-Za-z]", argv[0]):
            values.append(argv.pop(0))
        if key.rstrip("+") in keys or key in ("h", "help"):
            own.append(word)
            kind = keys.get(key.rstrip("+"), "value")
            listed = len(values) == 1 and values[0].lstrip().startswith("[")
            if len(values) > 1 or (kind == "list" and values and not listed):
                values = ["[" + ",".join(values) + "]"]
            elif not values and not has_value and kind == "flag":
                values = ["true"]
            own += values
        elif runs and key in ("run", "runs"):
            raise ConfigError(
                f"--{key} is gone: run directories are given first, positionally "
                "(segbench TOOL RUN_DIR [RUN_DIR ...] [options])"
            )
        elif "." not in key and key.rstrip("+") not in FIT_TOP_KEYS:
            # Not a fit key (those are dotted, or one of a few): a misspelt option of the command.
            near = difflib.get_close_matches(key.rstrip("+"), list(keys), n=1, cutoff=0.6)
            raise ConfigError(
                f"--{key}: not an option of this command"
                + (f" (did you mean --{near[0]}?)" if near else "")
                + f"; its options: {', '.join('--' + k for k in keys)}; after them, segbench fit "
                "keys (--config FILE.yaml, --model..., --data..., --trainer...)"
            )
        else:
            fit.append(word)
            fit += values
    return run_dirs, own, fit


def record_options(argv: Sequence[str], runs: Sequence[str]) -> list[str]:
    """What an analysis tool's command line says about how it measures, as its ``--record``
    keeps it: ``argv`` without the run directories, ``--out DIR`` and ``--record [true|false]``
    (where the output goes, not what it measures). A sweep's after-step compares its own command
    with it before it skips a run already recorded."""
    out: list[str] = []
    skip = 0
    for i, arg in enumerate(argv):
        if skip:
            skip -= 1
            continue
        if arg in runs or arg.startswith(("--out=", "--record=")):
            continue
        if arg == "--out":
            skip = 1
        elif arg == "--record":
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            skip = 1 if nxt.lower() in ("true", "false") else 0
        else:
            out.append(arg)
    return out
