"""Environments, tasks and skills. ``import teachgym`` registers the env ids."""

from teachgym.envs.base import TeacherEnv
from teachgym.envs.open_ended import OpenEndedEnv
from teachgym.envs.registration import ENV_ENTRY_POINTS, register_envs
from teachgym.envs.skill_list import SkillListEnv
from teachgym.envs.skill_tree import SkillTreeEnv, TreeActionSpace
from teachgym.envs.skills import SkillTree
from teachgym.envs.tasks.arithmetic import ArithmeticTask
from teachgym.envs.tasks.base import ProceduralTask, Task
from teachgym.envs.wrappers import FlatSkillList

__all__ = [
    "ENV_ENTRY_POINTS",
    "ArithmeticTask",
    "FlatSkillList",
    "OpenEndedEnv",
    "ProceduralTask",
    "SkillListEnv",
    "SkillTree",
    "SkillTreeEnv",
    "Task",
    "TeacherEnv",
    "TreeActionSpace",
    "register_envs",
]
