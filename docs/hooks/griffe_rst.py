"""A griffe extension for the API pages: segbench's docstrings use a few reStructuredText forms
(``:class:`X```, ``::`` before a literal block), which markdown would show as they are."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc):`~?([^`]+)`")


class ReSTRoles(griffe.Extension):
    """``:class:`X``` -> ```X```; a paragraph ending in ``::`` ends in ``:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = ROLE.sub(r"`\1`", obj.docstring.value)
            obj.docstring.value = re.sub(r"(\S)::$", r"\1:", text, flags=re.MULTILINE)
