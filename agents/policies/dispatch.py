"""Teacher names that mean the same idea on every env: ``llm``, ``uniform``, ``random``.

An action is a weight vector on SkillList, text on OpenEnded and a
TreeAction on SkillTree, so one idea needs one class per env. A
:class:`ByEnv` factory is what the registry holds under the shared name: it
looks at the env it is given and builds the matching class, and for an env
the idea has no class for it raises an error that names the teachers that
do act there (instead of a confusing action error at the first step).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from teachgym import registry
from teachgym.agents.policies.common import EnvKind, env_kind
from teachgym.config import ENV_KINDS

_ENV_IDS: dict[EnvKind, str] = ENV_KINDS  # type: ignore[assignment]


class ByEnv:
    """``factory(env=env, seed=seed, **kwargs)`` -> the class for ``env``'s kind.

    ``classes`` maps an env kind to an import path ``module:Class``, imported
    only when that kind is built (an ``llm`` teacher's module is not loaded
    for a run that uses ``uniform``).
    """

    def __init__(self, name: str, classes: Mapping[EnvKind, str]) -> None:
        self.name = name
        self.classes = dict(classes)

    def resolve(self, env: Any) -> type:
        # Another env (a stand-in, a user's own) gets the SkillList class, as
        # before these names were shared; that class checks what it needs.
        return self._class(env_kind(env) or "skill_list")

    def env_ids(self) -> list[str]:
        """The envs this name acts on."""
        return [_ENV_IDS[k] for k in self.classes]

    def class_for(self, env_id: str) -> type:
        """The class built for the env registered as ``env_id`` (checks before building)."""
        kinds = {v: k for k, v in _ENV_IDS.items()}
        return self._class(kinds.get(env_id, "skill_list"))

    def _class(self, kind: EnvKind) -> type:
        target = self.classes.get(kind)
        if target is None:
            usable = [n for n in registry.names("teacher") if _acts_on(n, kind)]
            raise ValueError(
                f"teacher {self.name!r} acts on {', '.join(_ENV_IDS[k] for k in self.classes)} "
                f"only; for {_ENV_IDS[kind]} use one of {usable}"
            )
        module, _, attr = target.partition(":")
        return getattr(__import__(module, fromlist=[attr]), attr)

    def __call__(self, env: Any, seed: int = 0, **kwargs: Any) -> Any:
        cls = self.resolve(env)
        try:  # the registry cannot check arguments against a class it does not know yet
            inspect.signature(cls).bind(env=env, seed=seed, **kwargs)
        except TypeError as err:
            raise ValueError(f"{cls.__name__}: {err}") from None
        try:
            return cls(env=env, seed=seed, **kwargs)
        except TypeError as err:
            # A class that passes **kwargs on (CurriculumTeacher) binds any name; the
            # base that rejects one is still reporting a config typo, not a bug.
            if "unexpected keyword argument" not in str(err):
                raise
            raise ValueError(str(err)) from err

    def __repr__(self) -> str:
        return f"ByEnv({self.name!r}, {self.classes})"


def _acts_on(name: str, kind: EnvKind) -> bool:
    try:
        factory = registry.resolve("teacher", name)
    except ValueError:
        return False
    return isinstance(factory, ByEnv) and kind in factory.classes


_P = "teachgym.agents.policies"

llm_teacher = ByEnv(
    "llm",
    {
        "skill_list": f"{_P}.llm:LLMSkillListTeacher",
        "open_ended": f"{_P}.llm:LLMOpenEndedTeacher",
        "skill_tree": f"{_P}.llm:LLMSkillTreeTeacher",
    },
)
uniform_teacher = ByEnv(
    "uniform",
    {
        "skill_list": f"{_P}.baselines:UniformTeacher",
        "open_ended": f"{_P}.heuristics:TextUniformTeacher",
        "skill_tree": f"{_P}.heuristics:TreeUniformTeacher",
    },
)
random_teacher = ByEnv(
    "random",
    {
        "skill_list": f"{_P}.baselines:RandomTeacher",
        "open_ended": f"{_P}.heuristics:TextRandomTeacher",
        "skill_tree": f"{_P}.heuristics:TreeRandomTeacher",
    },
)
weakest_teacher = ByEnv("weakest", {"skill_list": f"{_P}.baselines:WeakestTeacher"})
learning_progress_teacher = ByEnv(
    "learning_progress", {"skill_list": f"{_P}.learning_progress:LearningProgressTeacher"}
)
curriculum_teacher = ByEnv("curriculum", {"skill_list": f"{_P}.curriculum:CurriculumTeacher"})
text_focus_teacher = ByEnv("text_focus", {"open_ended": f"{_P}.heuristics:TextFocusTeacher"})
tree_weakest_teacher = ByEnv("tree_weakest", {"skill_tree": f"{_P}.heuristics:TreeWeakestTeacher"})
tscl_window_teacher = ByEnv("tscl_window", {"skill_list": f"{_P}.bandits:TSCLWindowTeacher"})
tscl_sampling_teacher = ByEnv("tscl_sampling", {"skill_list": f"{_P}.bandits:TSCLSamplingTeacher"})
exp3s_teacher = ByEnv("exp3s", {"skill_list": f"{_P}.bandits:EXP3STeacher"})
alp_teacher = ByEnv("alp", {"skill_list": f"{_P}.bandits:ALPTeacher"})
ucb_teacher = ByEnv("ucb", {"skill_list": f"{_P}.bandits:UCBTeacher"})
ppo_teacher = ByEnv("ppo", {"skill_list": f"{_P}.ppo:PPOTeacher"})
