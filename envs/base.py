"""``TeacherEnv``: the one environment base and the one step loop.

The three public environments differ only in how they show the observation and
read the action; everything else (generation, filtering, training,
evaluation, reward, budget, termination, state for resume) happens here once.
The records a step builds (:mod:`teachgym.envs.step_records`) and the text space
(:mod:`teachgym.envs.text_space`) live in their own modules and are re-exported
here, so ``from teachgym.envs.base import PendingStep, UnicodeText`` keeps working.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from teachgym.agents.generators.base import (
    GenerationContext,
    Generator,
    Plan,
    ReportsShortfall,
    ReportsStats,
)
from teachgym.config import ExperimentConfig
from teachgym.envs.evaluation import build_report, score_outputs
from teachgym.envs.filtering import ExampleFilter
from teachgym.envs.skills import SkillTree
from teachgym.envs.step_records import PendingStep as PendingStep
from teachgym.envs.step_records import Perf as Perf
from teachgym.envs.step_records import StepData as StepData
from teachgym.envs.step_records import Timings as Timings
from teachgym.envs.step_records import report_dict, timed
from teachgym.envs.tasks.base import Split, Task, TaskCapabilities
from teachgym.envs.text_space import PRINTABLE as PRINTABLE
from teachgym.envs.text_space import UnicodeText as UnicodeText
from teachgym.students.base import Closable, HasHorizon, ReportsPerf, ScoresOwnShards, Student
from teachgym.text_formats import bad_text_chars as bad_text_chars
from teachgym.text_formats import clean_text as clean_text
from teachgym.types import Allocation, EvalReport, Example, Prediction, Problem


@dataclass
class Parts:
    """The components an env is built from (see :mod:`teachgym.assembly`).

    ``caps`` is what the task offers, read once; ``remote`` the Ray actors
    (``backend: ray``) behind ``student`` and ``generator``, and
    ``score_remotely`` whether the student's workers score their own
    evaluation shards; ``clients`` the process's shared LLM clients (a
    teacher built for this env uses them too).
    """

    task: Task
    caps: TaskCapabilities
    student: Any
    generator: Any
    remote: Any = None
    score_remotely: bool = False
    clients: Any = None

    def close(self) -> None:
        """Release what the parts hold: the Ray actors, or a local student's resources
        (a vLLM evaluation engine and its weight directories)."""
        if self.remote is not None:
            self.remote.close()
            self.remote = None
        elif isinstance(self.student, Closable):
            self.student.close()


class TeacherEnv(gym.Env):
    """Shared machinery for the teachgym environments (not registered itself).

    Subclasses implement :meth:`_read_action` (turn an action into a plan, or
    raise ``ValueError`` without touching state), :meth:`observe`, and may
    override :meth:`_commit_plan`, :meth:`_extra_state` and
    :meth:`_load_extra_state` when the action changes env state (SkillTree).

    The env builds nothing: it receives its components (``parts``) from the
    assembly (:mod:`teachgym.assembly`), which ``gymnasium.make`` calls.

    Args:
        config: the experiment config (the env reads its budget, step size,
            step limit, filter and decontamination settings).
        parts: the task, student and generator, and what they hold.
        render_mode: ``None`` or ``"ansi"``.
    """

    # Declared as gymnasium.Env declares it (an instance-level annotation).
    metadata: dict[str, Any] = {"render_modes": ["ansi"]}  # noqa: RUF012
    #: Which of the three envs this is (a teacher that acts on several reads it).
    kind: str = "skill_list"

    def __init__(
        self, config: ExperimentConfig, parts: Parts, *, render_mode: str | None = None
    ) -> None:
        super().__init__()
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        if not isinstance(config, ExperimentConfig) or not isinstance(parts, Parts):
            raise TypeError(
                f"{type(self).__name__} is built by teachgym.assembly (gymnasium.make or "
                f"teachgym.assembly.make_env): it takes an ExperimentConfig and its Parts"
            )
        self.render_mode = render_mode
        self.config = config
        self.parts = parts
        self.task: Task = parts.task
        self.caps: TaskCapabilities = parts.caps
        self.student: Student = parts.student
        self.generator: Generator = parts.generator
        self.tree: SkillTree = self.task.skills.copy()
        self._val = self.task.problems("val")
        self._test = self.task.problems("test")
        if not self._val or not self._test:
            raise ValueError(f"task {self.task.name!r} has an empty val or test split")
        self._filter = ExampleFilter(
            [p.prompt for p in self._val + self._test],
            self.caps.alphabet,
            dedup=config.dedup,
            **config.decontamination.model_dump(),
        )
        if isinstance(self.student, HasHorizon):
            self.student.set_horizon(self.horizon)
        generator = self.generator
        self._take_stats = generator.take_stats if isinstance(generator, ReportsStats) else None
        self._shortfall_reasons = frozenset(
            generator.shortfall_reasons if isinstance(generator, ReportsShortfall) else ()
        )
        self._take_perf = self.student.take_perf if isinstance(self.student, ReportsPerf) else None
        self._predict_scored = (
            self.student.predict_scored
            if parts.score_remotely and isinstance(self.student, ScoresOwnShards)
            else None
        )
        self._started = False
        self._done = False
        self._episode_seed = 0
        self._step_count = 0
        self._budget_used = 0
        self._used: Counter[str] = Counter()
        self._history: list[float] = []
        self._report: EvalReport | None = None
        #: The data and val predictions of the last step, for run logs.
        self.last_examples: list[Example] = []
        self.last_predictions: list[Prediction] = []

    # -- the contract ------------------------------------------------------
    @property
    def skills(self) -> list[str]:
        """Leaf skills in a fixed order: the order of every per-skill vector."""
        return self.tree.leaves

    @property
    def budget_left(self) -> int:
        """Examples the teacher may still have the student train on (see :meth:`step`)."""
        return self.config.budget - self._budget_used

    @property
    def step_cap(self) -> int:
        """The most examples the next step may accept: the step size or what is left."""
        return min(self.config.examples_per_step, self.budget_left)

    @property
    def horizon(self) -> int:
        """The most examples an episode can train on: the budget, or fewer if
        ``max_steps`` full steps cannot spend it. Students that anneal their
        learning rate over an episode are told this number."""
        cfg = self.config
        return min(cfg.budget, cfg.max_steps * cfg.examples_per_step)

    @property
    def report(self) -> EvalReport:
        if self._report is None:
            raise RuntimeError("call reset() before reading the report")
        return self._report

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Student back to base weights, data cleared, baseline evaluation."""
        self.begin_reset(seed=seed)
        t0 = time.perf_counter()
        report, predictions = self.evaluate("val")
        return self.end_reset(report, predictions, time.perf_counter() - t0)

    def begin_reset(self, *, seed: int | None = None) -> None:
        """:meth:`reset` up to the baseline evaluation: seeds, student reset, state cleared.

        With :meth:`end_reset`, the two halves of a reset, so that a vector env
        can evaluate many sub-envs' students in one batch in between.
        """
        if seed is None and self._np_random is None:
            seed = self.config.seed
        super().reset(seed=seed)
        self._episode_seed = int(self.np_random.integers(2**31 - 1))
        self.student.reset()
        self.tree = self.task.skills.copy()
        self._filter.seen.clear()
        self._step_count = 0
        self._budget_used = 0
        self._used = Counter()
        self._done = False
        self._started = True
        self.last_examples = []
        self._on_reset()

    def end_reset(
        self, report: EvalReport, predictions: list[Prediction], seconds: float
    ) -> tuple[Any, dict[str, Any]]:
        """The rest of :meth:`reset`, given the baseline evaluation (``seconds`` it took)."""
        self._report, self.last_predictions = report, predictions
        self._history = [self._report.accuracy]
        info = self._info(timings=Timings({"evaluate": seconds}), **self._perf())
        return self.observe(), info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Generate -> filter -> train -> evaluate; reward is the val accuracy gain.

        The budget rule, the same in every env: **the teacher pays for the
        examples the student trains on** (``examples_accepted``), nothing else.
        A plan is first clamped to the step cap (``examples_per_step``, or the
        budget left if smaller), keeping its proportions, and the generator is
        told the cap (``GenerationContext.max_examples``), so no plan can make
        it produce more. Examples the filter drops (duplicates, evaluation
        items, bad characters) and shortfalls the generator reports cost
        nothing, and a count plan's dropped examples are made again (see
        :meth:`_generate`); ``info["examples_by_skill"]`` shows, per skill,
        what was made, accepted and rejected and why, so a teacher sees exactly
        what it paid for. A generator with ``take_stats()`` (the ``llm``
        generator) reports its counters for the step, LLM requests, cache hits,
        failures and tokens, in ``info["llm"]["generator"]``.
        """
        pending = self.begin_step(action)
        accepted = pending.data.accepted
        with timed(pending.timings, "train"):
            train_metrics = self.student.train(accepted) if accepted else {}
        with timed(pending.timings, "evaluate"):
            report, predictions = self.evaluate("val")
        return self.end_step(pending, train_metrics, report, predictions)

    def begin_step(self, action: Any) -> PendingStep:
        """:meth:`step` up to training: the action read and the step's data generated
        and filtered. Changes no env state (a bad action raises ``ValueError``).

        With :meth:`end_step`, the two halves of a step, so that a vector env can
        train and evaluate many sub-envs' students in one batch in between.
        """
        if not self._started:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode is over; call reset() to start a new one")
        plan = self._read_action(action)  # raises ValueError; state untouched
        cap = self.step_cap
        if isinstance(plan, Allocation):
            plan = plan.clamped(cap)
        timings: dict[str, float] = {}
        with timed(timings, "generate"):
            made = self._generate(plan, self._plan_skills(plan), cap)
        # An LLM generator's client counters (requests, cache hits, failures, tokens) for
        # this step; any generator with ``take_stats`` reports, through a Ray proxy too.
        llm_stats = {"generator": self._take_stats()} if self._take_stats is not None else None
        return PendingStep(plan=plan, data=made, timings=timings, llm_stats=llm_stats)

    def ends_episode(self, pending: PendingStep) -> bool:
        """Whether the step begun as ``pending`` will end the episode (terminated or
        truncated): known before training, so the test split can be evaluated in a batch."""
        budget_left = self.budget_left - len(pending.data.accepted)
        return budget_left <= 0 or self._step_count + 1 >= self.config.max_steps

    def end_step(
        self,
        pending: PendingStep,
        train_metrics: Mapping[str, float],
        report: EvalReport,
        predictions: list[Prediction],
        test_report: EvalReport | None = None,
    ) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """The rest of :meth:`step`, given the student's training metrics and its
        validation evaluation; at the episode's end the test split is evaluated here
        unless ``test_report`` is given."""
        plan, made, timings = pending.plan, pending.data, pending.timings
        examples, accepted = made.examples, made.accepted
        reward = self._commit(plan, accepted, report, predictions)
        terminated = self.budget_left <= 0
        truncated = not terminated and self._step_count >= self.config.max_steps
        info = self._info(
            timings=Timings(timings),
            examples_made=len(examples),
            examples_accepted=len(accepted),
            rejected=made.rejected_totals(),
            examples_by_skill=made.by_skill(),
            train=dict(train_metrics),
            **self._perf(),
        )
        if isinstance(plan, Allocation):
            info["requested"] = dict(plan.counts)
        if pending.llm_stats is not None:
            info["llm"] = pending.llm_stats
        if terminated or truncated:
            self._done = True
            if test_report is None:
                test_report, _ = self.evaluate("test")
            info["test_accuracy"] = test_report.accuracy
            info["test_report"] = report_dict(test_report)
        return self.observe(), float(reward), terminated, truncated, info

    def _commit(
        self, plan: Plan, accepted: list[Example], report: EvalReport, predictions: list[Any]
    ) -> float:
        """Apply a step that succeeded (nothing before this changed env state except the
        student's weights); the reward: the val accuracy gain less the examples' cost."""
        self._commit_plan(plan)
        self._filter.commit(accepted)
        self._budget_used += len(accepted)
        self._used.update(e.skill for e in accepted)
        self._step_count += 1
        previous = self._history[-1]
        self._report = report
        self._history.append(report.accuracy)
        self.last_examples, self.last_predictions = accepted, predictions
        return report.accuracy - previous - self.config.cost_per_example * len(accepted)

    #: Generation rounds per step at most: later rounds ask only for what the
    #: filter dropped, so a step trains on what the plan asked for.
    max_generation_rounds = 8

    def _generate(self, plan: Plan, plan_skills: Sequence[str], cap: int) -> StepData:
        """Make and filter a step's data (see :class:`StepData` for the accounting).

        For a count plan (``Allocation``) the env knows what each skill asked
        for, so after the first round it asks the generator again for each
        skill's shortfall (what the filter dropped: duplicates, evaluation
        items), until the plan is met, a round adds nothing, or
        :attr:`max_generation_rounds` have run. Without this, a plan would get
        fewer examples than it asked for, and the budget, which counts
        accepted examples, would end in a tail of ever smaller steps. A text
        plan is read by the generator alone, so it gets one round.
        """
        rng = np.random.default_rng([self._episode_seed, self._step_count])
        nodes = set(self.tree.nodes) | set(plan_skills)
        data = StepData(
            requested=dict(plan.counts) if isinstance(plan, Allocation) else None,
            shortfall_reasons=self._shortfall_reasons,
        )
        taken: set[str] = set()
        round_plan: Plan = plan
        for round_index in range(self.max_generation_rounds):
            want = cap - len(data.accepted)
            if isinstance(plan, Allocation):
                got = Counter(e.skill for e in data.accepted)
                short = {k: max(0, n - got[k]) for k, n in plan.counts.items()}
                round_plan = Allocation(counts=short).clamped(plan.total - len(data.accepted))
                want = min(want, round_plan.total)
            if want <= 0:
                break
            context = GenerationContext(
                step=self._step_count,
                rng=rng,
                max_examples=want,
                skills=plan_skills,
                task=self.task,
                report=self._report,
                exclude=self._filter.excluded(taken),
                extra={"round": round_index},
            )
            new_made, gen_rejected = self.generator.generate(round_plan, context)
            new, filtered = self._filter(new_made, nodes, want, taken)
            data.add_round(round_plan, new_made, new, filtered, gen_rejected)
            if not new or not isinstance(plan, Allocation):
                break
        return data

    def evaluate(self, split: Split) -> tuple[EvalReport, list[Prediction]]:
        """Score the student on a split, per skill, with a bounded error sample.

        The task scores the whole split in one call (:func:`score_outputs`),
        so a task that scores in parallel (the ``code`` task's sandbox pool)
        does; with ``backend: ray`` the evaluation workers score their own
        shards. The report comes from the pure :func:`build_report`.
        """
        problems = self.split_problems(split)
        if self._predict_scored is not None:
            # Ray workers decode and score their shards (see StudentProxy.predict_scored).
            outputs, scores = self._predict_scored(problems)
        else:
            outputs = self.student.predict(problems)
            scores = None
        if len(outputs) != len(problems):
            raise RuntimeError(
                f"student returned {len(outputs)} outputs for {len(problems)} problems"
            )
        return self.report_of(split, outputs, scores)

    def split_problems(self, split: Split) -> list[Problem]:
        """The problems of the val or test split (the lists the env evaluates on)."""
        return self._val if split == "val" else self._test

    def report_of(
        self, split: Split, outputs: Sequence[str], scores: Sequence[bool] | None = None
    ) -> tuple[EvalReport, list[Prediction]]:
        """The report of a split from the student's ``outputs`` (scored here unless
        ``scores`` are given): the second half of :meth:`evaluate`."""
        problems = self.split_problems(split)
        if scores is None:
            scores = score_outputs(self.caps, problems, outputs)
        return build_report(split, problems, outputs, scores, self.config.max_errors)

    def close(self) -> None:
        """Release what the parts hold (:meth:`Parts.close`): Ray actors, a local
        student's evaluation engine."""
        parts = getattr(self, "parts", None)  # not set when the constructor failed early
        if parts is not None:
            parts.close()
        super().close()

    # -- hooks for subclasses ---------------------------------------------
    def _read_action(self, action: Any) -> Plan:
        raise NotImplementedError

    def observe(self) -> Any:
        raise NotImplementedError

    def _plan_skills(self, plan: Plan) -> Sequence[str]:
        return self.skills

    def _on_reset(self) -> None:
        """Reset subclass episode state (called before the baseline evaluation)."""

    def _commit_plan(self, plan: Plan) -> None:
        """Apply the state change an action implies, after the step succeeded."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # -- info, rendering, state -------------------------------------------
    def _perf(self) -> dict[str, Perf]:
        """``{"perf": ...}``: what a student that reports it measured since the last call
        (tokens per second, peak memory); nothing for one that does not."""
        return {"perf": Perf(self._take_perf())} if self._take_perf is not None else {}

    def _info(self, **extra: Any) -> dict[str, Any]:
        report = self.report
        return {
            "step": self._step_count,
            "accuracy": report.accuracy,
            "report": report_dict(report),
            "errors": [e.model_dump() for e in report.errors],
            "budget_left": self.budget_left,
            "examples_used": {s: self._used.get(s, 0) for s in self.skills},
            **extra,
        }

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        report = self.report
        lines = [
            f"step {self._step_count}  val accuracy {report.accuracy:.3f}  "
            f"budget left {self.budget_left}"
        ]
        for skill in self.skills:
            stats = report.skills.get(skill)
            acc = f"{stats.accuracy:.3f}" if stats else "  -  "
            lines.append(f"  {skill:<24} acc {acc}  examples {self._used.get(skill, 0)}")
        return "\n".join(lines)

    def save_student(self, path: Path) -> None:
        """The student's weights into directory ``path`` (with :meth:`state_dict`, a
        checkpoint)."""
        self.student.save(path)

    def load_student(self, path: Path) -> None:
        """The student's weights from a directory :meth:`save_student` wrote."""
        self.student.load(path)

    def state_dict(self) -> dict[str, Any]:
        """Env state for resume (JSON-safe); :meth:`save_student` saves the weights."""
        if not self._started:
            raise RuntimeError("call reset() before saving state")
        return {
            "episode_seed": self._episode_seed,
            "step": self._step_count,
            "budget_used": self._budget_used,
            "used": dict(self._used),
            "history": list(self._history),
            "report": self.report.model_dump(),
            "seen": sorted(self._filter.seen),
            "done": self._done,
            "tree": self.tree.to_list(),
            "np_random": self.np_random.bit_generator.state,
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._episode_seed = int(state["episode_seed"])
        self._step_count = int(state["step"])
        self._budget_used = int(state["budget_used"])
        self._used = Counter(state["used"])
        self._history = [float(x) for x in state["history"]]
        self._report = EvalReport.model_validate(state["report"])
        self._filter.seen = set(state["seen"])
        self._done = bool(state["done"])
        self.tree = SkillTree.from_list(state["tree"])
        self.np_random.bit_generator.state = state["np_random"]
        self._started = True
        self._load_extra_state(state)

    @property
    def history(self) -> list[float]:
        """Val accuracy after reset and after every step."""
        return list(self._history)
