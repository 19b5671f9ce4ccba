"""Procedural arithmetic with skill labels: the embedded default task.

Each leaf skill is a problem family with its own difficulty for a small
transformer: carries and borrows need information to flow across digit
positions, multiplication needs a table plus a carry chain. Every family has
a problem space several times larger than its validation and test sets, so a
student can only score on them by learning the procedure, not by memorising
evaluation items it never sees. Distinct prompts per family (``a+b`` and
``b+a`` count as two): the 2-digit families have 1,620 (``sub/borrow``) to
6,120 (``add/carry``), the 3-digit ones 108,900 to 810,000 (``cmp/3d``), and
``mul/2x1`` only 720. So with the default 128 + 128 evaluation items per skill
about a sixth of a 2-digit space is held out, and the environment's
decontamination filter drops generated examples that hit it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from teachgym.envs.skills import SkillTree
from teachgym.envs.tasks.arithmetic_families import FAMILIES as FAMILIES
from teachgym.envs.tasks.arithmetic_families import Family as Family
from teachgym.envs.tasks.arithmetic_families import Operands as Operands
from teachgym.envs.tasks.arithmetic_families import (
    answer_length,
    family_of,
    operand_digits,
    result_of,
)
from teachgym.envs.tasks.base import Split
from teachgym.options import Options, takes
from teachgym.types import Problem

#: A prompt as a family writes it: operand, operator, operand, ``=``.
_PROMPT = re.compile(r"(\d+)([-+*?])(\d+)=")

DEFAULT_SKILLS = (
    "add/no_carry",
    "add/carry",
    "add/carry_3d",
    "sub/no_borrow",
    "sub/borrow",
    "sub/borrow_3d",
    "cmp/3d",
)


#: A mirror twin's prompt starts with this character (see ``ArithmeticTask(mirror=...)``).
#: It is in the alphabet, and it sits at the far end of the prompt from the answer, so the
#: student has to carry the cue across the whole prompt to tell the twins apart.
MIRROR_MARK = ">"
#: A mirror twin's name: its skill's name plus this.
MIRROR_SUFFIX = "_mirror"
#: Noise skill ``noise/n<i>`` writes prompts ``a{o1}b{o2}c=`` with the i-th operator pair.
NOISE_OPERATORS = tuple(a + b for a in "+-*?" for b in "+-*?")
_NOISE = re.compile(r"(\d)([-+*?])(\d)([-+*?])(\d)=")
#: The length of every noise prompt: that of a 2-digit addition, so length tells nothing.
_NOISE_LENGTH = 6


@dataclass(frozen=True)
class _Skill:
    """What one leaf of the task is: a family, a family's mirror twin, or a noise skill."""

    kind: Literal["family", "mirror", "noise"]
    family: str = ""  # the key of FAMILIES (family and mirror)
    index: int = 0  # the noise skill's number


SkillNames = list[str] | tuple[str, ...]


class ArithmeticOptions(Options):
    """What :class:`ArithmeticTask` (``task: arithmetic``) takes from ``task_kwargs``;
    the class docstring explains each at length."""

    skills: SkillNames = Field(
        default=DEFAULT_SKILLS, min_length=1, description="leaf skills (keys of FAMILIES)"
    )
    val_per_skill: int = Field(default=128, ge=1, description="validation items per skill")
    test_per_skill: int = Field(default=128, ge=1, description="test items per skill")
    split_seed: int = Field(default=1234, ge=0, description="fixes the val and test sets")
    answer_order: Literal["lsd_first", "msd_first"] = Field(
        default="lsd_first", description="digit order of numeric answers"
    )
    pad_operands: bool = Field(
        default=False, description="pad operands with zeros to the longest operand"
    )
    noise_skills: int = Field(
        default=0,
        ge=0,
        le=len(NOISE_OPERATORS),
        description="extra skills whose answers are noise (stress)",
    )
    mirror: SkillNames = Field(
        default=(), description="skills that get a look-alike twin with the other digit order"
    )
    hide_difficulty: bool = Field(
        default=False, description="anonymous skill names, prompts padded to one length"
    )
    shuffle_seed: int = Field(default=0, ge=0, description="skill order under hide_difficulty")


class ArithmeticTask:
    """Skill-labelled arithmetic, scored by exact match.

    Args:
        skills: leaf skills to include (keys of :data:`FAMILIES`).
        val_per_skill, test_per_skill: evaluation items per skill.
        split_seed: fixes the validation and test sets. It is separate from the
            episode seed on purpose: teachers compared over seeds must be
            scored on the same problems.
        answer_order: ``"lsd_first"`` (default) writes numeric answers least
            significant digit first (``457+168=`` -> ``526`` for 625), so the
            carry flows in the order the student generates digits, which a
            small student learns far faster (README, "The default task").
            Comparison answers (``<``, ``>``, ``=``) are unaffected.
        pad_operands: ``False`` (default) writes operands as they are
            (``47+85=``); ``True`` pads every operand with leading zeros to the
            longest operand of the chosen skills (``047+085=`` next to 3-digit
            skills). Padding puts each digit at the same distance from ``=`` in
            every skill, so the student need not first learn where the digits
            of operands of different lengths are. That removes much of the
            loss plateau all teachers share, and with it much of what a
            teacher can do for this student; the unpadded default keeps the
            length interference between 2- and 3-digit skills, where a
            curriculum matters.

    Stress options (the ``profile`` config key sets them, see
    :mod:`teachgym.profiles`; after TeachMyAgent's stress tests). Each adds
    to the task without changing what the default task draws: with all of
    them off, every problem and every sample is the same as without them.

    Args:
        noise_skills: extra skills ``noise/n0`` ... (at most 16) whose answers
            are noise: a prompt ``a{o1}b{o2}c=`` (three one-digit numbers, the
            i-th skill's operator pair, as long as a 2-digit addition) gets a
            uniformly random digit as its answer, drawn afresh each time it is
            sampled (and once, from ``split_seed``, for the evaluation items).
            No student can do better than chance (0.1) on them, so data spent
            on them is wasted.
        mirror: skills that get a look-alike twin ``<skill>_mirror``: the same
            problems with the prompt prefixed by ``>`` and the answer written
            in the other digit order (most significant digit first under the
            default ``lsd_first``): two skills whose prompts differ in one
            character and whose answer rules conflict. (With the tiny student,
            training a twin alone does make its skill's accuracy collapse, but
            so does training any other single skill alone, so the ``forgetting``
            profile uses a forgetting student instead; see
            :mod:`teachgym.profiles`.)
        hide_difficulty: skill names become ``s0``, ``s1``, ... in an order
            shuffled by ``shuffle_seed``, and every prompt is left-padded with
            zeros to the length of the longest (``0047+85=`` next to
            ``457+168=``; a leading zero does not change a number), so neither
            a name, the skill order nor a prompt's length tells a teacher which
            skill is hard. The problems themselves are unchanged (the same
            split, the same sampler; only the names, the order and the padding
            differ). Not with ``pad_operands``.
        shuffle_seed: the order of the skills under ``hide_difficulty``.

    >>> task = ArithmeticTask(skills=["add/carry", "cmp/3d"], val_per_skill=3, test_per_skill=3)
    >>> [p.skill for p in task.problems("val")]
    ['add/carry', 'add/carry', 'add/carry', 'cmp/3d', 'cmp/3d', 'cmp/3d']
    >>> p = task.problems("test")[0]
    >>> task.score(p, p.answer), task.score(p, p.answer + "0")
    (True, False)
    """

    name = "arithmetic"
    alphabet = "0123456789+-*?<>="

    @takes(ArithmeticOptions)
    def __init__(
        self,
        *,
        skills: Sequence[str],
        val_per_skill: int,
        test_per_skill: int,
        split_seed: int,
        answer_order: str,
        pad_operands: bool,
        noise_skills: int,
        mirror: Sequence[str],
        hide_difficulty: bool,
        shuffle_seed: int,
    ) -> None:
        self.answer_order = answer_order
        unknown = [s for s in skills if s not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown arithmetic skills {unknown}; known: {sorted(FAMILIES)}")
        if len(set(skills)) != len(skills):
            raise ValueError(f"skills {list(skills)} repeat a skill")
        self.pad_operands = pad_operands
        self._width = max(operand_digits(skill) for skill in skills) if pad_operands else 0
        #: Every leaf under its own (canonical) name, in the order the splits are drawn.
        self._specs: dict[str, _Skill] = dict(
            [(s, _Skill("family", s)) for s in skills]
            + self._stress_skills(
                skills, noise_skills, mirror, hide_difficulty, shuffle_seed, pad_operands
            )
        )
        #: The longest answer any chosen skill can have (a student's decoding budget).
        self.max_answer_length = max(
            1 if spec.kind == "noise" else answer_length(spec.family)
            for spec in self._specs.values()
        )
        self._pad_to = 0  # hide_difficulty: the length every prompt is padded to
        if hide_difficulty:
            rng0 = np.random.default_rng(0)
            self._pad_to = max(len(self._make(n, 1, rng0)[0][0]) for n in self._specs)
        splits = self._draw_evaluation(val_per_skill, test_per_skill, split_seed)
        order = self._name_skills(hide_difficulty, shuffle_seed)
        self._splits: dict[str, list[Problem]] = {"val": [], "test": []}
        for split, by_name in splits.items():
            for name in order:
                public = self._public[name]
                self._splits[split] += [
                    Problem(id=f"{split}/{public}/{i}", skill=public, prompt=p, answer=a)
                    for i, (p, a) in enumerate(by_name[name])
                ]

    def _draw_evaluation(
        self, val_per_skill: int, test_per_skill: int, split_seed: int
    ) -> dict[str, dict[str, list[tuple[str, str]]]]:
        """``{split: {canonical name: (prompt, answer) pairs}}`` for val and test."""
        rng = np.random.default_rng(split_seed)
        splits: dict[str, dict[str, list[tuple[str, str]]]] = {"val": {}, "test": {}}
        for name in self._specs:
            # Distinct prompts, val and test disjoint, drawn in order from split_seed.
            pool: list[tuple[str, str]] = []
            seen: set[str] = set()
            while len(pool) < val_per_skill + test_per_skill:
                for prompt, answer in self._make(name, val_per_skill + test_per_skill, rng):
                    if prompt not in seen and len(pool) < val_per_skill + test_per_skill:
                        seen.add(prompt)
                        pool.append((prompt, answer))
            splits["val"][name] = pool[:val_per_skill]
            splits["test"][name] = pool[val_per_skill:]
        return splits

    def _name_skills(self, hide_difficulty: bool, shuffle_seed: int) -> list[str]:
        """Name the skills as a teacher sees them (the public names, the leaves, the skill
        tree) and return the canonical names in that order.

        What a teacher sees: the canonical names, or under hide_difficulty anonymous
        names in a shuffled order (the splits are drawn in canonical order, so the
        problems are the same whatever the shuffle).
        """
        order = list(self._specs)
        if hide_difficulty:
            perm = np.random.default_rng(shuffle_seed).permutation(len(order))
            order = [order[int(i)] for i in perm]
            self._public = {name: f"s{i}" for i, name in enumerate(order)}
        else:
            self._public = {name: name for name in order}
        self._canonical = {public: name for name, public in self._public.items()}
        self._leaves = [self._public[name] for name in order]
        self._skills = SkillTree(self._leaves)
        return order

    @staticmethod
    def _stress_skills(
        skills: Sequence[str],
        noise_skills: int,
        mirror: Sequence[str],
        hide_difficulty: bool,
        shuffle_seed: int,
        pad_operands: bool,
    ) -> list[tuple[str, _Skill]]:
        """The mirror twins and noise skills, after checking the stress options against the
        skills (each option on its own is checked by :class:`ArithmeticOptions`)."""
        bad = [m for m in mirror if m not in skills or FAMILIES[m][0] == "?"]
        if bad or len(set(mirror)) != len(mirror):
            raise ValueError(
                f"mirror must name numeric skills of this task without repeats "
                f"(comparisons have no digit order); got {list(mirror)!r} for skills {list(skills)}"
            )
        if hide_difficulty and pad_operands:
            raise ValueError(
                "hide_difficulty pads prompts to one length itself; use it without pad_operands"
            )
        return [(m + MIRROR_SUFFIX, _Skill("mirror", m)) for m in mirror] + [
            (f"noise/n{i}", _Skill("noise", index=i)) for i in range(noise_skills)
        ]

    def _make(self, name: str, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
        """``n`` (prompt, answer) pairs of skill ``name`` (canonical), as this task writes them."""
        spec = self._specs[name]
        if spec.kind == "noise":
            a, b, c = rng.integers(0, 10, size=(3, n)).tolist()
            o1, o2 = NOISE_OPERATORS[spec.index]
            prompts = [f"{x}{o1}{y}{o2}{z}=" for x, y, z in zip(a, b, c, strict=True)]
            answers = [str(d) for d in rng.integers(0, 10, size=n).tolist()]
            out = list(zip(prompts, answers, strict=True))
        else:
            op, family = FAMILIES[spec.family]
            xs, ys = family(rng, n)
            width = self._width
            # A mirror twin writes its answer in the other order.
            lsd = (self.answer_order == "lsd_first") != (spec.kind == "mirror")
            mark = MIRROR_MARK if spec.kind == "mirror" else ""
            out = []
            for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
                answer = result_of(op, x, y)
                prompt = f"{x:0{width}d}{op}{y:0{width}d}=" if width else f"{x}{op}{y}="
                out.append((mark + prompt, answer[::-1] if lsd else answer))
        if self._pad_to:
            out = [(prompt.rjust(self._pad_to, "0"), answer) for prompt, answer in out]
        return out

    @property
    def skills(self) -> SkillTree:
        return self._skills

    @property
    def leaf_skills(self) -> list[str]:
        return list(self._leaves)

    def problems(self, split: Split) -> list[Problem]:
        if split not in self._splits:
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        return list(self._splits[split])

    def score(self, problem: Problem, output: str) -> bool:
        return output.strip() == problem.answer

    def _unpad(self, prompt: str) -> str | None:
        """The prompt without the ``hide_difficulty`` padding; None if not padded as it must be."""
        text = prompt.strip()
        if not self._pad_to:
            return text
        if len(text) != self._pad_to:
            return None
        return text.lstrip("0")  # no operand of a family starts with 0

    def _parse(self, prompt: str) -> tuple[int, str, int, bool] | None:
        """``(x, op, y, mirrored)`` of a prompt written exactly as this task writes
        prompts, else None.

        Exactly: no spaces, ``*`` not ``×``, and operands zero-padded to the
        task's width when ``pad_operands`` is on and without leading zeros
        when it is off; a prompt in another format would teach the student a
        format it is never tested on. ``mirrored``: the prompt carries the
        mirror twins' mark.
        """
        text = self._unpad(prompt)
        if text is None:
            return None
        mirrored = text.startswith(MIRROR_MARK)
        m = _PROMPT.fullmatch(text[len(MIRROR_MARK) :] if mirrored else text)
        if m is None:
            return None
        a, op, b = m.groups()
        for operand in (a, b):
            if self._width:
                if len(operand) != self._width:
                    return None
            elif operand != str(int(operand)):
                return None
        return int(a), op, int(b), mirrored

    def check(self, prompt: str, answer: str) -> bool | None:
        """Is ``answer`` this task's answer to ``prompt``? ``None``: not a prompt it can read.

        Recomputes the result and writes it as the task does (least
        significant digit first under ``answer_order="lsd_first"``, the other
        order for a mirror twin), so an answer in the wrong digit order is
        wrong. A subtraction below zero is not readable (``None``): no family
        makes one, and the task has no written form for a negative answer.
        Nor is a noise skill's prompt: its answer is noise. Used by the
        ``llm`` generator to drop wrong examples before the student trains
        on them.

        >>> task = ArithmeticTask(skills=["add/carry"], val_per_skill=1, test_per_skill=1)
        >>> task.check("457+168=", "526"), task.check("457+168=", "625"), task.check("4+", "8")
        (True, False, None)
        """
        parsed = self._parse(prompt)
        if parsed is None:
            return None
        x, op, y, mirrored = parsed
        if op == "-" and x < y:
            return None
        if mirrored:
            family = family_of(op, x, y)
            if family is None or family + MIRROR_SUFFIX not in self._specs:
                return None
        result = result_of(op, x, y)
        lsd = (self.answer_order == "lsd_first") != mirrored
        return answer.strip() == (result[::-1] if lsd else result)

    def skill_of(self, prompt: str) -> str | None:
        """The skill whose sampler can draw ``prompt``.

        Without stress options, the family (a key of :data:`FAMILIES`), which
        may be one this task instance did not choose. A mirror twin's or a
        noise skill's prompt gives that skill's name, and under
        ``hide_difficulty`` the anonymous name; then a prompt of a skill this
        task does not have gives ``None``, as does one not in this task's
        format.

        >>> task = ArithmeticTask(skills=["add/carry"], val_per_skill=1, test_per_skill=1)
        >>> task.skill_of("47+85="), task.skill_of("41+35="), task.skill_of("3-5=")
        ('add/carry', 'add/no_carry', None)
        """
        parsed = self._parse(prompt)
        if parsed is None:
            return self._noise_of(prompt)
        x, op, y, mirrored = parsed
        family = family_of(op, x, y)
        if family is None:
            return None
        if not mirrored and not self._pad_to:
            return family
        return self._public.get(family + MIRROR_SUFFIX if mirrored else family)

    def _noise_of(self, prompt: str) -> str | None:
        text = prompt.strip()
        if self._pad_to:
            head, text = text[:-_NOISE_LENGTH], text[-_NOISE_LENGTH:]
            if len(head) + len(text) != self._pad_to or head.strip("0"):
                return None
        m = _NOISE.fullmatch(text)
        if m is None:
            return None
        pair = m.group(2) + m.group(4)
        return self._public.get(f"noise/n{NOISE_OPERATORS.index(pair)}")

    def format_description(self, skill: str) -> str:
        """How this task writes ``skill``'s prompts and answers, in words (no evaluation item)."""
        spec = self._specs.get(self._canonical.get(skill, skill))
        op = FAMILIES[spec.family][0] if spec is not None and spec.kind != "noise" else None
        lines = [
            "A prompt is two whole numbers joined by one operator and ending with '=', "
            "with no spaces: '+' adds, '-' subtracts (never below zero), '*' multiplies, "
            "'?' compares.",
        ]
        if spec is not None and spec.kind == "noise":
            o1, o2 = NOISE_OPERATORS[spec.index]
            lines = [
                f"A prompt is three one-digit numbers joined by '{o1}' and '{o2}' and ending "
                f"with '=', with no spaces (such as 4{o1}8{o2}1=); its answer is one digit."
            ]
        elif self._width:
            lines.append(
                f"Every operand is written with exactly {self._width} digits, "
                "padded with leading zeros."
            )
        else:
            lines.append("Operands are written without leading zeros.")
        mirrored = spec is not None and spec.kind == "mirror"
        if mirrored:
            lines.append(f"The prompt starts with '{MIRROR_MARK}'.")
        if spec is None or spec.kind != "noise":
            if op != "?":
                if (self.answer_order == "lsd_first") != mirrored:
                    lines.append(
                        "A numeric answer is written with its digits REVERSED, least significant "
                        "digit first: the answer to 457+168= (625) is written 526, and to 50+50= "
                        "(100) is written 001."
                    )
                else:
                    lines.append(
                        "A numeric answer is written as usual, most significant digit first."
                    )
            if op in (None, "?"):
                lines.append("A comparison's answer is one of '<', '>' or '='.")
        if self._pad_to:
            lines.append(
                f"Every prompt is then padded on the left with zeros to exactly {self._pad_to} "
                "characters."
            )
        return " ".join(lines)

    def sample(self, skill: str, n: int, rng: np.random.Generator) -> list[Problem]:
        """``n`` fresh training problems of ``skill`` (may repeat evaluation items;
        the environment's decontamination filter drops those)."""
        name = self._canonical.get(skill)
        if name is None:
            raise ValueError(f"skill {skill!r} is not a leaf of this task: {self._leaves}")
        if n <= 0:
            return []
        # model_construct: the fields are made right here, so validating them
        # again for thousands of problems per step would be pure cost.
        return [
            Problem.model_construct(
                id=f"train/{skill}/{i}", skill=skill, prompt=prompt, answer=answer, metadata={}
            )
            for i, (prompt, answer) in enumerate(self._make(name, n, rng))
        ]
