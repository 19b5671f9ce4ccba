"""The one prompt-file loader: read a file, split its sections, check its placeholders.

A prompt is data, not code, so a researcher replaces it with a config key
(``prompt_file``) instead of a fork. Every prompt of teachgym is read here, the
same way: the LLM teachers' one-template files (``agents/prompts/openended.txt``
...), the ``llm`` generator's sectioned file (``[system]``, ``[skill]``,
``[text]``) and skill discovery's (``[system]``, ``[name]``, ``[group]``,
``[label]``). Templates are ``string.Template``: a prompt that shows JSON is full
of braces, which ``str.format`` would read as fields, while ``$name`` leaves them
alone (``$$`` is a literal dollar). Everything is checked when the file is
loaded, before any request is paid for: the file is readable, every section is
there, every ``$`` starts a valid placeholder and every placeholder is one its
user fills (a typo would otherwise reach the LLM as a literal ``$acuracy``).
Each failure is a ``ValueError`` naming the file, the section and what is known.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["PromptFile", "check_template", "load_prompt_file", "read_sections"]

#: Where the packaged prompts live (package data of ``teachgym.agents``).
PACKAGED_DIR = "teachgym/agents/prompts"


@dataclass(frozen=True)
class PromptFile:
    """A loaded, checked prompt file.

    ``templates`` maps each section to its template; a file read without
    sections has one template, under ``""``. ``text`` is the file's whole text
    (a cache key may include it); ``source`` is how error messages name it.
    """

    source: str
    text: str
    templates: Mapping[str, string.Template]


def check_template(template: string.Template, placeholders: Iterable[str], where: str) -> None:
    """Raise ``ValueError`` (prefixed with ``where``) unless every ``$`` of ``template``
    starts a valid placeholder and every placeholder is one of ``placeholders``."""
    if not template.is_valid():
        raise ValueError(
            f"{where}: a '$' starts no valid placeholder; write '$$' for a literal dollar sign"
        )
    known = sorted(set(placeholders))
    unknown = sorted(set(template.get_identifiers()) - set(known))
    if unknown:
        raise ValueError(
            f"{where}: unknown placeholder(s) {', '.join('$' + v for v in unknown)}; "
            f"known: {', '.join('$' + v for v in known)}"
        )


def load_prompt_file(
    path: str | Path | None,
    *,
    placeholders: Iterable[str],
    sections: Sequence[str] = (),
    packaged: str | None = None,
) -> PromptFile:
    """Read and check the prompt file ``path``, or the packaged ``packaged`` when it is None.

    With ``sections``, the file must have every ``[name]`` section (see
    :func:`read_sections`); without, the whole text is one template.
    """
    if path is None:
        if packaged is None:
            raise ValueError("no prompt file given and no packaged default")
        text = resources.files("teachgym.agents").joinpath("prompts", packaged).read_text("utf-8")
        source = Path(PACKAGED_DIR) / packaged
    else:
        source = Path(path).expanduser()
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as err:
            raise ValueError(
                f"cannot read prompt_file {str(source)!r}: {err.strerror or err}"
            ) from None
    bodies = read_sections(text, sections, source) if sections else {"": text}
    templates = {name: string.Template(body) for name, body in bodies.items()}
    for name, template in templates.items():
        where = f"prompt_file {str(source)!r}" + (f" [{name}]" if name else "")
        check_template(template, placeholders, where)
    return PromptFile(source=str(source), text=text, templates=templates)


def read_sections(text: str, names: Sequence[str], source: Path) -> dict[str, str]:
    """The body of every ``[name]`` section of ``text``, stripped.

    Lines starting with ``#`` before the first section are comments; a
    bracketed line that is not one of ``names`` is ordinary text. A missing
    section is a ``ValueError`` naming ``source`` and every section needed, so
    a broken custom prompt fails before any request is paid for.
    """
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if current is None and stripped.startswith("#"):
            continue
        if stripped.startswith("[") and stripped.endswith("]") and stripped[1:-1] in names:
            current = sections.setdefault(stripped[1:-1], [])
        elif current is not None:
            current.append(line)
    missing = [s for s in names if s not in sections]
    if missing:
        raise ValueError(
            f"prompt_file {str(source)!r} has no [{missing[0]}] section; "
            f"needed: {', '.join(f'[{s}]' for s in names)}"
        )
    return {name: "\n".join(sections[name]).strip() for name in names}
