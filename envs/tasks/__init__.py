"""Tasks: what the student must learn, split into skills, and how it is scored."""

from teachgym.envs.tasks.arithmetic import ArithmeticTask
from teachgym.envs.tasks.base import ProceduralTask, Split, Task

__all__ = ["ArithmeticTask", "ProceduralTask", "Split", "Task"]
