"""Gymnasium registration of the three environments."""

from __future__ import annotations

import gymnasium as gym

ENV_ENTRY_POINTS = {
    "teachgym/SkillList-v0": "teachgym.envs.skill_list:SkillListEnv",
    "teachgym/OpenEnded-v0": "teachgym.envs.open_ended:OpenEndedEnv",
    "teachgym/SkillTree-v0": "teachgym.envs.skill_tree:SkillTreeEnv",
}


def register_envs() -> None:
    """Register (idempotently) so ``gymnasium.make`` finds the ids.

    No ``max_episode_steps``: the env truncates itself at the config's
    ``max_steps``, so ``gymnasium.make(id, max_steps=...)`` is the one knob.
    """
    for env_id, entry_point in ENV_ENTRY_POINTS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, disable_env_checker=True)
