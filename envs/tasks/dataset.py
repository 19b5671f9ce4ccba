"""One base for tasks whose problems are a fixed pool of rows (GSM8K, MATH, HumanEval).

Such a task cannot make fresh problems, so everything it offers comes from
splitting the rows it was given: an evaluation set the student is tested on
(``test``), a validation set the teacher sees every step (``val``) and the
rest, a train pool that ``sample`` draws from to show a generator what the
task's problems look like. Getting the split right is the whole job: a val
item that is also a test item, or a train item that is an evaluation item,
lets a teacher score by leaking evaluation data. So the split rules live here,
once, and the per-dataset subclasses only say how to read a row and how to
compare answers.

Splits (``split_seed`` fixes them; the episode seed does not move them, so
teachers compared over seeds are scored on the same problems):

- two sources (a train and a test file, or the hub's train and test splits):
  ``test`` is the test source, subsampled to ``test_size`` when given; train
  rows whose normalised prompt (:func:`teachgym.types.normalize_prompt`)
  equals any test row's prompt are dropped (the whole test source, not just
  the subsample); ``val`` is ``val_size`` rows drawn from what is left; the
  rest, minus any row whose prompt repeats a val prompt, is the train pool.
- one source (a single file, HumanEval): rows with a repeated normalised
  prompt are dropped (the first is kept), then ``test_size`` rows are drawn
  for ``test``, ``val_size`` more for ``val`` and the rest is the train pool.
  ``test_size`` is required here (there is no test source to default to).

Problem ids are ``"<name>/<source>/<key>"``, where source is ``train``,
``test`` or ``pool`` (the single source) and key is the row's 0-based index in
its source unless the subclass names rows itself (:meth:`DatasetTask.row_key`).
So an id says where the row came from and stays the same whatever the sizes
and seed.

Skills (the ``skills`` argument):

- ``"gold"``: each row's own label (a subclass that reads one from its rows
  sets ``has_gold_skills``); the default for such a task.
- ``"none"``: one skill, :data:`SINGLE_SKILL` (``all``); the default otherwise.
- ``"discovered"``: an LLM names the skills from the val and test problems
  plus ``discovery_train_items`` train-pool rows (default 64, so ``sample``
  has training items for most skills). Needs ``llm``, a :class:`SkillLabeller`
  (the assembly wraps the config's ``llm`` spec in
  :class:`teachgym.agents.skill_discovery.SkillDiscoverer`);
  ``discovery`` takes ``max_skills`` (default 8) and ``cache_dir`` (default
  ``$TEACHGYM_CACHE/skills``, else ``~/.cache/teachgym/skills``; ``null``:
  no cache, every build asks the LLM). The cache matters more than it looks:
  with ``backend: ray`` the task is built in every worker, and each build
  after the first must find the skills on disk. An evaluation problem the LLM leaves
  unlabelled gets :data:`OTHER_SKILL` (``other``).
- a mapping ``{problem_id: skill}``: labels you made; every val and test
  problem must be in it, train-pool rows may be.

Labels that are not valid skill names (``"Counting & Probability"``) are
turned into one with :func:`slugify_skill` (``counting_and_probability``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import Field

from teachgym.envs.skills import SkillTree
from teachgym.envs.tasks.dataset_split import Item, Row, find_sources, read_jsonl, split_items
from teachgym.options import Options, takes
from teachgym.runtime import cache_root
from teachgym.types import Problem

__all__ = [
    "OTHER_SKILL",
    "SINGLE_SKILL",
    "DatasetTask",
    "Row",
    "default_discovery_cache",
    "find_sources",
    "read_jsonl",
    "slugify_skill",
]

#: The one skill of ``skills="none"``.
SINGLE_SKILL = "all"
#: The skill of an evaluation problem that skill discovery left unlabelled.
OTHER_SKILL = "other"

_SKILL_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def slugify_skill(label: str) -> str:
    """A skill-name segment for a free-text label: lower case, ``&`` -> ``and``,
    anything else that is not a letter, digit, ``.`` or ``-`` -> ``_``.

    Labels come from datasets and LLMs, and a skill name has to be a path
    segment (:data:`teachgym.types._SKILL_PATTERN`); a slash inside a label
    would silently make it a child skill, so it is replaced too.

    >>> slugify_skill("Counting & Probability"), slugify_skill("Level 3"), slugify_skill("a/b")
    ('counting_and_probability', 'level_3', 'a_b')
    """
    text = label.strip().lower().replace("&", " and ")
    slug = re.sub(r"[^a-z0-9.-]+", "_", text).strip("_")
    if not slug:
        raise ValueError(f"cannot make a skill name from label {label!r}")
    return slug


def default_discovery_cache() -> str:
    """``$TEACHGYM_CACHE/skills``, or ``~/.cache/teachgym/skills`` without it."""
    return str(cache_root() / "skills")


@runtime_checkable
class SkillLabeller(Protocol):
    """Names a skill for every problem (an LLM does it in skill discovery).

    ``label`` returns ``{problem id: skill name}`` with at most ``max_skills``
    distinct names; a problem it leaves out is the task's ``other`` skill. The
    task passes its ``dataset`` name and ``split_seed`` (for caching and for
    seeded requests) and the ``cache_dir`` from ``discovery``.
    """

    def label(
        self,
        problems: Sequence[Problem],
        *,
        max_skills: int,
        dataset: str,
        cache_dir: str | None,
        seed: int,
    ) -> Mapping[str, str]: ...


class DiscoveryOptions(Options):
    """The ``task_kwargs.discovery`` block: how skills are discovered (``skills: discovered``)."""

    max_skills: int = Field(default=8, ge=1, description="skills the LLM may name at most")
    cache_dir: str | None = Field(
        default_factory=default_discovery_cache,
        description="where discovered labels are kept ($TEACHGYM_CACHE/...); null: no cache",
    )


class DatasetOptions(Options):
    """What a dataset task (``gsm8k``, ``math``, ``code``) takes from ``task_kwargs``; the
    :class:`DatasetTask` docstring explains each at length."""

    path: str | Path | None = Field(
        default=None, description="a .jsonl(.gz) file or a directory; null: the hub dataset"
    )
    val_size: int | None = Field(
        default=None, ge=1, description="val problems; null: the task's default"
    )
    test_size: Annotated[int, Field(ge=1)] | Literal["default"] | None = Field(
        default="default", description="test problems; null: the whole test source"
    )
    split_seed: int = Field(default=1234, ge=0, description="fixes which rows land where")
    skills: Literal["gold", "none", "discovered"] | dict[str, str] | None = Field(
        default=None,
        description="gold, none, discovered, or {problem_id: skill}; null: gold if the "
        "task has gold labels, else none",
    )
    llm: Any = Field(
        default=None,
        description="for skills: discovered, the labeller (the assembly makes it from the "
        "config's llm spec)",
    )
    discovery: DiscoveryOptions | None = Field(
        default=None, strict=False, description="max_skills and cache_dir for discovery"
    )
    discovery_train_items: int = Field(
        default=64, ge=0, description="train rows labelled by discovery as well"
    )
    hub_name: str | None = Field(default=None, description="another hub dataset")
    hub_config: str | None = Field(default=None, description="the hub dataset's config")


class DatasetTask:
    """A task over a fixed pool of problems; subclasses say how to read and score rows.

    Args:
        path: a local ``.jsonl``/``.jsonl.gz`` file or a directory (see
            :func:`find_sources`); ``None`` loads :attr:`hub_name` with
            ``datasets.load_dataset`` (needs the ``datasets`` package).
        val_size: val problems, carved from train (or from the single source).
        test_size: test problems; ``None`` keeps the whole test source
            (not allowed with a single source); ``"default"`` is the
            subclass's :attr:`default_test_size`.
        split_seed: fixes which rows land in which split.
        skills: ``"gold"``, ``"none"``, ``"discovered"`` or a mapping
            ``{problem_id: skill}`` (module docstring); ``None`` picks
            ``"gold"`` when the task has gold labels, else ``"none"``.
        llm: for ``skills="discovered"``, the :class:`SkillLabeller` that names the
            skills (the assembly makes one from the config's ``llm`` spec:
            :class:`~teachgym.agents.skill_discovery.SkillDiscoverer`); unused otherwise.
        discovery: ``{"max_skills": 8, "cache_dir": ...}`` for discovery (see above).
        discovery_train_items: train-pool rows labelled by discovery as well.
        hub_name, hub_config: override the subclass's hub dataset.

    Subclasses set :attr:`name`, :attr:`hub_name` (and config/split names),
    :attr:`has_gold_skills`, and implement :meth:`parse_row`,
    :meth:`final_answer`, :meth:`finals_equal` and :meth:`format_description`;
    a task whose outputs are not scored by a final answer (code) overrides
    :meth:`score_batch` and :meth:`verify` instead.
    """

    name: str = "dataset"
    hub_name: str | None = None
    hub_config: str | None = None
    hub_train_split: str | None = "train"
    hub_test_split: str | None = "test"
    has_gold_skills: bool = False
    default_val_size: int = 256
    default_test_size: int | None = None

    @takes(DatasetOptions)
    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        val_size: int | None,
        test_size: int | Literal["default"] | None,
        split_seed: int,
        skills: str | Mapping[str, str] | None,
        llm: Any,
        discovery: DiscoveryOptions | None,
        discovery_train_items: int,
        hub_name: str | None,
        hub_config: str | None,
    ) -> None:
        val_size = self.default_val_size if val_size is None else val_size
        test_size = self.default_test_size if test_size == "default" else test_size
        if skills is None:
            skills = "gold" if self.has_gold_skills else "none"
        if skills == "gold" and not self.has_gold_skills:
            raise ValueError(
                f"task {self.name!r} has no gold skill labels; use skills='none' or 'discovered'"
            )
        if hub_name is not None:
            self.hub_name = hub_name
        if hub_config is not None:
            self.hub_config = hub_config
        self.split_seed = split_seed
        self.skill_mode = skills if isinstance(skills, str) else "mapping"

        sources = self._load(path)
        val, test, train = split_items(
            sources, val_size, test_size, np.random.default_rng(split_seed), task=self.name
        )
        labels = self._labels(skills, val, test, train, llm, discovery, discovery_train_items)

        self._splits: dict[str, list[Problem]] = {
            "val": [self._problem(it, labels[it.id]) for it in val],
            "test": [self._problem(it, labels[it.id]) for it in test],
        }
        self._train = train
        self._train_labels = {it.id: labels[it.id] for it in train if it.id in labels}
        leaves = sorted({p.skill for ps in self._splits.values() for p in ps})
        self._skills = SkillTree(leaves)
        self._leaves = self._skills.leaves
        self._by_skill: dict[str, list[Item]] = {}
        for it in train:
            skill = self._train_labels.get(it.id)
            if skill is not None:
                self._by_skill.setdefault(skill, []).append(it)

    # -- subclass hooks -------------------------------------------------------

    def parse_row(self, row: Mapping[str, Any]) -> Row | None:
        """How this dataset's rows read: prompt, gold solution, metadata, gold skill.

        ``None`` skips a row that cannot be scored (a MATH solution without a
        boxed answer); skipped rows are counted in :attr:`skipped_rows`. A row
        without the fields at all should raise (KeyError/TypeError/ValueError):
        that is the wrong file, not a bad row.
        """
        raise NotImplementedError

    def row_key(self, row: Mapping[str, Any], index: int) -> str:
        """The last part of a row's problem id; the row's index in its source by default."""
        return str(index)

    def final_answer(self, text: str) -> str | None:
        """The final answer written in ``text`` (a solution or a model's output), or ``None``."""
        raise NotImplementedError

    def written_final_answer(self, text: str) -> str | None:
        """The final answer only where the task's format puts it (``#### n``, ``\\boxed{}``).

        :meth:`final_answer` is lenient (it scores a model that ignores the
        format); this one is what :meth:`verify` asks of a training example,
        since a student trained on it learns to write answers that way. The
        default is :meth:`final_answer`.
        """
        return self.final_answer(text)

    def finals_equal(self, gold: str, output: str) -> bool:
        """Do two final answers (as :meth:`final_answer` returns them) say the same?"""
        raise NotImplementedError

    def format_description(self, skill: str) -> str:
        """How this task writes a prompt and its answer, in words (never an evaluation item)."""
        raise NotImplementedError

    # -- the Task protocol ----------------------------------------------------

    @property
    def skills(self) -> SkillTree:
        return self._skills

    @property
    def leaf_skills(self) -> list[str]:
        return list(self._leaves)

    def problems(self, split: str) -> list[Problem]:
        if split not in self._splits:
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        return list(self._splits[split])

    @property
    def max_answer_length(self) -> int:
        """The longest gold answer of val and test, in characters: a bound on the tokens a
        student must decode to write one (a token is at least a character), so a student
        without its own ``max_new_tokens`` is never cut short. Slow on a CPU for long
        solutions; a CPU config sets ``student_kwargs.max_new_tokens`` lower."""
        return max(len(p.answer) for split in self._splits.values() for p in split)

    @property
    def train_size(self) -> int:
        """Rows in the train pool (what :meth:`sample` draws from)."""
        return len(self._train)

    def answers_agree(self, gold_text: str, output_text: str) -> bool:
        """Do two texts end with the same final answer? ``False`` if either has none.

        The generic comparison of two solutions (a gold one and a model's, or
        two samples of a generator), so callers need not know how this
        dataset writes answers.
        """
        gold = self.final_answer(gold_text)
        out = self.final_answer(output_text)
        return gold is not None and out is not None and self.finals_equal(gold, out)

    def score_batch(self, problems: Sequence[Problem], outputs: Sequence[str]) -> list[bool]:
        """Is each output's final answer the problem's? Uses the stored gold final answer
        (``metadata["final_answer"]``) so gold solutions are not re-parsed per call."""
        if len(problems) != len(outputs):
            raise ValueError(f"got {len(problems)} problems but {len(outputs)} outputs")
        scores: list[bool] = []
        for problem, output in zip(problems, outputs, strict=True):
            gold = problem.metadata.get("final_answer")
            if gold is None:
                gold = self.final_answer(problem.answer)
            out = self.final_answer(output)
            scores.append(gold is not None and out is not None and self.finals_equal(gold, out))
        return scores

    def score(self, problem: Problem, output: str) -> bool:
        return self.score_batch([problem], [output])[0]

    def verify(self, candidates: Sequence[Mapping[str, str]]) -> list[str | None]:
        """Is each candidate ``{"prompt", "answer"}`` well-formed? ``None`` if so, else why.

        Reasons: ``"empty_prompt"``, ``"no_final_answer"`` (the answer does
        not write a final answer where the task's format puts it,
        :meth:`written_final_answer`, so it would teach another format and
        could not be checked against a second sample). Whether the answer is *right*
        cannot be known for a dataset task; the generator checks agreement
        with a second sample via :meth:`answers_agree`.
        """
        out: list[str | None] = []
        for c in candidates:
            if not str(c.get("prompt", "")).strip():
                out.append("empty_prompt")
            elif self.written_final_answer(str(c.get("answer", ""))) is None:
                out.append("no_final_answer")
            else:
                out.append(None)
        return out

    def sample(self, skill: str, n: int, rng: np.random.Generator) -> list[Problem]:
        """``n`` train-pool problems of ``skill`` (never a val or test item).

        Drawn without replacement while the skill has enough rows, then with
        replacement. A skill with no train rows (a discovered skill no
        labelled train row has, or ``skills="none"``'s single skill when
        train rows have labels of their own) draws from the whole train pool:
        those problems carry the asked skill and ``metadata["skill_fallback"]
        = True``, since the rows show the task's format, not the skill.
        """
        if skill not in self._leaves:
            raise ValueError(f"skill {skill!r} is not a leaf of this task: {self._leaves}")
        if n <= 0:
            return []
        if not self._train:
            raise ValueError(f"task {self.name!r} has no train pool to sample from")
        pool = self._by_skill.get(skill)
        fallback = not pool
        if fallback:
            pool = self._train
        assert pool is not None
        idx = rng.choice(len(pool), size=n, replace=n > len(pool))
        return [self._problem(pool[int(i)], skill, fallback=fallback) for i in idx]

    # -- loading and splitting ------------------------------------------------

    def _problem(self, item: Item, skill: str, fallback: bool = False) -> Problem:
        meta = dict(item.row.metadata)
        if fallback:
            meta["skill_fallback"] = True
        # model_construct: skill names were checked when labels were made, and the
        # rest comes from the dataset; re-validating thousands per step is pure cost.
        return Problem.model_construct(
            id=item.id, skill=skill, prompt=item.row.prompt, answer=item.row.answer, metadata=meta
        )

    def _load(self, path: str | os.PathLike[str] | None) -> dict[str, list[Item]]:
        """``{source: items}`` with sources ``train``+``test`` or ``pool``."""
        if path is not None:
            files = find_sources(path)
            raw = {src: read_jsonl(f) for src, f in files.items()}
            where = {src: str(f) for src, f in files.items()}
        else:
            raw = self._load_hub()
            where = {src: f"{self.hub_name}[{src}]" for src in raw}
        out: dict[str, list[Item]] = {}
        #: Rows per source that :meth:`parse_row` skipped (no scorable answer).
        self.skipped_rows: dict[str, int] = {}
        for src, rows in raw.items():
            items = []
            self.skipped_rows[src] = 0
            for i, r in enumerate(rows):
                try:
                    row = self.parse_row(r)
                except (KeyError, TypeError, ValueError) as e:
                    raise ValueError(
                        f"{where[src]}: row {i} is not a {self.name} row ({type(e).__name__}: {e})"
                    ) from None
                if row is None:
                    self.skipped_rows[src] += 1
                    continue
                items.append(Item(f"{self.name}/{src}/{self.row_key(r, i)}", row))
            if not items:
                raise ValueError(f"{where[src]}: no rows")
            out[src] = items
        ids = [it.id for items in out.values() for it in items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"task {self.name!r}: problem ids are not unique")
        return out

    def _load_hub(self) -> dict[str, list[dict[str, Any]]]:
        if not self.hub_name:
            raise ValueError(f"task {self.name!r} has no hub dataset; give a local path")
        try:
            import datasets  # type: ignore[import-not-found]
        except ImportError:
            raise ValueError(
                f"loading {self.name!r} from the hub ({self.hub_name}) needs the 'datasets' "
                "package (pip install datasets), or give a local path to JSONL files"
            ) from None
        splits = {"train": self.hub_train_split, "test": self.hub_test_split}
        names = {src: s for src, s in splits.items() if s is not None}
        if len(names) == 1:
            names = {"pool": next(iter(names.values()))}
        return {
            src: [dict(r) for r in datasets.load_dataset(self.hub_name, self.hub_config, split=s)]
            for src, s in names.items()
        }

    # -- skills ---------------------------------------------------------------

    @staticmethod
    def _skill_name(label: str) -> str:
        """``label`` if it is a valid skill path, else each segment slugified."""
        if _SKILL_RE.match(label):
            return label
        name = "/".join(slugify_skill(part) for part in label.split("/") if part.strip())
        if not name:
            raise ValueError(f"cannot make a skill name from label {label!r}")
        return name

    def _labels(
        self,
        skills: str | Mapping[str, str],
        val: list[Item],
        test: list[Item],
        train: list[Item],
        llm: Any,
        discovery: Mapping[str, Any] | None,
        discovery_train_items: int,
    ) -> dict[str, str]:
        """``{problem_id: skill}`` for every val and test item (train items where known)."""
        if skills == "none":
            return {it.id: SINGLE_SKILL for it in (*val, *test, *train)}
        if skills == "gold":
            labels: dict[str, str] = {}
            for it in (*val, *test, *train):
                if it.row.gold_skill is not None:
                    labels[it.id] = self._skill_name(it.row.gold_skill)
            missing = [it.id for it in (*val, *test) if it.id not in labels]
            if missing:
                raise ValueError(f"{len(missing)} problems have no gold skill, e.g. {missing[0]}")
            return labels
        if skills == "discovered":
            return self._discover(val, test, train, llm, discovery, discovery_train_items)
        assert isinstance(skills, Mapping)
        missing = [it.id for it in (*val, *test) if it.id not in skills]
        if missing:
            raise ValueError(
                f"the skills mapping lacks {len(missing)} val/test problems, e.g. {missing[0]!r}"
            )
        known = {it.id for it in (*val, *test, *train)}
        return {pid: self._skill_name(str(s)) for pid, s in skills.items() if pid in known}

    def _discover(
        self,
        val: list[Item],
        test: list[Item],
        train: list[Item],
        llm: Any,
        discovery: DiscoveryOptions | None,
        discovery_train_items: int,
    ) -> dict[str, str]:
        if llm is None:
            raise ValueError("skills='discovered' needs an 'llm' spec to name the skills")
        if not isinstance(llm, SkillLabeller):
            raise ValueError(
                "skills='discovered' labels problems through the assembly, which turns the "
                "config's llm spec into a labeller (teachgym.agents.skill_discovery."
                "SkillDiscoverer); build the task with teachgym.assembly.build_task, or pass "
                f"llm=SkillDiscoverer(client) (got {type(llm).__name__})"
            )
        opts = discovery if discovery is not None else DiscoveryOptions()
        max_skills = opts.max_skills
        rng = np.random.default_rng([self.split_seed, 1])
        k = min(discovery_train_items, len(train))
        extra = [train[i] for i in sorted(rng.choice(len(train), size=k, replace=False).tolist())]
        items: Iterable[Item] = (*val, *test, *extra)
        found = llm.label(
            [self._problem(it, SINGLE_SKILL) for it in items],
            max_skills=max_skills,
            dataset=self.name,
            cache_dir=opts.cache_dir,
            seed=self.split_seed,
        )
        labels = {pid: self._skill_name(str(s)) for pid, s in found.items()}
        for it in (*val, *test):
            labels.setdefault(it.id, OTHER_SKILL)
        return labels
