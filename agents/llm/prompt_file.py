"""Prompt files with sections: ``[name]`` lines split one file into several templates.

The ``llm`` generator (``[system]``, ``[skill]``, ``[text]``) and skill discovery
(``[system]``, ``[name]``, ``[group]``, ``[label]``) keep each request's messages in one
file a researcher can replace; each checks its own placeholders, and both read the
file's layout here, the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["read_sections"]


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
