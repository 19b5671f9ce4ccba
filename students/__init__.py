"""Students: models the teacher trains. See :class:`Student`."""

from teachgym.students.base import Student
from teachgym.students.hf import HFStudent
from teachgym.students.tiny import make_tiny_student, tiny_llama
from teachgym.students.tokenizer import build_char_tokenizer

__all__ = ["HFStudent", "Student", "build_char_tokenizer", "make_tiny_student", "tiny_llama"]
