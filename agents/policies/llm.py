"""LLM teachers: DataEnvGym's three teacher agents, one per env.

Each teacher renders a prompt template from what its env shows (accuracy,
skills, the student's wrong answers), asks an LLM for a structured reply
through :class:`~teachgym.agents.llm.LLMClient`, and turns the reply into a
valid action:

- :class:`LLMOpenEndedTeacher`: an error-conditioned text plan (``skill: count`` lines).
- :class:`LLMSkillListTeacher`: a weight per skill -> the float32 action vector.
- :class:`LLMSkillTreeTeacher`: explore (name subskills) or exploit (allocate leaves)
  -> a :class:`~teachgym.types.TreeAction`.

An LLM is an unreliable component, so a teacher never lets it end an
episode: a failed request (after the client's retries) or a reply that
cannot be made into an action becomes a documented default action, and is
counted. ``teacher.last_stats`` holds the counts of the latest ``act``,
``teacher.stats`` the totals (both JSON-safe; see :class:`LLMCaller`).

All three take the same ``teacher_kwargs``: ``llm`` (a client spec mapping or
an ``LLMClient``, required), ``prompt_file`` (replaces the packaged
template), ``temperature``, ``max_tokens`` and ``max_errors_shown``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from teachgym.agents.llm import LLMClient
from teachgym.agents.policies.base import SeededTeacher, SkillListTeacher, to_action
from teachgym.agents.policies.common import format_errors, name_lookup, split
from teachgym.agents.policies.llm_caller import SYSTEM_PROMPT as SYSTEM_PROMPT
from teachgym.agents.policies.llm_caller import LLMCaller as LLMCaller
from teachgym.agents.policies.llm_caller import LLMTeacherMixin, LLMTeacherOptions
from teachgym.options import takes
from teachgym.text_formats import (
    PLAN_MAX_CHARS,
    TreeNode,
    clean_text,
    format_plan,
    parse_open_ended,
    parse_tree,
)
from teachgym.types import TreeAction


# -- reply models (every string and list bounded: the client refuses unbounded schemas) --
class PlanReply(BaseModel):
    """OpenEnded: the LLM's reading of the errors, and its plan."""

    analysis: str = Field(max_length=2000)
    plan: str = Field(max_length=4000)


#: A SkillList reply gives every skill an integer weight from ``min_weight`` (0 by
#: default) to MAX_WEIGHT. 0 lets a teacher leave a skill out; a reply of all zeros is
#: the action the env reads as an even split (the SkillList action contract), so every
#: reply the schema admits is an action. ``min_weight=1`` rules that reply out (every
#: skill then gets at least a tenth of the most-weighted one's share).
MAX_WEIGHT = 10


def skill_weights_model(
    skills: Sequence[str], max_analysis_chars: int, min_weight: int = 0
) -> type[BaseModel]:
    """The SkillList reply model for ``skills``: a bounded analysis, then one weight per skill.

    ``{"analysis": str (at most max_analysis_chars),
    "weights": {skill: min_weight..MAX_WEIGHT, ...}}``
    where ``weights`` has exactly the skill names as keys, all required, in skill order,
    and each weight is an integer from a closed set (an ``enum`` in the JSON schema).
    So the schema admits only valid actions, and a grammar-constrained server (vLLM's
    structured outputs, strict OpenAI structured outputs) can only write one: no name to
    misspell, no skill to leave out or repeat, no number that runs on digit after digit,
    no string or list without an end. ``max_analysis_chars=0`` leaves the analysis out.
    The ratios of the weights are the action; all zeros is an even split, as the env
    reads an all-zero SkillList action.
    """
    weight: Any = Literal[tuple(range(min_weight, MAX_WEIGHT + 1))]
    fields: dict[str, Any] = {
        f"w{i}": (weight, Field(alias=skill, title=skill)) for i, skill in enumerate(skills)
    }
    weights = create_model(
        "SkillWeights", __config__=ConfigDict(extra="forbid", frozen=True), **fields
    )
    reply: dict[str, Any] = {}
    if max_analysis_chars > 0:
        reply["analysis"] = (str, Field(max_length=max_analysis_chars))
    reply["weights"] = (weights, ...)
    return create_model(
        "SkillListReply", __config__=ConfigDict(extra="forbid", frozen=True), **reply
    )


class NamedCount(BaseModel):
    name: str = Field(max_length=200)
    count: int


class TreeReply(BaseModel):
    """SkillTree: explore (``new_subskills`` under ``skill``) or exploit (``allocation``)."""

    analysis: str = Field(max_length=2000)
    kind: Literal["explore", "exploit"]
    skill: str = Field(max_length=200)
    new_subskills: list[NamedCount] = Field(default_factory=list, max_length=8)
    allocation: list[NamedCount] = Field(default_factory=list, max_length=256)


class LLMSkillListOptions(LLMTeacherOptions):
    """Options of :class:`LLMSkillListTeacher` (``llm`` on SkillList)."""

    max_analysis_chars: int = Field(
        default=300, ge=0, description="length of the reply's analysis; 0: no analysis"
    )
    min_weight: int = Field(
        default=0, ge=0, le=MAX_WEIGHT - 1, description="the least weight a skill may get"
    )


class LLMSkillTreeOptions(LLMTeacherOptions):
    """Options of :class:`LLMSkillTreeTeacher` (``llm`` on SkillTree)."""

    max_new_subskills: int = Field(
        default=4, ge=1, le=8, description="subskills one explore may add"
    )


def _bullets(items: Sequence[str], empty: str = "(none)") -> str:
    return "\n".join(f"- {item}" for item in items) if items else empty


# -- OpenEnded ---------------------------------------------------------------
class LLMOpenEndedTeacher(LLMTeacherMixin, SeededTeacher):
    """Reads the OpenEnded observation (accuracy, skill names, errors) and writes a text plan.

    The packaged prompt (``prompts/openended.txt``) asks for ``skill: count``
    lines, the format the procedural generator reads. The plan is cleaned to
    fit the action space (line breaks normalised, control characters dropped,
    cut at the space's length limit at a line break). Default action on a
    failed request or an empty plan: the previous plan, or on the first step
    an even ``skill: count`` plan. A plan that names none of the listed skills
    is still sent (an LLM generator may read prose) but counted as
    ``ignored["no_skill_named"]``.

    Template variables: ``$observation`` (the whole text), ``$step``,
    ``$accuracy``, ``$budget_left``, ``$budget``, ``$step_size``, ``$skills``,
    ``$errors`` (at most ``max_errors_shown`` lines), ``$previous_plan``.
    """

    template_name = "openended.txt"
    variables = (
        "observation",
        "step",
        "accuracy",
        "budget_left",
        "budget",
        "step_size",
        "skills",
        "errors",
        "previous_plan",
    )
    reply_model = PlanReply

    @takes(LLMTeacherOptions)
    def __init__(
        self,
        env: Any,
        seed: int = 0,
        *,
        llm: LLMClient | Mapping[str, Any] | None,
        prompt_file: str | Path | None,
        temperature: float,
        max_tokens: int,
        max_errors_shown: int,
    ) -> None:
        SeededTeacher.__init__(self, env, seed)
        self._setup_llm(self.seed, llm, prompt_file, temperature, max_tokens, max_errors_shown)
        space = getattr(getattr(env, "unwrapped", env), "action_space", None)
        self.max_chars = int(getattr(space, "max_length", PLAN_MAX_CHARS))
        self.previous_plan: str | None = None

    def act(self, observation: Any, info: Mapping[str, Any]) -> str:
        obs = parse_open_ended(observation)
        cap = self.cap(obs.budget_left)
        reply = self.caller.ask(
            {
                "observation": observation,
                "step": obs.step,
                "accuracy": f"{obs.accuracy:.3f}",
                "budget_left": obs.budget_left,
                "budget": obs.budget,
                "step_size": cap,
                "skills": _bullets(obs.skills),
                "errors": _bullets(obs.errors[: self.max_errors_shown]),
                "previous_plan": self.previous_plan or "(none yet: this is the first step)",
            }
        )
        plan = None
        if reply is not None:
            plan = self.clean(reply.plan)
            if plan is None:
                self.caller.fall_back("empty_plan")
            elif not any(name in plan.lower() for name in name_lookup(obs.skills)):
                self.caller.ignore({"no_skill_named": 1})
        if plan is None:
            even = split(obs.skills, np.ones(len(obs.skills)), cap)
            plan = self.previous_plan or format_plan(even)
        self.previous_plan = plan
        return plan

    def clean(self, text: str) -> str | None:
        """``text`` made a member of the action space, or None if nothing is left."""
        text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
        text = clean_text(text, replacement="").strip()
        if len(text) > self.max_chars:
            cut = text[: self.max_chars]
            text = cut[: cut.rfind("\n")] if "\n" in cut else cut
        return text.strip() or None

    def _extra_state(self) -> dict[str, Any]:
        return {"llm": self.caller.state_dict(), "previous_plan": self.previous_plan}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.caller.load_state_dict(state["llm"])
        self.previous_plan = state.get("previous_plan")


# -- SkillList ---------------------------------------------------------------
class LLMSkillListTeacher(LLMTeacherMixin, SkillListTeacher):
    """Reads per-skill accuracy and sampled errors, and asks for a weight per skill.

    The reply schema is built for the env's skills (:func:`skill_weights_model`):
    an object with exactly the skill names as keys, each an integer weight from
    ``min_weight`` to :data:`MAX_WEIGHT`, after an analysis of at most
    ``max_analysis_chars`` characters. A grammar-constrained server can therefore
    only return a valid action, and one that is not constrained has its reply
    validated against the same schema (a reply that does not fit is ``fallback:
    llm_schema``). A reply of all zeros is the env's even split (counted as
    ``ignored["all_zero"]``, since the LLM expressed no preference). Default
    action on a failed request: uniform (all ones).

    Template variables: ``$skill_table`` (skill, accuracy, examples so far),
    ``$skills``, ``$accuracy`` (mean), ``$errors`` (from ``info["errors"]``,
    at most ``max_errors_shown``), ``$step``, ``$budget_left``, ``$step_size``,
    ``$reply_format`` (the reply's JSON shape with the skill names as keys),
    ``$min_weight``, ``$max_weight`` and ``$max_analysis_chars``.
    """

    template_name = "skilllist.txt"
    variables = (
        "skill_table",
        "skills",
        "accuracy",
        "errors",
        "step",
        "budget_left",
        "step_size",
        "reply_format",
        "min_weight",
        "max_weight",
        "max_analysis_chars",
    )

    @takes(LLMSkillListOptions)
    def __init__(
        self,
        env: Any,
        seed: int = 0,
        *,
        llm: LLMClient | Mapping[str, Any] | None,
        prompt_file: str | Path | None,
        temperature: float,
        max_tokens: int,
        max_errors_shown: int,
        max_analysis_chars: int,
        min_weight: int,
    ) -> None:
        SkillListTeacher.__init__(self, env, seed)
        self.max_analysis_chars, self.min_weight = max_analysis_chars, min_weight
        self.reply_model = skill_weights_model(
            self.skills, self.max_analysis_chars, self.min_weight
        )
        self._setup_llm(self.seed, llm, prompt_file, temperature, max_tokens, max_errors_shown)

    def reply_format(self) -> str:
        """The reply's JSON shape as the prompt shows it, keys in schema order."""
        weights = ", ".join(f'"{skill}": <{self.min_weight}-{MAX_WEIGHT}>' for skill in self.skills)
        analysis = (
            f'"analysis": "<at most {self.max_analysis_chars} characters>", '
            if self.max_analysis_chars
            else ""
        )
        return "{" + analysis + '"weights": {' + weights + "}}"

    def act(self, observation: Any, info: Mapping[str, Any]) -> np.ndarray:
        acc = self._accuracy(observation)
        used = np.asarray(observation.get("examples_used", np.zeros(self.num_skills))).reshape(-1)
        budget_left = int(np.asarray(observation.get("budget_left", [0])).reshape(-1)[0])
        table = [
            f"{skill}: accuracy {a:.3f}, examples so far {int(n)}"
            for skill, a, n in zip(self.skills, acc, used, strict=True)
        ]
        reply = self.caller.ask(
            {
                "skill_table": "\n".join(table),
                "skills": _bullets(self.skills),
                "accuracy": f"{float(np.nanmean(acc)) if acc.size else 0.0:.3f}",
                "errors": _bullets(format_errors(info.get("errors", []), self.max_errors_shown)),
                "step": info.get("step", self.caller.acts),
                "budget_left": budget_left,
                "step_size": min(x for x in (self.step_size, budget_left) if x is not None),
                "reply_format": self.reply_format(),
                "min_weight": self.min_weight,
                "max_weight": MAX_WEIGHT,
                "max_analysis_chars": self.max_analysis_chars,
            }
        )
        if reply is None:
            return np.ones(self.num_skills, dtype=np.float32)
        weights = self.read_weights(reply)
        if weights.sum() <= 0:
            self.caller.ignore({"all_zero": 1})
        return to_action(weights)  # all zeros -> all ones: the env's even split

    def read_weights(self, reply: BaseModel) -> np.ndarray:
        """The reply's weights as a vector in skill order (the schema has one per skill)."""
        weights = reply.weights  # type: ignore[attr-defined]
        return np.array([float(getattr(weights, f"w{i}")) for i in range(self.num_skills)])

    def _extra_state(self) -> dict[str, Any]:
        return {"llm": self.caller.state_dict()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.caller.load_state_dict(state["llm"])


# -- SkillTree ---------------------------------------------------------------
def slug(name: str, limit: int = 48) -> str:
    """An LLM's subskill name as a valid path segment (ASCII letters, digits, ``_.-``).

    >>> slug("Three carries (é)")
    'Three_carries_e'
    """
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = re.sub(r"\s+", "_", text.strip())
    text = re.sub(r"[^A-Za-z0-9_.-]", "", text)
    return text[:limit].strip("._-")


def common_node(paths: Sequence[str]) -> str | None:
    """The deepest node above (or equal to) every path, or None across roots."""
    parts = [p.split("/") for p in paths]
    shared: list[str] = []
    for segments in zip(*parts, strict=False):  # up to the shortest path
        if len(set(segments)) != 1:
            break
        shared.append(segments[0])
    return "/".join(shared) or None


#: An action, or None and the reason the reply could not be used.
_Read = tuple[TreeAction | None, str]


class LLMSkillTreeTeacher(LLMTeacherMixin, SeededTeacher):
    """Reads the skill tree and errors; asks to explore (add subskills) or exploit (allocate).

    Explore: ``skill`` must be a node (path, or a unique leaf name); each new
    name is slugged to a path segment (:func:`slug`); names that are empty or
    exist already are dropped (``ignored["bad_name"]``), at most
    ``max_new_subskills`` kept. If no count is positive, the new subskills
    share the node's standing allocation (or an even leaf's share).

    Exploit: allocation names are leaf paths, paths relative to ``skill``, or
    unique leaf names; others are dropped (``ignored["unknown_leaf"]``), as
    are negative counts (``ignored["bad_count"]``). The action's node is
    ``skill`` when it covers every named leaf, else their deepest common node;
    leaves under different roots have none (an exploit changes one subtree),
    so only the root with the largest requested total is kept
    (``ignored["other_root"]`` counts the rest).

    Default action on a failed request or an unusable reply (``fallback:
    unknown_node``, ``no_valid_subskills``, ``no_valid_allocation``): an
    exploit with no counts, which keeps the standing allocation.

    Template variables: ``$tree`` (the observation's tree text), ``$leaves``,
    ``$accuracy``, ``$errors``, ``$step``, ``$budget_left``, ``$step_size``,
    ``$max_new_subskills``.
    """

    template_name = "skilltree.txt"
    variables = (
        "tree",
        "leaves",
        "accuracy",
        "errors",
        "step",
        "budget_left",
        "step_size",
        "max_new_subskills",
    )
    reply_model = TreeReply

    @takes(LLMSkillTreeOptions)
    def __init__(
        self,
        env: Any,
        seed: int = 0,
        *,
        llm: LLMClient | Mapping[str, Any] | None,
        prompt_file: str | Path | None,
        temperature: float,
        max_tokens: int,
        max_errors_shown: int,
        max_new_subskills: int,
    ) -> None:
        SeededTeacher.__init__(self, env, seed)
        self._setup_llm(self.seed, llm, prompt_file, temperature, max_tokens, max_errors_shown)
        self.max_new_subskills = max_new_subskills

    def act(self, observation: Any, info: Mapping[str, Any]) -> TreeAction:
        nodes = parse_tree(observation)
        leaves = [n for n in nodes if n.is_leaf]
        budget_left = int(np.asarray(observation.get("budget_left", [0])).reshape(-1)[0])
        reply = self.caller.ask(
            {
                "tree": observation["tree"],
                "leaves": _bullets([n.skill for n in leaves]),
                "accuracy": f"{float(info.get('accuracy', float('nan'))):.3f}",
                "errors": _bullets(format_errors(info.get("errors", []), self.max_errors_shown)),
                "step": info.get("step", self.caller.acts),
                "budget_left": budget_left,
                "step_size": self.cap(budget_left),
                "max_new_subskills": self.max_new_subskills,
            }
        )
        action = None
        if reply is not None:
            reader = self.read_explore if reply.kind == "explore" else self.read_exploit
            action, problem = reader(reply, nodes)
            if action is None:
                self.caller.fall_back(problem)
        return action or TreeAction(kind="exploit", skill=nodes[0].root)

    def read_explore(self, reply: TreeReply, nodes: Sequence[TreeNode]) -> _Read:
        by_path = {n.skill: n for n in nodes}
        skill = self._node(reply.skill, by_path)
        if skill is None:
            return None, "unknown_node"
        names: dict[str, int] = {}
        taken = {p.lower() for p in by_path}  # names differing only in case would confuse
        ignored: Counter[str] = Counter()
        for item in reply.new_subskills:
            name = slug(item.name)
            if not name or f"{skill}/{name}".lower() in taken:
                ignored["bad_name"] += 1
            elif len(names) >= self.max_new_subskills:
                ignored["too_many_subskills"] += 1
            else:
                if item.count < 0:
                    ignored["bad_count"] += 1
                names[name] = max(0, item.count)
                taken.add(f"{skill}/{name}".lower())
        self.caller.ignore(ignored)
        if not names:
            return None, "no_valid_subskills"
        if not any(names.values()):
            node = by_path[skill]
            leaves = [n for n in nodes if n.is_leaf]
            share = node.allocation if node.is_leaf else self.cap(None) // max(1, len(leaves))
            names = split(list(names), np.ones(len(names)), max(int(share or 0), len(names)))
        action = TreeAction(
            kind="explore", skill=skill, new_subskills=list(names), allocation=names
        )
        return action, ""

    def read_exploit(self, reply: TreeReply, nodes: Sequence[TreeNode]) -> _Read:
        by_path = {n.skill: n for n in nodes}
        base = self._node(reply.skill, by_path)
        leaves = [n.skill for n in nodes if n.is_leaf]
        lookup = name_lookup(leaves)
        counts: Counter[str] = Counter()
        ignored: Counter[str] = Counter()
        for item in reply.allocation:
            key = item.name.strip().lower()
            leaf = lookup.get(f"{base.lower()}/{key}") if base else None
            leaf = leaf or lookup.get(key)
            if leaf is None:
                ignored["unknown_leaf"] += 1
            elif item.count < 0:
                ignored["bad_count"] += 1
            else:
                counts[leaf] += item.count
        if not counts:
            self.caller.ignore(ignored)
            return None, "no_valid_allocation"
        if base is None or not all(p == base or p.startswith(base + "/") for p in counts):
            base = common_node(list(counts))
            if base is None:  # across roots: keep the root that asked for most
                totals: Counter[str] = Counter()
                for path, n in counts.items():
                    totals[path.split("/", 1)[0]] += n
                base = max(totals, key=lambda r: totals[r])
                ignored["other_root"] += sum(1 for p in counts if p.split("/", 1)[0] != base)
                counts = Counter({p: n for p, n in counts.items() if p.split("/", 1)[0] == base})
        self.caller.ignore(ignored)
        return TreeAction(kind="exploit", skill=base, allocation=dict(counts)), ""

    @staticmethod
    def _node(name: str, by_path: Mapping[str, TreeNode]) -> str | None:
        """A node named by its path (any case) or by a unique last segment."""
        return name_lookup(list(by_path)).get(name.strip().strip("/").lower())

    def _extra_state(self) -> dict[str, Any]:
        return {"llm": self.caller.state_dict()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.caller.load_state_dict(state["llm"])
