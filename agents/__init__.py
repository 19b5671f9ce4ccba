"""Teachers: policies that decide what data to make, and generators that make it.

Nothing here imports :mod:`teachgym.envs` at import time, because the envs
import the generator protocol from this package.
"""

from teachgym.agents.generators import (
    GenerationContext,
    Generator,
    ProceduralGenerator,
    parse_text_plan,
)
from teachgym.agents.policies import (
    CurriculumTeacher,
    LearningProgressTeacher,
    RandomTeacher,
    SkillListTeacher,
    TeacherPolicy,
    UniformTeacher,
    WeakestTeacher,
)

__all__ = [
    "CurriculumTeacher",
    "GenerationContext",
    "Generator",
    "LearningProgressTeacher",
    "ProceduralGenerator",
    "RandomTeacher",
    "SkillListTeacher",
    "TeacherPolicy",
    "UniformTeacher",
    "WeakestTeacher",
    "parse_text_plan",
]
