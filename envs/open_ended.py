"""``teachgym/OpenEnded-v0``: the teacher reads errors and writes a text plan."""

from __future__ import annotations

from typing import Any

from teachgym.config import ExperimentConfig
from teachgym.envs.base import Parts, TeacherEnv, UnicodeText
from teachgym.text_formats import (
    OPEN_ENDED_MAX_CHARS,
    PLAN_MAX_CHARS,
    bad_text_chars,
    write_open_ended,
)
from teachgym.types import TextPlan

#: The observation's length limit (the format's, see :mod:`teachgym.text_formats`).
OBSERVATION_MAX_CHARS = OPEN_ENDED_MAX_CHARS


class OpenEndedEnv(TeacherEnv):
    """Write free-text data plans from the student's overall accuracy and errors.

    ## Description

    The open-ended setting of DataEnvGym: the teacher sees no skill breakdown,
    only the overall validation accuracy and a sample of the student's wrong
    answers, and answers with instructions for the generator. It is the natural
    env for LLM teachers. With the ``procedural`` generator a plan is read as
    ``skill: count`` lines (skills named by path or last segment, see
    :func:`~teachgym.agents.generators.procedural.parse_text_plan`); a plan it
    cannot read makes no data and is counted in ``info["rejected"]``.

    ## Action Space

    :class:`~teachgym.envs.base.UnicodeText` of 1 to 4000 characters
    (``PLAN_MAX_CHARS``, counted as Python ``str`` characters, i.e. code
    points): the plan. Any Unicode text is accepted ("×", "–", "é", emoji)
    except control characters; newline and tab are the only controls allowed
    (``"\\r"``, NUL, escape, ... raise ``ValueError``). ``action_space.sample()``
    draws from printable ASCII plus a few common symbols. A
    :class:`~teachgym.types.TextPlan` is accepted too.

    ## Observation Space

    :class:`~teachgym.envs.base.UnicodeText` of 0 to 8192 characters (the
    same character rule as the action; any control character in an error's
    prompt or answer is shown as ``?``, and the text is cut at the limit):

    | Part          | Content                                                   |
    |---------------|-----------------------------------------------------------|
    | header line   | step, validation accuracy, examples left in the budget    |
    | skills line   | the names a plan may use                                  |
    | error lines   | ``prompt -> student answer (expected gold)``, one each     |

    :func:`teachgym.text_formats.write_open_ended` writes it and
    :func:`~teachgym.text_formats.parse_open_ended` reads it back.

    ## Rewards

    The change in mean per-skill validation accuracy, minus
    ``cost_per_example`` per accepted example.

    ## Budget

    The teacher pays for the examples the student trains on, nothing else:
    ``budget_left`` falls by ``info["examples_accepted"]``. A plan is clamped
    to the step cap, ``min(examples_per_step, budget_left)``, before the
    generator runs (proportions kept), so no plan makes more than a step can
    use. Examples the filter drops (duplicates, evaluation items, bad
    characters) cost nothing; ``info["examples_by_skill"]`` shows per skill
    how many were made, accepted and rejected, and why.

    ## Starting State

    The untrained student's evaluation (base weights, no data).

    ## Episode End

    Terminated when the budget is spent; truncated after ``max_steps``. The
    last ``info`` holds ``test_accuracy``.

    ## Arguments

    Every :class:`~teachgym.config.ExperimentConfig` key, through
    ``gymnasium.make``.

    ## Examples

    >>> import gymnasium as gym
    >>> import teachgym
    >>> env = gym.make("teachgym/OpenEnded-v0", budget=40, examples_per_step=20,
    ...                task_kwargs={"val_per_skill": 4, "test_per_skill": 4})
    >>> obs, info = env.reset(seed=0)
    >>> obs.splitlines()[0].startswith("step 0")
    True
    >>> obs, reward, terminated, truncated, info = env.step("add/carry: 10\\ncmp/3d: 10")
    >>> info["examples_accepted"]
    20
    """

    kind = "open_ended"

    def __init__(self, config: ExperimentConfig, parts: Parts, **kwargs: Any) -> None:
        super().__init__(config, parts, **kwargs)
        self.action_space = UnicodeText(max_length=PLAN_MAX_CHARS, min_length=1)
        self.observation_space = UnicodeText(max_length=OBSERVATION_MAX_CHARS, min_length=0)

    def _read_action(self, action: Any) -> TextPlan:
        if isinstance(action, TextPlan):
            text = action.text
        elif isinstance(action, str):
            text = action
        else:
            raise ValueError(f"action must be a str or TextPlan, got {type(action).__name__}")
        if not text.strip():
            raise ValueError("the plan is empty")
        if len(text) > PLAN_MAX_CHARS:
            raise ValueError(f"the plan has {len(text)} characters; the limit is {PLAN_MAX_CHARS}")
        bad = bad_text_chars(text)
        if bad:
            raise ValueError(
                f"the plan has non-printable (control) characters {bad}; only newline and tab "
                f"are allowed"
            )
        return TextPlan(text=text)

    def observe(self) -> str:
        return write_open_ended(
            step=self._step_count,
            accuracy=self.report.accuracy,
            budget_left=self.budget_left,
            budget=self.config.budget,
            skills=self.skills,
            errors=self.report.errors,
        )
