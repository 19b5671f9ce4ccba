"""How many real questions does the overlap rule flag, at its threshold and around it?

The decontamination filter (``envs/filtering.py``) rejects a generated prompt
whose IDF-weighted word and word-pair containment in some evaluation prompt
reaches ``overlap`` (0.45 by default). A threshold is only as good as its
margin: it must catch paraphrases of evaluation questions and keep new
questions on the same topics. GSM8K's train questions are the nearest thing
to "new questions on the same topics" that exists at scale, so this script
builds the filter on the 1,319 test questions and counts the train questions
(of at least ``overlap_min_tokens`` tokens) it flags at each threshold
(``--thresholds`` sets the list).

    python benchmarks/decontamination_margin.py [--data ../shared/data/gsm8k]
        [--thresholds 0.35,0.45,0.55]

The paraphrases the rule must catch are pinned by tests/test_decontamination.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from teachgym.envs.filtering import ExampleFilter, tokenize

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"


def questions(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["question"] for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--thresholds", default="0.35,0.45,0.55")
    args = parser.parse_args(argv)
    if not (args.data / "test.jsonl").is_file():
        print(f"no GSM8K at {args.data} (give --data DIR with train.jsonl, test.jsonl)")
        return 2
    test, train = questions(args.data / "test.jsonl"), questions(args.data / "train.jsonl")
    min_tokens = 12
    judged = [q for q in train if len(tokenize(q)) >= min_tokens]
    print(f"GSM8K: {len(test)} test questions as the evaluation set, {len(judged)} of")
    print(f"{len(train)} train questions with >= {min_tokens} tokens judged against them")
    for threshold in (float(t) for t in args.thresholds.split(",")):
        filt = ExampleFilter(test, ngram=None, overlap=threshold, overlap_min_tokens=min_tokens)
        flagged = sum(filt.contamination(q) == "contaminated_overlap" for q in judged)
        print(
            f"overlap {threshold:.2f}: {flagged} flagged "
            f"({100.0 * flagged / max(1, len(judged)):.2f}%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
