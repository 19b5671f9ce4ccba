"""The ``llm`` generator: an LLM writes the examples, the task's checker keeps the right ones.

It serves tasks that have no sampler, or data a sampler cannot make (problems
aimed at a student's errors, skills a SkillTree teacher invented), at the
price of data quality: an LLM's answers can be wrong, its prompts can drift
from the task's format, its labels can be off. So every generated example
passes the task's own optional checks before the env sees it (``check``:
is the answer right; ``skill_of``: is it the skill it claims; see
:class:`~teachgym.envs.tasks.base.Task`), and everything dropped is counted
under a reason in ``rejected``, including whole requests the LLM client gave
up on (``llm_<reason>``, once per example the request asked for): a step
that made less data than asked always says why.

Requests are deterministic: the sampling seed is derived from the generator
seed, the step, the generation round, the step's random generator and the
request's index, and the messages from the plan, the task and the student's
report; so a rerun with the client's ``cache_dir`` sends no request at all.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from teachgym.agents.generators.base import GenerationContext, Plan
from teachgym.agents.generators.llm_prompts import (
    DEFAULT_PROMPT_FILE,
    PLACEHOLDERS,
    errors_text,
    example_line,
    format_text,
    load_prompts,
    related,
)
from teachgym.agents.generators.llm_prompts import GENERIC_FORMAT as GENERIC_FORMAT
from teachgym.agents.generators.llm_schema import MAX_ANSWER_CHARS as MAX_ANSWER_CHARS
from teachgym.agents.generators.llm_schema import MAX_PROMPT_CHARS as MAX_PROMPT_CHARS
from teachgym.agents.generators.llm_schema import MAX_SKILL_CHARS as MAX_SKILL_CHARS
from teachgym.agents.generators.llm_schema import batch_model, reply_bounds
from teachgym.agents.generators.llm_schema import item_model as item_model
from teachgym.agents.generators.procedural import parse_text_plan, source_skills
from teachgym.agents.llm import LLMClient, LLMRequest, Sampling, make_client
from teachgym.envs.tasks.base import TaskCapabilities
from teachgym.options import Options, takes
from teachgym.types import (
    Allocation,
    Example,
    Provenance,
    TextPlan,
    TreeAction,
    normalize_prompt,
)

__all__ = ["DEFAULT_PROMPT_FILE", "LLMGenerator", "batch_model"]


@dataclass(frozen=True)
class _Job:
    """One request: ``n`` examples of ``skill`` (``None``: a text plan's, labelled by the LLM)."""

    skill: str | None
    n: int


class LLMGeneratorOptions(Options):
    """What :class:`LLMGenerator` (``generator: llm``) takes from ``generator_kwargs``."""

    llm: Any = Field(
        default=None,
        description="the client spec {backend, model, base_url, ...} or an LLMClient; "
        "null: the config's top-level llm",
    )
    examples_per_request: int = Field(
        default=10, ge=1, le=200, description="examples one request asks for at most"
    )
    prompt_file: str | Path | None = Field(
        default=None, description="a prompt file of your own; null: the packaged one"
    )
    temperature: float = Field(default=0.8, ge=0.0, le=2.0, description="sampling temperature")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="nucleus sampling")
    max_tokens: int = Field(default=2048, ge=1, description="reply tokens at most")
    max_requests_per_step: int | None = Field(
        default=None, ge=1, description="requests a step sends at most; null: no limit"
    )
    format_examples: int = Field(default=3, ge=0, description="sampled problems per request")
    errors_shown: int = Field(default=5, ge=0, description="student errors per request")
    max_prompt_chars: int | None = Field(
        default=None, ge=1, description="a generated prompt's length; null: from the task"
    )
    max_answer_chars: int | None = Field(
        default=None, ge=1, description="a generated answer's length; null: from the task"
    )
    cross_check: bool = Field(
        default=False, description="solve each problem again and drop disagreements"
    )
    cross_check_temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="sampling of the second solution"
    )
    cross_check_max_tokens: int = Field(
        default=1024, ge=1, description="tokens of the second solution at most"
    )


class LLMGenerator:
    """Makes examples by asking an LLM, checked by the task before the env sees them.

    Count plans (``Allocation``, ``TreeAction``): per skill,
    ``ceil(n / examples_per_request)`` requests, each for at most
    ``examples_per_request`` new problems of that skill. A request shows the
    skill's name, the task's format (``task.format_description(skill)`` when
    it has one), a few freshly sampled problems of that skill when the task
    can sample (``task.sample``; never an evaluation item: anything in
    ``context.exclude`` is skipped) and the student's validation errors for
    that skill from ``context.report`` (the same errors the teacher sees;
    copies of them are dropped as ``excluded``). A free-text plan
    (``TextPlan``) is the instructions; the reply labels each example with a
    skill, and a label that is not one of ``context.skills`` (by full path or
    unique last segment) is dropped as ``unknown_skill``. A text plan asks
    for the counts it states (read as the ``procedural`` generator reads
    them), or for ``context.max_examples`` when it states none.

    No plan makes it request more than ``context.max_examples`` examples, or
    more than ``max_requests_per_step`` requests in a step (all the env's
    generation rounds together; what that cuts is ``rejected["request_limit"]``).

    Every example the LLM returns is kept only if it is non-empty, the task's
    ``check`` says its answer is right (else ``wrong_answer``, or
    ``unparseable_prompt`` when the task cannot read the prompt), the task's
    ``skill_of`` agrees with its label (else ``wrong_skill``), and its prompt
    is not in ``context.exclude`` (``excluded``), not one of the sampled
    problems a request of this call showed (``copied_example``: the task's
    sampler made it, not the LLM, so keeping it would credit the LLM with the
    sampler's data, and a small model's only correct examples can be such
    copies), and not already made this call (``duplicate``). A request that
    failed counts ``llm_<reason>`` per example it asked for; a reply with fewer
    examples than asked counts the rest as ``short_reply``.

    Args:
        task: the task (its optional ``sample``, ``check``, ``skill_of``,
            ``format_description`` are used when present).
        seed: mixed into every request's sampling seed.
        llm: the client: an :class:`~teachgym.agents.llm.LLMClient`, or its
            config mapping for :func:`~teachgym.agents.llm.make_client`
            (``{backend, model, base_url, cache_dir, ...}``). Required.
        examples_per_request: the most examples one request asks for (the
            reply schema's ``maxItems``).
        prompt_file: a prompt file like ``agents/prompts/generator.txt``.
        temperature, top_p, max_tokens: sampling of every request.
        max_requests_per_step: the most requests a step sends; ``None``: no
            limit but the one ``max_examples`` implies.
        format_examples: sampled problems shown per request.
        errors_shown: student errors shown per request at most.
        max_prompt_chars, max_answer_chars: the reply schema's bounds on a
            generated prompt and answer. ``None``: twice the task's longest
            validation prompt (answer), and never below 400 (200) characters,
            so a GSM8K solution or a HumanEval function fits where an
            arithmetic answer needs 200.
        cross_check: ask the LLM to solve every generated problem a second
            time, independently (the task's format description as the system
            message, the prompt alone as the user message), and drop the
            example when the task's ``answers_agree`` says the two answers
            differ (``disagreement``) or the second request failed
            (``cross_check_failed``). For tasks that cannot compute an answer
            themselves (GSM8K, MATH); needs ``answers_agree`` on the task.
        cross_check_temperature, cross_check_max_tokens: sampling of those
            second requests (greedy by default: the most likely solution is
            the best second opinion).

    After the per-example checks above, a task with ``verify`` checks the
    survivors in one batch (the ``code`` task runs each generated function
    against its generated tests in the sandbox, and refuses tests that cannot
    tell a wrong answer from a right one) and its reasons are counted as they
    come (``failed_tests``, ``weak_tests``, ``self_comparison``,
    ``always_true``, ``no_final_answer``, ...); the task's
    ``generation_fields`` are added to the reply schema so the LLM writes
    what ``verify`` needs.
    """

    name = "llm"

    @takes(LLMGeneratorOptions)
    def __init__(
        self,
        task: Any,
        seed: int = 0,
        *,
        llm: LLMClient | Mapping[str, Any] | None,
        examples_per_request: int,
        prompt_file: str | Path | None,
        temperature: float,
        top_p: float,
        max_tokens: int,
        max_requests_per_step: int | None,
        format_examples: int,
        errors_shown: int,
        max_prompt_chars: int | None,
        max_answer_chars: int | None,
        cross_check: bool,
        cross_check_temperature: float,
        cross_check_max_tokens: int,
    ) -> None:
        if llm is None:
            raise ValueError(
                "the llm generator needs an LLM client: generator_kwargs.llm = "
                "{backend: openai, model: ..., base_url: ...} or an LLMClient"
            )
        self.task = task
        self.seed = int(seed)
        self.examples_per_request = examples_per_request
        self.prompts = load_prompts(prompt_file or DEFAULT_PROMPT_FILE)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_tokens = max_tokens
        self.max_requests_per_step = max_requests_per_step
        self.format_examples = int(format_examples)
        self.errors_shown = int(errors_shown)
        self.prompt_chars, self.answer_chars = reply_bounds(
            task, max_prompt_chars, max_answer_chars
        )
        self.caps = caps = TaskCapabilities.of(task)
        fields = dict(caps.generation_fields)
        for name, bound in fields.items():
            if name in ("prompt", "answer", "skill") or not isinstance(bound, int) or bound < 1:
                raise ValueError(
                    f"{type(task).__name__}.generation_fields: {name!r}: {bound!r} is not a new "
                    "field name with a positive length bound"
                )
        self.extra_fields: tuple[tuple[str, int], ...] = tuple(sorted(fields.items()))
        if cross_check:
            caps.require("agreement", "the llm generator's cross_check")
        self.cross_check = bool(cross_check)
        self.cross_check_temperature = float(cross_check_temperature)
        self.cross_check_max_tokens = cross_check_max_tokens
        self.client: LLMClient = make_client(llm)
        self.model = str(self.client.backend.model or "") or None
        self._step_key: tuple[int, int] | None = None
        #: Normalized prompts of the sampled problems shown in this call's requests.
        self._shown: set[str] = set()
        self._requests_this_step = 0
        self._unverified = 0

    # -- the Generator protocol ----------------------------------------------
    def generate(
        self, plan: Plan, context: GenerationContext
    ) -> tuple[list[Example], Mapping[str, int]]:
        rejected: Counter[str] = Counter()
        jobs = self._jobs(plan, context, rejected)
        jobs = self._limit(jobs, context, rejected)
        if not jobs:
            return [], dict(rejected)
        base = int(context.rng.integers(2**31 - 1))
        text = plan.text if isinstance(plan, TextPlan) else ""
        self._shown = set()  # filled by _examples while the requests are built
        requests = [self._request(job, i, base, text, context) for i, job in enumerate(jobs)]
        replies = self.client.complete(requests)
        out: list[Example] = []
        items_kept: list[Any] = []
        seen: set[str] = set()
        for job, request, reply in zip(jobs, requests, replies, strict=True):
            if not reply.ok or reply.parsed is None:
                rejected[f"llm_{reply.error or 'no_reply'}"] += job.n
                continue
            items = list(reply.parsed.examples)  # type: ignore[attr-defined]
            if len(items) < job.n:
                rejected["short_reply"] += job.n - len(items)
            source = Provenance(generator=self.name, model=self.model, seed=request.sampling.seed)
            for item in items[: job.n]:
                example = self._keep(item, job, context, seen, source, rejected)
                if example is not None:
                    out.append(example)
                    items_kept.append(item)
        out = self._verify(out, items_kept, rejected)
        out = self._cross_check(out, base, context, rejected)
        if not self._checks_answers():
            self._unverified += len(out)
        cap = max(0, context.max_examples)
        if len(out) > cap:  # cannot happen with maxItems honoured; kept as the protocol's rule
            rejected["over_budget"] += len(out) - cap
            out = out[:cap]
        return out, dict(rejected)

    def take_stats(self) -> dict[str, Any]:
        """The client's counters since the last call (requests, cached, ok, failed and
        retried by reason, tokens), plus ``unverified``: examples kept whose answers
        nothing checked (no ``check``, no ``verify`` that checks answers, no
        ``cross_check``; a GSM8K ``verify`` only reads that a final answer is there).
        The env puts this in ``info["llm"]["generator"]`` after every step."""
        stats = dict(self.client.take_stats())
        stats["unverified"], self._unverified = self._unverified, 0
        return stats

    # -- planning ------------------------------------------------------------
    def _jobs(self, plan: Plan, context: GenerationContext, rejected: Counter[str]) -> list[_Job]:
        """The requests a plan calls for, never more examples in all than ``max_examples``.

        Skills take turns (one request each, round robin), so a request limit
        cuts every skill a little instead of the last skills entirely.
        """
        cap = max(0, context.max_examples)
        per = self.examples_per_request
        if isinstance(plan, TextPlan):
            stated = parse_text_plan(plan.text, list(context.skills)).total
            n = min(stated, cap) if stated > 0 else cap
            return [_Job(None, min(per, n - i)) for i in range(0, n, per)]
        if isinstance(plan, TreeAction):
            alloc = Allocation(counts=dict(plan.allocation))
        elif isinstance(plan, Allocation):
            alloc = plan
        else:
            raise TypeError(f"unsupported plan type {type(plan).__name__}")
        queues: list[list[_Job]] = []
        for skill, n in alloc.clamped(cap).counts.items():
            if n > 0:
                queues.append([_Job(skill, min(per, n - i)) for i in range(0, n, per)])
        jobs: list[_Job] = []
        for turn in range(max((len(q) for q in queues), default=0)):
            jobs.extend(q[turn] for q in queues if turn < len(q))
        return jobs

    def _limit(
        self, jobs: list[_Job], context: GenerationContext, rejected: Counter[str]
    ) -> list[_Job]:
        """Cut ``jobs`` to what ``max_requests_per_step`` leaves for this step.

        A step is all generation rounds the env runs at one step number; the
        count restarts at round 0 (a new step, or a new episode).
        """
        key = (context.step, int(context.extra.get("round", 0)))
        if self._step_key is None or key[1] == 0 or key[0] != self._step_key[0]:
            self._requests_this_step = 0
        self._step_key = key
        if self.max_requests_per_step is not None:
            room = max(0, self.max_requests_per_step - self._requests_this_step)
            if len(jobs) > room:
                rejected["request_limit"] += sum(j.n for j in jobs[room:])
                jobs = jobs[:room]
        self._requests_this_step += len(jobs)
        return jobs

    # -- requests ------------------------------------------------------------
    def _seed(self, step: int, round_index: int, base: int, index: int) -> int:
        """A request's sampling seed: stable across processes (no ``hash()``), so reruns hit
        the cache; distinct per request, so two requests of one skill get different data."""
        text = f"{self.seed}/{step}/{round_index}/{base}/{index}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1

    def _request(
        self, job: _Job, index: int, base: int, plan_text: str, context: GenerationContext
    ) -> LLMRequest:
        round_index = int(context.extra.get("round", 0))
        if job.skill is None:
            skills = list(context.skills)
            user = self.prompts["text"].substitute(
                n=job.n,
                skill="",
                plan=plan_text,
                skills=", ".join(skills),
                format=format_text(self.caps, skills[0] if len(skills) == 1 else None),
                examples=self._examples(skills, context, labelled=True),
                errors=errors_text(context.report, None, self.errors_shown),
            )
        else:
            user = self.prompts["skill"].substitute(
                n=job.n,
                skill=job.skill,
                plan="",
                skills=job.skill,
                format=format_text(self.caps, job.skill),
                examples=self._examples([job.skill], context, labelled=False),
                errors=errors_text(context.report, job.skill, self.errors_shown),
            )
        system = self.prompts["system"].substitute(dict.fromkeys(PLACEHOLDERS, ""))
        return LLMRequest(
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            response_model=batch_model(
                job.n, job.skill is None, self.prompt_chars, self.answer_chars, self.extra_fields
            ),
            sampling=Sampling(
                temperature=self.temperature,
                top_p=self.top_p,
                max_tokens=self.max_tokens,
                seed=self._seed(context.step, round_index, base, index),
            ),
        )

    def _known(self, context: GenerationContext) -> list[str]:
        """The skills the task can sample: its leaves (or, lacking the attribute, the plan's)."""
        return list(self.caps.leaf_skills or context.skills)

    def _examples(self, skills: Sequence[str], context: GenerationContext, labelled: bool) -> str:
        """A few fresh problems in the task's format, as JSON lines; never an evaluation item.

        Drawn from ``task.sample`` (a procedural task) for the skill, or for
        the task skills that serve it (:func:`source_skills`); ``(none)`` when
        the task cannot sample, and the format description must do.
        """
        sampler = self.caps.sampler
        if sampler is None or self.format_examples == 0:
            return "(none)"
        known = self._known(context)
        pairs: list[tuple[str, str]] = []  # (label, source leaf)
        for skill in skills:
            sources, keep = source_skills(skill, known)
            pairs += [(skill if keep else leaf, leaf) for leaf in sources]
        if not pairs:
            return "(none)"
        lines: list[str] = []
        shown: set[str] = set()
        for j in range(max(self.format_examples, len(skills) if labelled else 0)):
            label, leaf = pairs[j % len(pairs)]
            for problem in sampler.sample(leaf, 4, context.rng):
                key = normalize_prompt(problem.prompt)
                if key not in context.exclude and key not in shown:
                    shown.add(key)
                    self._shown.add(key)
                    lines.append(example_line(problem, label if labelled else None))
                    break
        return "\n".join(lines) or "(none)"

    # -- checking replies ----------------------------------------------------
    def _label(self, raw: str, context: GenerationContext) -> str | None:
        """A text plan example's skill: one of ``context.skills``, by path or unique tail."""
        skills = list(context.skills)
        name = raw.strip().lower()
        exact = {s.lower(): s for s in skills}
        if name in exact:
            return exact[name]
        tails = [s for s in skills if s.rsplit("/", 1)[-1].lower() == name]
        return tails[0] if len(tails) == 1 else None

    def _keep(
        self,
        item: Any,
        job: _Job,
        context: GenerationContext,
        seen: set[str],
        source: Provenance,
        rejected: Counter[str],
    ) -> Example | None:
        """The example for one generated item, or ``None`` with its reason counted."""
        prompt, answer = item.prompt.strip(), item.answer.strip()
        if self.caps.indented_answers:
            # A code body's first line is indented like the rest; stripping it would
            # train the student on a body whose first statement sits at column 0.
            answer = item.answer.rstrip().lstrip("\r\n")
        if not prompt or not answer.strip():
            rejected["empty_example"] += 1
            return None
        skill = job.skill if job.skill is not None else self._label(item.skill, context)
        if skill is None:
            rejected["unknown_skill"] += 1
            return None
        if self.caps.checker is not None:
            verdict = self.caps.checker.check(prompt, answer)
            if verdict is None:
                rejected["unparseable_prompt"] += 1
                return None
            if not verdict:
                rejected["wrong_answer"] += 1
                return None
        if self.caps.classifier is not None:
            family = self.caps.classifier.skill_of(prompt)
            if family is not None and not self._same_skill(family, skill):
                rejected["wrong_skill"] += 1
                return None
        key = normalize_prompt(prompt)
        if key in context.exclude:
            rejected["excluded"] += 1
            return None
        if key in self._shown:
            rejected["copied_example"] += 1
            return None
        if key in seen:
            rejected["duplicate"] += 1
            return None
        try:
            example = Example(prompt=prompt, completion=answer, skill=skill, source=source)
        except ValidationError:
            rejected["invalid_example"] += 1
            return None
        seen.add(key)
        return example

    def _checks_answers(self) -> bool:
        """Does anything check that a kept example's answer is right?"""
        caps = self.caps
        return caps.checker is not None or self.cross_check or caps.verifies_answers

    def _verify(
        self, examples: list[Example], items: list[Any], rejected: Counter[str]
    ) -> list[Example]:
        """The examples the task's batched ``verify`` keeps; its reasons counted."""
        verifier = self.caps.verifier
        if not examples or verifier is None:
            return examples
        candidates = [
            {
                "prompt": ex.prompt,
                "answer": ex.completion,
                **{name: str(getattr(item, name, "")).strip() for name, _ in self.extra_fields},
            }
            for ex, item in zip(examples, items, strict=True)
        ]
        verdicts = list(verifier.verify(candidates))
        if len(verdicts) != len(examples):
            raise RuntimeError(
                f"{type(self.task).__name__}.verify returned {len(verdicts)} verdicts for "
                f"{len(examples)} candidates"
            )
        kept: list[Example] = []
        for example, verdict in zip(examples, verdicts, strict=True):
            if verdict is None:
                kept.append(example)
            else:
                rejected[str(verdict)] += 1
        return kept

    def _cross_check(
        self,
        examples: list[Example],
        base: int,
        context: GenerationContext,
        rejected: Counter[str],
    ) -> list[Example]:
        """Keep the examples a second, independent solution by the LLM agrees with.

        One request per example, all sent together; a request's seed comes from
        the example's own request seed and its prompt, so reruns hit the cache.
        """
        if not self.cross_check or not examples:
            return examples
        system = (
            "Solve the problem. Show your reasoning, then give the final answer.\n"
            f"Format: {format_text(self.caps, None)}"
        )
        round_index = int(context.extra.get("round", 0))
        requests = [
            LLMRequest(
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": ex.prompt},
                ],
                sampling=Sampling(
                    temperature=self.cross_check_temperature,
                    max_tokens=self.cross_check_max_tokens,
                    seed=self._seed(context.step, round_index, base, 1_000_000 + i),
                ),
            )
            for i, ex in enumerate(examples)
        ]
        agree = self.caps.require("agreement", "cross_check").answers_agree
        kept: list[Example] = []
        for example, reply in zip(examples, self.client.complete(requests), strict=True):
            if not reply.ok or not reply.text:
                rejected["cross_check_failed"] += 1
            elif agree(example.completion, reply.text):
                kept.append(example)
            else:
                rejected["disagreement"] += 1
        return kept

    def _same_skill(self, family: str, label: str) -> bool:
        """Does a prompt of task skill ``family`` fit the label ``label``?

        Yes when they are the same skill or one is under the other (``add``
        covers ``add/carry``; an invented ``add/carry/three_carries`` is under
        ``add/carry``). A label the task's tree does not know (invented by a
        SkillTree teacher) only needs the same top-level skill, since what the
        new subskill means is the teacher's call (``add/carry/three_carries``
        may well be 3-digit additions, ``add/carry_3d`` to the task).
        """
        if related(family, label):
            return True
        if label in self.task.skills:
            return False
        return family.split("/", 1)[0] == label.split("/", 1)[0]
