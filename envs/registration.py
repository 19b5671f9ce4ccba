"""Gymnasium registration of the three environments (ids from :data:`teachgym.config.ENV_KINDS`)."""

from __future__ import annotations

import gymnasium as gym

from teachgym.config import ENV_KINDS

#: The class of each env id (import paths: ``import teachgym`` imports no env module).
ENV_CLASSES: dict[str, str] = {
    ENV_KINDS["skill_list"]: "teachgym.envs.skill_list:SkillListEnv",
    ENV_KINDS["open_ended"]: "teachgym.envs.open_ended:OpenEndedEnv",
    ENV_KINDS["skill_tree"]: "teachgym.envs.skill_tree:SkillTreeEnv",
}
#: What ``gymnasium.make`` calls: the assembly, which builds the parts and then the env.
ENV_ENTRY_POINTS: dict[str, str] = {
    env_id: f"teachgym.assembly:make_{kind}" for kind, env_id in ENV_KINDS.items()
}

#: What ``gymnasium.make_vec`` calls (``vectorization_mode="vector_entry_point"``, the
#: default when an id has one): the envs whose sub-envs train as one population.
VECTOR_ENTRY_POINTS: dict[str, str] = {
    ENV_KINDS["skill_list"]: "teachgym.assembly:make_skill_list_vector",
}


def register_envs() -> None:
    """Register (idempotently) so ``gymnasium.make`` finds the ids.

    No ``max_episode_steps``: the env truncates itself at the config's
    ``max_steps``, so ``gymnasium.make(id, max_steps=...)`` is the one knob.
    ``teachgym/SkillList-v0`` also has a vector entry point (see
    :mod:`teachgym.envs.vector`).
    """
    for env_id, entry_point in ENV_ENTRY_POINTS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point=entry_point,
                vector_entry_point=VECTOR_ENTRY_POINTS.get(env_id),
                disable_env_checker=True,
            )
