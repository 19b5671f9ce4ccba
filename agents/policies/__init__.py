"""Teacher policies: what to teach next, given how the student is doing."""

from teachgym.agents.policies.base import SkillListTeacher, TeacherPolicy
from teachgym.agents.policies.baselines import RandomTeacher, UniformTeacher, WeakestTeacher
from teachgym.agents.policies.curriculum import CurriculumTeacher
from teachgym.agents.policies.heuristics import (
    TextFocusTeacher,
    TextRandomTeacher,
    TextUniformTeacher,
    TreeRandomTeacher,
    TreeUniformTeacher,
    TreeWeakestTeacher,
)
from teachgym.agents.policies.learning_progress import LearningProgressTeacher
from teachgym.agents.policies.llm import (
    LLMOpenEndedTeacher,
    LLMSkillListTeacher,
    LLMSkillTreeTeacher,
)

__all__ = [
    "CurriculumTeacher",
    "LLMOpenEndedTeacher",
    "LLMSkillListTeacher",
    "LLMSkillTreeTeacher",
    "LearningProgressTeacher",
    "RandomTeacher",
    "SkillListTeacher",
    "TeacherPolicy",
    "TextFocusTeacher",
    "TextRandomTeacher",
    "TextUniformTeacher",
    "TreeRandomTeacher",
    "TreeUniformTeacher",
    "TreeWeakestTeacher",
    "UniformTeacher",
    "WeakestTeacher",
]
