"""Checks every generated example passes before the student sees it.

They live in the environment, not in generators, so that a user's own
generator gets the same guarantees: no evaluation item leaks into training,
no prompt appears twice in a step (or, with ``dedup="episode"``, twice in an
episode), and nothing reaches the tokenizer that it cannot encode.

Deduplication is per step by default because procedural skills can have small
problem spaces (2-digit x 1-digit multiplication has 720 prompts): an
episode-wide rule would starve such a skill after a few hundred examples,
while a per-step rule still stops a generator from padding a batch with copies.

Decontamination has three rules, checked in this order, each with its own
rejection reason so a run log shows which one fired:

``contaminated``
    The normalized prompt (:func:`~teachgym.types.normalize_prompt`) equals a
    validation or test prompt. The only rule that can fire on short prompts.
``contaminated_ngram``
    The prompt shares a run of ``ngram`` (13) consecutive tokens with one
    evaluation prompt. An LLM teacher that "writes a new question" by copying
    a sentence of one it was shown, or edits only the numbers at one end,
    keeps such a run; two independently written questions almost never do
    (13-gram overlap is the usual threshold for benchmark contamination).
``contaminated_overlap``
    A paraphrase that rewords throughout keeps no long run but still reuses
    most of the words and all of the numbers. The overlap ratio of a
    generated prompt ``q`` with one evaluation prompt ``e`` is::

        sum(w(g) for g in grams(q) & grams(e)) / sum(w(g) for g in grams(q))

    where ``grams(x)`` is the *set* of tokens and adjacent token pairs of
    ``x``, and ``w(g)`` is the gram's inverse document frequency over the
    evaluation prompts (BM25's always-positive form,
    ``log(1 + (N - df + 0.5) / (df + 0.5))``; a gram in no evaluation prompt
    gets the highest weight, ``df = 0``). The prompt is rejected when its
    ratio with ONE evaluation prompt reaches ``overlap`` (0.45). Why this
    measure: plain word overlap cannot tell a paraphrase from a different
    question on the same topic, because function words and topic words
    ("how many", "eggs", "per day", "dollars") are shared by both; the IDF
    weights make those count for little and the numbers, names and rare
    phrases a paraphrase keeps count for much. Word pairs add some word order
    without demanding long runs. The 0.45 threshold sits between what
    paraphrases of evaluation questions score and what new questions on the
    same topics score, with a wider margin than the unweighted ratio gives
    (docs/decisions.md; ``benchmarks/decontamination_margin.py`` counts what
    it flags among GSM8K's train questions). The weights come from the
    evaluation set, so they are most telling with hundreds of prompts or
    more; with a few dozen, topic words are as rare as numbers and the ratio
    behaves like plain overlap without the commonest words. Heavier rewording
    (synonyms for most words) is beyond any lexical rule.
    Containment (the share of ``q``), not Jaccard: a generated prompt is
    judged by how much of IT came from an evaluation item; a short
    evaluation prompt does not make a long generated one suspect. The rule
    applies only to prompts of at least ``overlap_min_tokens`` (12) tokens:
    on a few tokens any ratio is coarse, and arithmetic prompts such as
    ``12+34=`` (two tokens) would otherwise collide with every evaluation
    prompt that reuses an operand.

Tokens (:func:`tokenize`) are the runs of Unicode letters and digits of the
case-folded text (regex ``[^\\W_]+``): punctuation, symbols, underscores and
whitespace only separate tokens, so re-punctuating, re-casing or re-spacing a
copy does not hide it. The default arithmetic experiment is unaffected: its
prompts are two or three tokens, far below both thresholds, so only the exact
rule ever fires there.

Index, built once in ``__init__``: a set of the hashed ``ngram``-token tuples
of every evaluation prompt, and an inverted index (gram -> evaluation prompts
holding it, with its weight) for the overlap rule. A check is then a few set
look-ups for the n-gram rule; the overlap rule visits only evaluation prompts
that share one of the query's rarest grams (prefix filtering: a prompt that
shares none of the grams carrying the top ``1 - overlap`` of the query's
weight cannot reach ``overlap``), and bounds the rest before scoring them.
Grams are stored as Python hashes of token tuples: a hash collision could
reject a clean prompt with probability about ``index size / 2**64``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from itertools import pairwise

from teachgym.options import Decontamination, takes
from teachgym.types import Example, normalize_prompt

#: Runs of Unicode letters and digits (``\w`` minus the underscore).
_TOKEN = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """The tokens the n-gram and overlap rules compare.

    >>> tokenize("Janet’s ducks lay 16 eggs/day; $2 EACH!")
    ['janet', 's', 'ducks', 'lay', '16', 'eggs', 'day', '2', 'each']
    >>> tokenize("12+34=")
    ['12', '34']
    """
    return _TOKEN.findall(text.casefold())


def _overlap_grams(tokens: Sequence[str]) -> set[int]:
    """Hashed distinct tokens and adjacent token pairs (1-tuples and 2-tuples never
    compare equal, so the two kinds share one set)."""
    grams = {hash((t,)) for t in tokens}
    grams.update(hash(pair) for pair in pairwise(tokens))
    return grams


class ExampleFilter:
    """Stateful per episode when ``dedup="episode"``: remembers accepted prompts.

    ``ngram``, ``overlap`` and ``overlap_min_tokens`` are the two fuzzy
    decontamination rules (see the module docstring), with their defaults and
    bounds in :class:`~teachgym.options.Decontamination`; ``None`` turns a rule off.
    """

    @takes(Decontamination)
    def __init__(
        self,
        eval_prompts: Iterable[str],
        alphabet: str | None = None,
        dedup: str = "step",
        *,
        ngram: int | None,
        overlap: float | None,
        overlap_min_tokens: int,
    ) -> None:
        if dedup not in ("step", "episode"):
            raise ValueError(f"dedup must be 'step' or 'episode', got {dedup!r}")
        prompts = list(eval_prompts)
        self._eval = {normalize_prompt(p) for p in prompts}
        self._alphabet = set(alphabet) if alphabet else None
        self.dedup = dedup
        self.ngram = ngram
        self.overlap = None if overlap is None else float(overlap)
        self.overlap_min_tokens = overlap_min_tokens
        self.seen: set[str] = set()
        docs = list(dict.fromkeys(tuple(tokenize(p)) for p in prompts))
        self._ngrams: set[int] = set()
        if ngram is not None:
            for toks in docs:
                self._ngrams.update(hash(toks[i : i + ngram]) for i in range(len(toks) - ngram + 1))
        # Overlap rule: per evaluation prompt its gram set, per gram its
        # postings and weight; weights depend only on df, so unseen grams
        # share one.
        self._doc_grams: list[set[int]] = []
        self._postings: dict[int, tuple[int, ...]] = {}
        self._weight: dict[int, float] = {}
        if self.overlap is not None:
            postings: dict[int, list[int]] = {}
            for d, toks in enumerate(t for t in docs if t):
                grams = _overlap_grams(toks)
                self._doc_grams.append(grams)
                for g in grams:
                    postings.setdefault(g, []).append(d)
            self._postings = {g: tuple(ds) for g, ds in postings.items()}
            self._weight = {g: self._idf(len(ds)) for g, ds in postings.items()}
        self._unseen_weight = self._idf(0)
        shortest = [
            length
            for length, index in ((ngram, self._ngrams), (overlap_min_tokens, self._doc_grams))
            if length is not None and index
        ]
        self._min_chars = 2 * min(shortest) - 1 if shortest else math.inf

    def _idf(self, df: int) -> float:
        n = len(self._doc_grams)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def contamination(self, prompt: str) -> str | None:
        """The decontamination reason ``prompt`` is rejected for, or ``None`` if clean."""
        if normalize_prompt(prompt) in self._eval:
            return "contaminated"
        return self._near_copy(prompt)

    def _near_copy(self, prompt: str) -> str | None:
        """The n-gram and overlap rules (the exact rule is the caller's)."""
        # t tokens take at least 2t - 1 characters (of the case-folded text,
        # which can be longer): the default arithmetic prompts end here.
        folded = prompt.casefold()
        if len(folded) < self._min_chars:
            return None
        toks = tuple(_TOKEN.findall(folded))
        n = self.ngram
        if n is not None and self._ngrams and len(toks) >= n:
            ngrams = self._ngrams
            if any(hash(toks[i : i + n]) in ngrams for i in range(len(toks) - n + 1)):
                return "contaminated_ngram"
        if self._doc_grams and len(toks) >= self.overlap_min_tokens and self._overlaps(toks):
            return "contaminated_overlap"
        return None

    def _overlaps(self, toks: Sequence[str]) -> bool:
        """Whether the overlap ratio with some evaluation prompt reaches ``overlap``.

        Prefix filter, then bound, then score: grams sorted by weight, heaviest
        first; an evaluation prompt holding none of the shortest prefix whose
        rest weighs less than the threshold cannot reach it, so only the
        prefix's postings are candidates. A candidate's prefix score plus the
        rest's weight bounds its ratio; only those whose bound reaches the
        threshold have the rest looked up, one gram at a time.
        """
        assert self.overlap is not None
        weight, unseen = self._weight, self._unseen_weight
        grams = sorted(
            ((weight.get(g, unseen), g) for g in _overlap_grams(toks)),
            key=lambda wg: -wg[0],
        )
        rest = sum(w for w, _ in grams)
        need = self.overlap * rest * (1.0 - 1e-9)
        scores: Counter[int] = Counter()
        k = 0
        while k < len(grams) and rest >= need:
            w, g = grams[k]
            rest -= w
            for d in self._postings.get(g, ()):
                scores[d] += w
            k += 1
        tail = grams[k:]
        for d, score in scores.items():
            if score >= need:
                return True
            if score + rest < need:
                continue
            left, doc = rest, self._doc_grams[d]
            for w, g in tail:
                left -= w
                if g in doc:
                    score += w
                    if score >= need:
                        return True
                elif score + left < need:
                    break
        return False

    def __call__(
        self,
        examples: Sequence[Example],
        skills: Collection[str],
        cap: int,
        batch: set[str] | None = None,
    ) -> tuple[list[Example], dict[str, Counter[str]]]:
        """Accepted examples (at most ``cap``) and, per skill, rejection counts by reason.

        ``batch`` holds the normalized prompts already accepted in this step
        (by an earlier generation round); accepted prompts are added to it.
        Does not mutate ``seen``; call :meth:`commit` once the step is kept, so
        a failure later in the step leaves the filter as it was.
        """
        rejected: dict[str, Counter[str]] = {}
        accepted: list[Example] = []
        batch = set() if batch is None else batch
        for ex in examples:
            if len(accepted) >= cap:
                reason = "over_budget"
            elif ex.skill not in skills:
                reason = "unknown_skill"
            elif (
                self._alphabet is not None and not set(ex.prompt + ex.completion) <= self._alphabet
            ):
                reason = "bad_characters"
            else:
                key = normalize_prompt(ex.prompt)
                if key in self._eval:
                    reason = "contaminated"
                elif (near := self._near_copy(ex.prompt)) is not None:
                    reason = near
                elif key in self.seen or key in batch:
                    reason = "duplicate"
                else:
                    batch.add(key)
                    accepted.append(ex)
                    continue
            rejected.setdefault(ex.skill, Counter())[reason] += 1
        return accepted, rejected

    def excluded(self, batch: set[str]) -> frozenset[str]:
        """Every normalized prompt that would be rejected as an exact copy of an
        evaluation prompt or a duplicate now, given the prompts ``batch`` already
        accepted this step.

        The n-gram and overlap rules judge a prompt's text, not its key, so
        they cannot be listed here; a generator that skips these keys still
        has its near-copies rejected by the filter itself.
        """
        return frozenset(self._eval | self.seen | batch)

    def commit(self, accepted: Iterable[Example]) -> None:
        if self.dedup == "episode":
            self.seen.update(normalize_prompt(e.prompt) for e in accepted)
