"""Prompt templates of the LLM teachers: one ``string.Template`` file each.

The packaged files are ``teachgym/agents/prompts/{openended,skilllist,skilltree}.txt``;
``teacher_kwargs.prompt_file`` replaces one. Files are read and checked by the one
prompt-file loader, :func:`teachgym.agents.llm.prompt_file.load_prompt_file`.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from teachgym.agents.llm.prompt_file import check_template, load_prompt_file


class PromptTemplate:
    """A checked template: every ``$name`` in it is one of ``variables``."""

    def __init__(self, text: str, variables: Iterable[str], source: str) -> None:
        self.text = text
        self.source = source
        self.variables = frozenset(variables)
        self._template = string.Template(text)
        check_template(self._template, self.variables, f"prompt template {source}")

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
    loaded = load_prompt_file(prompt_file, placeholders=variables, packaged=name)
    return PromptTemplate(loaded.text, variables, loaded.source)
