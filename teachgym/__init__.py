"""teachgym: gymnasium environments in which teachers make data for students.

Importing this package registers the environments with gymnasium, so
``gymnasium.make("teachgym/SkillList-v0")`` works after ``import teachgym``.
"""

from teachgym.types import (
    Allocation,
    ErrorCase,
    EvalReport,
    Example,
    Prediction,
    Problem,
    Provenance,
    SkillStats,
    TextPlan,
    TreeAction,
)

__version__ = "0.1.0"

__all__ = [
    "Allocation",
    "ErrorCase",
    "EvalReport",
    "Example",
    "Prediction",
    "Problem",
    "Provenance",
    "SkillStats",
    "TextPlan",
    "TreeAction",
    "__version__",
]

from teachgym.envs.registration import register_envs as _register_envs

_register_envs()
