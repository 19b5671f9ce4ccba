"""Prompt templates: ``string.Template`` files shipped in ``teachgym/agents/prompts``.

A prompt is data, not code, so a researcher changes it with a config key
(``teacher_kwargs.prompt_file``) instead of a fork. ``string.Template`` is
used because a prompt that shows JSON is full of braces, which ``str.format``
would read as fields; ``$name`` placeholders leave them alone (``$$`` is a
literal dollar). A template is checked when the teacher is built: a
placeholder the teacher does not fill is a typo that would otherwise reach the
LLM as a literal ``$acuracy``, so it is an error naming the known variables.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any


class PromptTemplate:
    """A checked template: every ``$name`` in it is one of ``variables``."""

    def __init__(self, text: str, variables: Iterable[str], source: str) -> None:
        self.text = text
        self.source = source
        self.variables = frozenset(variables)
        self._template = string.Template(text)
        if not self._template.is_valid():
            raise ValueError(
                f"prompt template {source} has a '$' that starts no valid placeholder; "
                f"write '$$' for a literal dollar sign"
            )
        unknown = sorted(set(self._template.get_identifiers()) - self.variables)
        if unknown:
            raise ValueError(
                f"prompt template {source} names unknown variable(s) "
                f"{', '.join('$' + v for v in unknown)}; known: "
                f"{', '.join('$' + v for v in sorted(self.variables))}"
            )

    @property
    def used(self) -> frozenset[str]:
        """The variables the template actually shows."""
        return frozenset(self._template.get_identifiers())

    def render(self, values: Mapping[str, Any]) -> str:
        missing = sorted(self.used - set(values))
        if missing:  # a teacher bug, not a user's: every known variable must be filled
            raise KeyError(f"no value for template variable(s) {missing}")
        return self._template.substitute({k: str(v) for k, v in values.items()})


def load_template(
    name: str, prompt_file: str | Path | None, variables: Iterable[str]
) -> PromptTemplate:
    """The packaged template ``name`` (e.g. ``"openended.txt"``), or ``prompt_file`` instead."""
    if prompt_file is None:
        text = resources.files("teachgym.agents").joinpath("prompts", name).read_text("utf-8")
        return PromptTemplate(text, variables, f"teachgym/agents/prompts/{name}")
    path = Path(prompt_file).expanduser()
    try:
        text = path.read_text("utf-8")
    except OSError as err:
        raise ValueError(f"cannot read prompt_file {str(path)!r}: {err.strerror or err}") from None
    return PromptTemplate(text, variables, repr(str(path)))
