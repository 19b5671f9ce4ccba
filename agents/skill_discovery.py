"""Skill discovery for unlabelled datasets: an LLM names, groups and assigns the skills.

A dataset such as GSM8K comes without skill labels, yet the SkillList and SkillTree envs
need its problems sorted by skill. DataEnvGym asks an LLM in three stages, and so does
:func:`discover_skills`:

1. *name*: the LLM names one short skill for each problem (``batch_size`` problems a
   request, the reply a list of ``{index, skill}``);
2. *group*: the LLM groups the distinct names into at most ``max_skills`` categories
   (``{categories: [{name, skills}]}``), and each problem goes to the category of its name;
3. *label*: a problem left without a category (its name is in no category, its request
   failed, the reply skipped it or gave a name no category has) is asked again, with a
   prompt that lists the categories and a reply schema whose category is an enum of their
   names (so a grammar-constrained model cannot invent one), for up to ``max_rounds`` rounds.

An LLM is unreliable, so nothing it does raises: whatever is still unassigned after the
last round goes to the **fallback category**, the category with the most problems (the
first one on a tie), or ``other`` when there is no category at all (every grouping request
failed and no problem was named); the count is ``stats["fallback"]``. Other documented
fallbacks: a grouping that fails or yields no valid category is replaced by the most common
stage-1 names, one category each (``stats["grouping"] == "names"``).

Category names are slugified (lowercase ASCII letters, digits and ``_``) so that each is a
valid skill name; two that slugify alike are merged. A grouping with more than
``max_skills`` categories (an unconstrained server ignoring the schema's ``maxItems``) is
**cut**: the ``max_skills`` categories that hold the most problems are kept (reply order on
a tie) and the problems of the others are re-asked in stage 3, i.e. merged into a kept
category by the LLM (``stats["categories_cut"]``). Categories that end with no problem are
not returned.

Deterministic: every request's sampling seed is derived (sha256, never ``hash()``) from
``seed``, the stage, the round and the batch index, and the temperature is 0. The result is
cached as one JSON file under ``cache_dir``, keyed by the dataset, the model, the problems'
ids and prompts, ``max_skills``, ``batch_size``, ``max_rounds``, ``seed`` and the prompt
file's text; a second call with the same key sends no request. A result in which some
request failed is not cached (the next call tries again; the client's own reply cache, if
it has one, keeps the requests that succeeded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, create_model

from teachgym.agents.llm import LLMClient, LLMReply, LLMRequest, Sampling
from teachgym.agents.llm.prompt_file import load_prompt_file
from teachgym.agents.skill_discovery_cache import CACHE_VERSION as CACHE_VERSION
from teachgym.agents.skill_discovery_cache import (
    SkillDiscovery,
    discovery_key,
    read_cache,
    save_result,
)
from teachgym.types import Problem

__all__ = [
    "DEFAULT_PROMPT_FILE",
    "FALLBACK_CATEGORY",
    "SkillDiscovery",
    "discover_skills",
    "discovery_key",
    "load_discovery_prompts",
    "run_skill_discovery",
    "slugify",
]

log = logging.getLogger(__name__)

#: The prompt used unless ``prompt_file`` names another (same sections, same placeholders).
DEFAULT_PROMPT_FILE = Path(__file__).resolve().parent / "prompts" / "discovery.txt"
#: The category of the unassigned problems when there is no category to put them in.
FALLBACK_CATEGORY = "other"
#: Longest skill or category name the LLM may write (the schema's ``maxLength``).
MAX_NAME_CHARS = 80
#: Longest category name after slugifying (a longer one is cut).
MAX_CATEGORY_CHARS = 48
#: A problem's prompt is cut to this many characters in a request.
MAX_SHOWN_CHARS = 1200
#: The grouping request shows at most this many distinct names, the most common first;
#: problems whose name is not shown are labelled in stage 3 instead.
MAX_GROUP_NAMES = 200
#: Member skill names shown per category in a labelling prompt.
MEMBERS_SHOWN = 6

_SECTIONS = ("system", "name", "group", "label")
_PLACEHOLDERS = ("dataset", "n", "problems", "skills", "max_skills", "categories")

_Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]


class SkillDiscoverer:
    """A task's :class:`~teachgym.envs.tasks.dataset.SkillLabeller` on an LLM client:
    :func:`discover_skills` with the client fixed (the assembly passes it the
    process's shared client, so discovery, the teacher and the generator use one)."""

    def __init__(self, client: LLMClient, **options: Any) -> None:
        self.client = client
        self.options = dict(options)

    def label(
        self,
        problems: Sequence[Problem],
        *,
        max_skills: int,
        dataset: str,
        cache_dir: str | Path | None,
        seed: int,
    ) -> dict[str, str]:
        return discover_skills(
            problems,
            self.client,
            max_skills=max_skills,
            dataset=dataset,
            cache_dir=cache_dir,
            seed=seed,
            **self.options,
        )


def discover_skills(
    problems: Sequence[Problem],
    client: LLMClient,
    *,
    max_skills: int = 8,
    dataset: str,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 20,
    max_rounds: int = 3,
    prompt_file: str | Path | None = None,
) -> dict[str, str]:
    """Problem id -> skill name (``^[A-Za-z0-9_.-]+$``) for every problem, at most
    ``max_skills`` distinct names; see the module docstring and :func:`run_skill_discovery`,
    which returns the categories and stats too."""
    return run_skill_discovery(
        problems,
        client,
        max_skills=max_skills,
        dataset=dataset,
        cache_dir=cache_dir,
        seed=seed,
        batch_size=batch_size,
        max_rounds=max_rounds,
        prompt_file=prompt_file,
    ).mapping


def run_skill_discovery(
    problems: Sequence[Problem],
    client: LLMClient,
    *,
    max_skills: int = 8,
    dataset: str,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 20,
    max_rounds: int = 3,
    prompt_file: str | Path | None = None,
) -> SkillDiscovery:
    """The three-stage discovery, served from ``cache_dir`` when it has this key.

    Args:
        problems: the problems to label (their ``skill`` is ignored); ids must be unique.
        client: the LLM client; its ``backend.model`` is part of the cache key.
        max_skills: the most categories (>= 1).
        dataset: the dataset's name, shown in the prompts and part of the cache key.
        cache_dir: where the result file goes; ``None``: no cache.
        seed: mixed into every request's sampling seed.
        batch_size: problems per naming or labelling request (>= 1).
        max_rounds: labelling rounds for problems left over (>= 0; 0: straight to the
            fallback category).
        prompt_file: a prompt file like ``agents/prompts/discovery.txt``.
    """
    _check_args(problems, max_skills, dataset, seed, batch_size, max_rounds)
    prompts, prompt_text = load_discovery_prompts(prompt_file or DEFAULT_PROMPT_FILE)
    model = _model_name(client)
    key = discovery_key(
        problems,
        dataset=dataset,
        model=model,
        max_skills=max_skills,
        prompt_text=prompt_text,
        seed=seed,
        batch_size=batch_size,
        max_rounds=max_rounds,
    )
    path = None
    if cache_dir is not None:
        name = f"skills-{slugify(dataset) or 'dataset'}-{key[:16]}.json"
        path = Path(cache_dir).expanduser() / name
        hit = read_cache(path, key, problems)
        if hit is not None:
            log.info("skill discovery for %s: cache hit %s", dataset, path)
            return hit
    result = _Discovery(
        problems, client, prompts, dataset, max_skills, seed, batch_size, max_rounds
    ).run()
    save_result(result, path, key, dataset=dataset, model=model)
    _log_result(dataset, len(problems), result)
    return result


def _log_result(dataset: str, n_problems: int, result: SkillDiscovery) -> None:
    """One INFO line: what a discovery that ran (not a cache hit) did and what it cost."""
    log.info(
        "skill discovery for %s: %d problems -> %d categories, %d requests, %d failed, "
        "%d to the fallback category %s",
        dataset,
        n_problems,
        len(result.categories),
        result.stats["requests"],
        sum(result.stats["failed"].values()),
        result.stats["fallback"],
        result.stats["fallback_category"],
    )


# -- names and prompts ---------------------------------------------------------------
def slugify(name: str, max_chars: int = MAX_CATEGORY_CHARS) -> str:
    """``name`` as a valid skill name: ASCII (accents dropped), lowercase, every run of other
    characters one ``_``, no ``_`` at either end, at most ``max_chars``; ``""`` when nothing
    is left (such a name is invalid and ignored)."""
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return text[:max_chars].rstrip("_")


def load_discovery_prompts(path: str | Path) -> tuple[dict[str, string.Template], str]:
    """The four templates of a prompt file and the file's text (part of the cache key).

    Checked before any request (every section present, every placeholder known), so a
    typo in a custom prompt fails before anything is paid for; errors name the file.
    """
    loaded = load_prompt_file(path, placeholders=_PLACEHOLDERS, sections=_SECTIONS)
    return dict(loaded.templates), loaded.text


def _model_name(client: Any) -> str | None:
    model = getattr(getattr(client, "backend", None), "model", None)
    return str(model) if model else None


def _check_args(
    problems: Sequence[Problem],
    max_skills: int,
    dataset: str,
    seed: int,
    batch_size: int,
    max_rounds: int,
) -> None:
    for name, value, low in (
        ("max_skills", max_skills, 1),
        ("batch_size", batch_size, 1),
        ("max_rounds", max_rounds, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not isinstance(dataset, str) or not dataset.strip():
        raise ValueError(f"dataset must be a non-empty string (the cache key), got {dataset!r}")
    seen: set[str] = set()
    for i, problem in enumerate(problems):
        if not isinstance(getattr(problem, "id", None), str) or not isinstance(
            getattr(problem, "prompt", None), str
        ):
            raise ValueError(f"problems[{i}]: expected a Problem (id and prompt), got {problem!r}")
        if problem.id in seen:
            raise ValueError(f"problems[{i}]: duplicate id {problem.id!r}; ids must be unique")
        seen.add(problem.id)


# -- reply models (bounded: the client refuses unbounded schemas) ----------------------
# Counts and enums are in the schema only (json_schema_extra), not enforced when parsing:
# a grammar-constrained model obeys them, and the reply of an unconstrained server that
# does not (an extra item, an index out of range, an invented category) loses only the
# offending items, which are counted, instead of failing (and resending) a whole batch.
def _index(n: int) -> Any:
    return (int, Field(json_schema_extra={"minimum": 0, "maximum": n - 1}))


@cache
def _names_model(n: int) -> type[BaseModel]:
    item = create_model(f"NamedProblem{n}", index=_index(n), skill=(_Name, ...))
    return create_model(
        f"ProblemSkills{n}", skills=(list[item], Field(json_schema_extra={"maxItems": n}))
    )


@cache
def _groups_model(max_skills: int, n_names: int) -> type[BaseModel]:
    item = create_model(
        f"SkillCategory{n_names}",
        name=(_Name, ...),
        skills=(list[_Name], Field(json_schema_extra={"maxItems": n_names})),
    )
    return create_model(
        f"SkillCategories{max_skills}x{n_names}",
        categories=(list[item], Field(json_schema_extra={"maxItems": max_skills})),
    )


@cache
def _labels_model(n: int, names: tuple[str, ...]) -> type[BaseModel]:
    tag = hashlib.sha256("\n".join(names).encode()).hexdigest()[:10]
    category = (str, Field(max_length=MAX_NAME_CHARS, json_schema_extra={"enum": list(names)}))
    item = create_model(f"LabelledProblem{n}_{tag}", index=_index(n), category=category)
    return create_model(
        f"ProblemCategories{n}_{tag}", labels=(list[item], Field(json_schema_extra={"maxItems": n}))
    )


# -- the three stages ----------------------------------------------------------------
class _Discovery:
    """One uncached discovery: the stages share the problems, the client and the counts."""

    def __init__(
        self,
        problems: Sequence[Problem],
        client: LLMClient,
        prompts: dict[str, string.Template],
        dataset: str,
        max_skills: int,
        seed: int,
        batch_size: int,
        max_rounds: int,
    ) -> None:
        self.problems = list(problems)
        self.client = client
        self.prompts = prompts
        self.dataset = dataset
        self.max_skills = max_skills
        self.seed = seed
        self.batch_size = batch_size
        self.max_rounds = max_rounds
        self.requests = 0
        self.cached = 0
        self.failed: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()

    def run(self) -> SkillDiscovery:
        n = len(self.problems)
        # Minutes of requests on a large dataset: say what is happening (the CLI shows INFO).
        log.info(
            "skill discovery for %s: naming the skill of %d problems (%d requests)",
            self.dataset,
            n,
            -(-n // self.batch_size),
        )
        names = self._name()  # position -> slug of its skill name
        display: dict[str, str] = {}  # slug -> first spelling seen
        for pos in sorted(names):
            display.setdefault(names[pos][0], names[pos][1])
        counts = Counter(slug for slug, _ in names.values())
        order = {slug: i for i, slug in enumerate(display)}
        common = sorted(counts, key=lambda s: (-counts[s], order[s]))
        shown = common[:MAX_GROUP_NAMES]
        log.info(
            "skill discovery for %s: grouping %d names into at most %d categories",
            self.dataset,
            len(shown),
            self.max_skills,
        )
        groups, grouping, cut = self._group(shown, display, counts)
        member_of = {m: cat for cat, members in groups.items() for m in members}
        assigned = {pos: member_of[s] for pos, (s, _) in names.items() if s in member_of}
        grouped = len(assigned)
        rounds, relabelled = self._label(assigned, groups, display)
        left = [pos for pos in range(n) if pos not in assigned]
        sizes = Counter(assigned.values())
        target = None
        if left:
            target = max(groups, key=lambda c: sizes[c]) if groups else FALLBACK_CATEGORY
            for pos in left:
                assigned[pos] = target
            sizes[target] += len(left)
        categories = {
            cat: [display[m] for m in members] for cat, members in groups.items() if sizes[cat]
        }
        if target == FALLBACK_CATEGORY and target not in categories:
            categories[target] = []
        stats: dict[str, Any] = {
            "problems": n,
            "requests": self.requests,
            "cached_replies": self.cached,
            "failed": dict(sorted(self.failed.items())),
            "named": len(names),
            "distinct_names": len(counts),
            "grouping": grouping,
            "categories_cut": cut,
            "grouped": grouped,
            "rounds": rounds,
            "relabelled": relabelled,
            "fallback": len(left),
            "fallback_category": target,
            "ignored": dict(sorted(self.ignored.items())),
        }
        mapping = {self.problems[pos].id: assigned[pos] for pos in range(n)}
        return SkillDiscovery(mapping=mapping, categories=categories, stats=stats)

    # stage 1
    def _name(self) -> dict[int, tuple[str, str]]:
        """Position -> (slug, spelling) of the skill the LLM named for that problem."""
        batches = self._batches(list(range(len(self.problems))))
        requests = [
            self._request(
                "name",
                _names_model(len(b)),
                self._seed("name", 0, j),
                max_tokens=128 + 64 * len(b),
                n=len(b),
                problems=self._show(b),
            )
            for j, b in enumerate(batches)
        ]
        names: dict[int, tuple[str, str]] = {}
        for batch, reply in zip(batches, self._send(requests), strict=True):
            for index, raw in self._items(reply, "skills", "skill", len(batch)):
                spelling = " ".join(raw.split())
                slug = slugify(spelling, MAX_NAME_CHARS)
                if not slug:
                    self.ignored["bad_skill_name"] += 1
                elif batch[index] in names:
                    self.ignored["duplicate_index"] += 1
                else:
                    names[batch[index]] = (slug, spelling)
        return names

    # stage 2
    def _group(
        self, shown: list[str], display: dict[str, str], counts: Counter[str]
    ) -> tuple[dict[str, list[str]], str, int]:
        """Category -> member name slugs, how it was made (llm/names/none), how many cut."""
        if not shown:
            return {}, "none", 0
        lines = "\n".join(f"{display[s]} ({counts[s]})" for s in shown)
        request = self._request(
            "group",
            _groups_model(self.max_skills, len(shown)),
            self._seed("group", 0, 0),
            max_tokens=256 + 48 * (len(shown) + self.max_skills),
            skills=lines,
            max_skills=self.max_skills,
        )
        (reply,) = self._send([request])
        groups: dict[str, list[str]] = {}
        if reply.parsed is not None:
            wanted = set(shown)
            claimed: set[str] = set()
            for category in reply.parsed.categories:  # type: ignore[attr-defined]
                name = slugify(category.name)
                if not name:
                    self.ignored["bad_category_name"] += 1
                    continue
                members = groups.setdefault(name, [])  # alike slugs merge
                for member in category.skills:
                    slug = slugify(" ".join(member.split()), MAX_NAME_CHARS)
                    if slug not in wanted:
                        self.ignored["unknown_member"] += 1
                    elif slug in claimed:
                        self.ignored["member_twice"] += 1
                    else:
                        claimed.add(slug)
                        members.append(slug)
        if not groups:  # failed, or nothing valid: the most common names, one category each
            names: dict[str, list[str]] = {}
            for slug in shown:
                category = slugify(slug)
                if category not in names and len(names) < self.max_skills:
                    names[category] = []
                if category in names:
                    names[category].append(slug)
            return names, "names", 0
        cut = max(0, len(groups) - self.max_skills)
        if cut:  # keep those with the most problems; the others' problems are relabelled
            order = list(groups)
            size = {c: sum(counts[m] for m in groups[c]) for c in groups}
            keep = sorted(order, key=lambda c: (-size[c], order.index(c)))[: self.max_skills]
            groups = {c: groups[c] for c in order if c in keep}
        return groups, "llm", cut

    # stage 3
    def _label(
        self, assigned: dict[int, str], groups: dict[str, list[str]], display: dict[str, str]
    ) -> tuple[int, int]:
        """Ask for the category of every unassigned problem, round after round; fills
        ``assigned`` in place and returns (rounds run, problems labelled)."""
        if not groups:
            return 0, 0
        names = tuple(groups)
        listing = "\n".join(
            f"{c}: {', '.join(display[m] for m in groups[c][:MEMBERS_SHOWN]) or '(no examples)'}"
            for c in names
        )
        rounds = labelled = 0
        for r in range(self.max_rounds):
            left = [pos for pos in range(len(self.problems)) if pos not in assigned]
            if not left:
                break
            rounds += 1
            batches = self._batches(left)
            requests = [
                self._request(
                    "label",
                    _labels_model(len(b), names),
                    self._seed("label", r, j),
                    max_tokens=128 + 48 * len(b),
                    n=len(b),
                    problems=self._show(b),
                    categories=listing,
                )
                for j, b in enumerate(batches)
            ]
            for batch, reply in zip(batches, self._send(requests), strict=True):
                for index, raw in self._items(reply, "labels", "category", len(batch)):
                    category = slugify(raw)
                    if category not in groups:
                        self.ignored["unknown_category"] += 1
                    elif batch[index] in assigned:
                        self.ignored["duplicate_index"] += 1
                    else:
                        assigned[batch[index]] = category
                        labelled += 1
        return rounds, labelled

    # helpers
    def _batches(self, positions: list[int]) -> list[list[int]]:
        size = self.batch_size
        return [positions[i : i + size] for i in range(0, len(positions), size)]

    def _show(self, batch: Sequence[int]) -> str:
        lines = []
        for index, pos in enumerate(batch):
            text = self.problems[pos].prompt.strip()
            if len(text) > MAX_SHOWN_CHARS:
                text = text[: MAX_SHOWN_CHARS - 3].rstrip() + "..."
            lines.append(json.dumps({"index": index, "problem": text}, ensure_ascii=False))
        return "\n".join(lines)

    def _seed(self, stage: str, round_index: int, batch: int) -> int:
        """Stable across processes (no ``hash()``), so a rerun sends the same requests and
        hits the client's reply cache; distinct per stage, round and batch."""
        text = f"skill-discovery/{self.seed}/{stage}/{round_index}/{batch}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1

    def _request(
        self, stage: str, model: type[BaseModel], seed: int, max_tokens: int, **values: Any
    ) -> LLMRequest:
        filled = dict.fromkeys(_PLACEHOLDERS, "") | {"dataset": self.dataset} | values
        filled = {k: str(v) for k, v in filled.items()}
        return LLMRequest(
            messages=[
                {"role": "system", "content": self.prompts["system"].substitute(filled)},
                {"role": "user", "content": self.prompts[stage].substitute(filled)},
            ],
            response_model=model,
            sampling=Sampling(temperature=0.0, max_tokens=max_tokens, seed=seed),
        )

    def _send(self, requests: list[LLMRequest]) -> list[LLMReply]:
        if not requests:
            return []
        replies = self.client.complete(requests)
        self.requests += len(requests)
        for reply in replies:
            self.cached += reply.cached
            if not reply.ok or reply.parsed is None:
                self.failed[reply.error or "no_reply"] += 1
        return replies

    def _items(self, reply: LLMReply, field: str, value: str, n: int) -> list[tuple[int, str]]:
        """(index, value) of a reply's items whose index is in ``range(n)``, the first
        ``n`` items only; the rest are counted as ignored."""
        if reply.parsed is None:
            return []
        items = list(getattr(reply.parsed, field))
        if len(items) > n:
            self.ignored["extra_items"] += len(items) - n
        out = []
        for item in items[:n]:
            if 0 <= item.index < n:
                out.append((item.index, getattr(item, value)))
            else:
                self.ignored["bad_index"] += 1
        return out
