"""Teacher policies: what to teach next, given how the student is doing."""

from teachgym.agents.policies.bandits import (
    ALPTeacher,
    EXP3STeacher,
    TSCLSamplingTeacher,
    TSCLWindowTeacher,
    UCBTeacher,
)
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
    "ALPTeacher",
    "CurriculumTeacher",
    "EXP3STeacher",
    "LLMOpenEndedTeacher",
    "LLMSkillListTeacher",
    "LLMSkillTreeTeacher",
    "LearningProgressTeacher",
    "RandomTeacher",
    "SkillListTeacher",
    "TSCLSamplingTeacher",
    "TSCLWindowTeacher",
    "TeacherPolicy",
    "TextFocusTeacher",
    "TextRandomTeacher",
    "TextUniformTeacher",
    "TreeRandomTeacher",
    "TreeUniformTeacher",
    "TreeWeakestTeacher",
    "UCBTeacher",
    "UniformTeacher",
    "WeakestTeacher",
]
