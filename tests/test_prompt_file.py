"""The one prompt-file loader: teachers, the llm generator and skill discovery check alike."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from teachgym.agents.generators.llm import DEFAULT_PROMPT_FILE, load_prompts
from teachgym.agents.llm.prompt_file import load_prompt_file
from teachgym.agents.policies.templates import load_template
from teachgym.agents.skill_discovery import load_discovery_prompts

#: Each prompt user: a loader of a file path, and a well-formed file body for it.
USERS: dict[str, tuple[Callable[[Path], Any], str]] = {
    "teacher": (lambda p: load_template("openended.txt", p, ["accuracy", "skills"]), "$accuracy"),
    "generator": (load_prompts, "[system]\nhi\n[skill]\n$n of $skill\n[text]\n$plan\n"),
    "discovery": (
        load_discovery_prompts,
        "[system]\ns\n[name]\n$problems\n[group]\n$skills\n[label]\n$categories\n",
    ),
}


@pytest.mark.parametrize("user", sorted(USERS))
def test_every_prompt_user_gets_the_same_checks(user: str, tmp_path: Path) -> None:
    load, good = USERS[user]
    path = tmp_path / "p.txt"
    path.write_text(good, encoding="utf-8")
    load(path)  # a well-formed file loads
    with pytest.raises(ValueError, match=r"cannot read prompt_file '.*absent\.txt'"):
        load(tmp_path / "absent.txt")
    typo = good.replace("$", "$x_", 1)
    path.write_text(typo, encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) \$x_\w+; known: \$"):
        load(path)
    path.write_text(good + "\ncosts $5\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"a '\$' starts no valid placeholder; write '\$\$'"):
        load(path)


def test_sections_and_packaged_prompts() -> None:
    loaded = load_prompt_file(
        DEFAULT_PROMPT_FILE,
        placeholders=["n", "skill", "format", "examples", "errors", "plan", "skills"],
        sections=["system", "skill", "text"],
    )
    assert set(loaded.templates) == {"system", "skill", "text"}
    assert loaded.text == DEFAULT_PROMPT_FILE.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match=r"has no \[extra\] section; needed: .*\[extra\]"):
        load_prompt_file(DEFAULT_PROMPT_FILE, placeholders=[], sections=["system", "extra"])
    with pytest.raises(ValueError, match=r"prompt_file 'teachgym/agents/prompts/openended\.txt'"):
        load_prompt_file(None, placeholders=[], packaged="openended.txt")
