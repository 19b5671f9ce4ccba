"""Teacher policies: what to teach next, given how the student is doing."""

from teachgym.agents.policies.base import SkillListTeacher, TeacherPolicy
from teachgym.agents.policies.baselines import RandomTeacher, UniformTeacher, WeakestTeacher
from teachgym.agents.policies.curriculum import CurriculumTeacher
from teachgym.agents.policies.learning_progress import LearningProgressTeacher

__all__ = [
    "CurriculumTeacher",
    "LearningProgressTeacher",
    "RandomTeacher",
    "SkillListTeacher",
    "TeacherPolicy",
    "UniformTeacher",
    "WeakestTeacher",
]
