"""Generators: the teacher's data engine, turning plans into training examples."""

from teachgym.agents.generators.base import GenerationContext, Generator
from teachgym.agents.generators.llm import LLMGenerator
from teachgym.agents.generators.procedural import ProceduralGenerator, parse_text_plan

__all__ = [
    "GenerationContext",
    "Generator",
    "LLMGenerator",
    "ProceduralGenerator",
    "parse_text_plan",
]
