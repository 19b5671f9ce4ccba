"""Skill discovery driven through the real LLMClient and OpenAI SDK against the stand-in.

Every test scripts the stand-in server of ``tests/llm_standin.py`` (127.0.0.1 only) with
the replies of the three stages; requests of one stage run concurrently, so replies that
must reach a given batch are keyed with ``match=`` on text only that batch shows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llm_standin import StandIn, json_reply, status

from teachgym.agents.llm import LLMClient, OpenAIBackend
from teachgym.agents.skill_discovery import (
    FALLBACK_CATEGORY,
    SkillDiscovery,
    discover_skills,
    load_discovery_prompts,
    run_skill_discovery,
    slugify,
)
from teachgym.types import Problem

NAME = "name the single main skill"  # text of each stage's default prompt
GROUP = "broad categories"
LABEL = "choose the one category"
SKILL = re.compile(r"^[A-Za-z0-9_.-]+$")


@pytest.fixture
def server() -> Iterator[StandIn]:
    with StandIn() as standin:
        yield standin


def client_for(server: StandIn, model: str = "stand-in-model", attempts: int = 2) -> LLMClient:
    backend = OpenAIBackend(model, base_url=server.base_url, api_key="EMPTY")
    return LLMClient(backend, max_attempts=attempts, backoff_s=0.0, timeout_s=10.0)


def problems(n: int) -> list[Problem]:
    return [
        Problem(id=f"p{i}", skill="unlabelled", prompt=f"Q{i}: question number {i}?", answer="1")
        for i in range(n)
    ]


def names(*pairs: tuple[int, str]) -> dict[str, Any]:
    return {"skills": [{"index": i, "skill": s} for i, s in pairs]}


def groups(**members: list[str]) -> dict[str, Any]:
    return {"categories": [{"name": k, "skills": v} for k, v in members.items()]}


def labels(*pairs: tuple[int, str]) -> dict[str, Any]:
    return {"labels": [{"index": i, "category": c} for i, c in pairs]}


def user_text(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def schema_of(body: dict[str, Any]) -> dict[str, Any]:
    return body["response_format"]["json_schema"]["schema"]


def script_small(server: StandIn) -> None:
    """A clean three-stage run over ``problems(3)`` with ``batch_size >= 3``."""
    server.add(
        json_reply(names((0, "addition"), (1, "subtraction"), (2, "addition"))),
        json_reply(groups(arithmetic=["addition", "subtraction"])),
    )


# -- the three stages ---------------------------------------------------------------
def test_three_stages_name_group_and_relabel_the_leftovers(server: StandIn) -> None:
    server.add(
        json_reply(
            names(
                (0, "Fraction arithmetic"), (1, " fraction   ARITHMETIC "), (2, "unit conversion")
            ),
            match="Q0:",
        ),
        # the second batch names Q3 but skips Q4 (index 1)
        json_reply(names((0, "Percentages")), match="Q3:"),
        json_reply(
            groups(
                **{
                    "Fractions & Ratios": ["fraction arithmetic"],
                    "Measurement": ["Unit conversion"],
                }
            ),
            match=GROUP,
        ),
        json_reply(labels((0, "fractions_ratios"), (1, "measurement")), match=LABEL),
    )
    result = run_skill_discovery(problems(5), client_for(server), dataset="toy", batch_size=3)

    assert result.mapping == {
        "p0": "fractions_ratios",
        "p1": "fractions_ratios",
        "p2": "measurement",
        "p3": "fractions_ratios",  # "Percentages" is in no group: relabelled in stage 3
        "p4": "measurement",  # unnamed in stage 1: relabelled in stage 3
    }
    assert result.categories == {
        "fractions_ratios": ["Fraction arithmetic"],
        "measurement": ["unit conversion"],
    }
    stats = result.stats
    assert stats["requests"] == 4 and stats["failed"] == {} and server.unscripted == 0
    assert (stats["named"], stats["distinct_names"], stats["grouped"]) == (4, 3, 3)
    assert (stats["rounds"], stats["relabelled"], stats["fallback"]) == (1, 2, 0)
    assert stats["grouping"] == "llm" and stats["fallback_category"] is None

    by_text = {user_text(b): b for b in server.requests}
    (first,) = [b for t, b in by_text.items() if NAME in t and "Q0:" in t]
    (group,) = [b for t, b in by_text.items() if GROUP in t]
    (label,) = [b for t, b in by_text.items() if LABEL in t]
    assert '"problem": "Q0: question number 0?"' in user_text(first)
    assert "Q3:" not in user_text(first)
    assert schema_of(first)["properties"]["skills"]["maxItems"] == 3
    # distinct names, spelled as first seen, the most common first, with their counts
    assert "Fraction arithmetic (2)\nunit conversion (1)\nPercentages (1)" in user_text(group)
    label_text = user_text(label)  # only the leftovers, indexed within their batch
    assert (
        '{"index": 0, "problem": "Q3:' in label_text
        and '{"index": 1, "problem": "Q4:' in label_text
    )
    assert "Q0:" not in label_text and "fractions_ratios: Fraction arithmetic" in label_text
    item = schema_of(label)["$defs"]
    (category,) = [d["properties"]["category"] for d in item.values()]
    assert category["enum"] == ["fractions_ratios", "measurement"]  # a constrained model must pick
    seeds = [b["seed"] for b in server.requests]
    assert len(set(seeds)) == 4 and all(b["temperature"] == 0 for b in server.requests)


def test_same_seed_same_requests_and_a_new_seed_new_sampling_seeds(server: StandIn) -> None:
    bodies = []
    for seed in (3, 3, 4):
        script_small(server)
        before = len(server.requests)
        discover_skills(problems(3), client_for(server), dataset="toy", seed=seed)
        bodies.append(server.requests[before:])
    strip = [[{k: v for k, v in b.items() if k != "seed"} for b in run] for run in bodies]
    assert bodies[0] == bodies[1]
    assert strip[2] == strip[0] and [b["seed"] for b in bodies[2]] != [b["seed"] for b in bodies[0]]


def test_rounds_repeat_until_labelled_and_max_rounds_zero_goes_to_the_fallback(
    server: StandIn,
) -> None:
    def script() -> None:
        server.add(
            json_reply(names((0, "addition"), (1, "subtraction"), (2, "algebra"))),
            json_reply(groups(arithmetic=["addition"], algebra=["algebra"])),
        )

    script()
    server.add(
        json_reply(labels((0, "geometry"))),  # round 1: not a category (an unconstrained model)
        json_reply(labels((0, "Algebra"))),  # round 2: slugified to a category
    )
    result = run_skill_discovery(problems(3), client_for(server), dataset="toy")
    assert result.mapping == {"p0": "arithmetic", "p1": "algebra", "p2": "algebra"}
    assert result.stats["rounds"] == 2 and result.stats["relabelled"] == 1
    assert result.stats["ignored"] == {"unknown_category": 1} and result.stats["fallback"] == 0

    script()
    result = run_skill_discovery(problems(3), client_for(server), dataset="toy", max_rounds=0)
    assert result.stats["requests"] == 2 and result.stats["rounds"] == 0
    # the fallback is the largest category: a tie here, so the first one
    assert result.mapping["p1"] == "arithmetic" and result.stats["fallback"] == 1
    assert result.stats["fallback_category"] == "arithmetic"


# -- at most max_skills categories --------------------------------------------------
def test_a_grouping_with_too_many_categories_is_cut_to_the_largest(server: StandIn) -> None:
    server.add(
        json_reply(
            names((0, "a1"), (1, "a2"), (2, "b1"), (3, "b1"), (4, "b1"), (5, "c1"), (6, "c2"))
        ),
        json_reply(
            groups(
                small=["a1"],  # 1 problem: cut
                **{"Big one": ["b1"], "big-one": ["a2"]},  # merged: "big_one", 4 problems
                medium=["c1", "c2"],  # 2 problems: kept
            )
        ),
        json_reply(labels((0, "medium"))),  # the cut category's problem, merged by the LLM
    )
    result = run_skill_discovery(problems(7), client_for(server), dataset="toy", max_skills=2)
    assert set(result.mapping.values()) == {"big_one", "medium"}
    assert result.mapping["p0"] == "medium" and result.mapping["p1"] == "big_one"
    assert result.categories == {"big_one": ["b1", "a2"], "medium": ["c1", "c2"]}
    assert result.stats["categories_cut"] == 1 and result.stats["relabelled"] == 1
    group, label = server.requests[1:]
    assert schema_of(group)["properties"]["categories"]["maxItems"] == 2
    assert "at most 2 broad categories" in user_text(group)
    enum = next(iter(schema_of(label)["$defs"].values()))["properties"]["category"]["enum"]
    assert enum == ["big_one", "medium"]


# -- names ----------------------------------------------------------------------------
def test_slugify_makes_valid_skill_names() -> None:
    assert slugify("Fractions & Ratios") == "fractions_ratios"
    assert slugify("  Àlgèbre: équations!! ") == "algebre_equations"
    assert slugify("multi-step / word.problems") == "multi_step_word_problems"
    assert slugify("---") == "" and slugify("数学") == ""
    assert slugify("x" * 100) == "x" * 48 and slugify("ab " * 30, 5) == "ab_ab"
    for text in ["Fractions & Ratios", "a.b-c", "_x_", "Ünïcödé ünits", "1/2 + 3"]:
        assert SKILL.match(slugify(text)) and Problem(
            id="x", skill=slugify(text), prompt="p", answer=""
        )


def test_category_names_from_the_llm_are_slugified_and_invalid_ones_dropped(
    server: StandIn,
) -> None:
    server.add(
        json_reply(names((0, "Équations"), (1, "angles"), (2, "misc"))),
        json_reply(
            groups(
                **{
                    "Àlgebra & Équations!!": ["équations"],
                    "Geometry / Angles": ["ANGLES"],
                    "!!!": ["misc"],  # slugifies to nothing: dropped, its problem relabelled
                }
            )
        ),
        json_reply(labels((0, "Geometry / Angles"))),
    )
    result = run_skill_discovery(problems(3), client_for(server), dataset="toy")
    assert result.mapping == {
        "p0": "algebra_equations",
        "p1": "geometry_angles",
        "p2": "geometry_angles",
    }
    assert all(SKILL.match(v) for v in result.mapping.values())
    assert result.stats["ignored"]["bad_category_name"] == 1


# -- the cache ------------------------------------------------------------------------
def test_the_cache_serves_a_rerun_with_no_request_and_a_changed_key_misses(
    server: StandIn, tmp_path: Path
) -> None:
    probs = problems(3)
    script_small(server)
    first = run_skill_discovery(probs, client_for(server), dataset="toy", cache_dir=tmp_path)
    assert first.stats["cache"] == "written" and len(server.requests) == 2
    (path,) = tmp_path.iterdir()  # one file, no temporary left behind
    assert str(path) == first.stats["cache_file"] and path.name.startswith("skills-toy-")
    stored = json.loads(path.read_text())
    assert stored["mapping"] == first.mapping and stored["model"] == "stand-in-model"

    again = run_skill_discovery(probs, client_for(server), dataset="toy", cache_dir=tmp_path)
    assert len(server.requests) == 2 and server.unscripted == 0  # not one request
    assert (
        again.mapping
        == first.mapping
        == {"p0": "arithmetic", "p1": "arithmetic", "p2": "arithmetic"}
    )
    assert again.categories == first.categories
    assert again.stats["cache"] == "hit" and again.stats["requests"] == 0
    assert again.stats["discovery_requests"] == 2

    changes: list[dict[str, Any]] = [
        {"client": client_for(server, model="another-model")},
        {"max_skills": 3},
        {"dataset": "toy2"},
        {"seed": 1},
        {"problems": [*probs[:2], probs[2].model_copy(update={"prompt": "Q2: changed?"})]},
    ]
    for n, change in enumerate(changes, start=2):
        script_small(server)
        before = len(server.requests)
        kwargs: dict[str, Any] = {"dataset": "toy", "cache_dir": tmp_path, **change}
        result = run_skill_discovery(
            kwargs.pop("problems", probs), kwargs.pop("client", client_for(server)), **kwargs
        )
        assert len(server.requests) == before + 2, change  # a miss: all stages asked again
        assert result.stats["cache"] == "written"
        assert len(list(tmp_path.iterdir())) == n, change  # a file of its own
    before = len(server.requests)
    mapping = discover_skills(probs, client_for(server), dataset="toy", cache_dir=tmp_path)
    assert mapping == first.mapping and len(server.requests) == before


def test_a_cache_file_that_does_not_fit_is_a_miss(server: StandIn, tmp_path: Path) -> None:
    script_small(server)
    first = run_skill_discovery(problems(3), client_for(server), dataset="toy", cache_dir=tmp_path)
    path = Path(first.stats["cache_file"])
    path.write_text("{not json")
    script_small(server)
    again = run_skill_discovery(problems(3), client_for(server), dataset="toy", cache_dir=tmp_path)
    assert len(server.requests) == 4 and again.mapping == first.mapping
    data = json.loads(path.read_text())  # rewritten whole
    data["mapping"]["p0"] = "not_a_category"
    path.write_text(json.dumps(data))
    script_small(server)
    run_skill_discovery(problems(3), client_for(server), dataset="toy", cache_dir=tmp_path)
    assert len(server.requests) == 6


# -- failures -------------------------------------------------------------------------
def test_every_request_failing_ends_in_the_fallback_category_counted(
    server: StandIn, tmp_path: Path
) -> None:
    server.add(*[status(500) for _ in range(2 * 2)])  # 2 naming batches x 2 attempts
    result = run_skill_discovery(
        problems(5), client_for(server), dataset="toy", batch_size=3, cache_dir=tmp_path
    )
    assert result.mapping == {f"p{i}": FALLBACK_CATEGORY for i in range(5)}
    assert result.categories == {FALLBACK_CATEGORY: []}
    stats = result.stats
    assert stats["failed"] == {"server_error": 2} and stats["requests"] == 2
    assert stats["fallback"] == 5 and stats["fallback_category"] == FALLBACK_CATEGORY
    assert stats["grouping"] == "none" and len(server.requests) == 4 and server.remaining == 0
    assert stats["cache"] == "skipped" and list(tmp_path.iterdir()) == []  # retried next time


def test_a_failed_grouping_falls_back_to_the_common_names_and_failed_labels_to_the_largest(
    server: StandIn,
) -> None:
    server.add(
        json_reply(names((0, "Addition"), (1, "addition"), (2, "Subtraction"), (3, "Algebra"))),
        status(500),
        status(500),  # the grouping, both attempts
        status(500),
        status(500),  # round 1 labelling, both attempts
        json_reply(labels((0, "geometry"))),  # round 2: not a category
    )
    result = run_skill_discovery(
        problems(5), client_for(server), dataset="toy", max_skills=2, max_rounds=2
    )
    # the two most common names became the categories; the rest fell back to the largest
    assert result.categories == {"addition": ["Addition"], "subtraction": ["Subtraction"]}
    assert result.mapping == {
        "p0": "addition",
        "p1": "addition",
        "p2": "subtraction",
        "p3": "addition",
        "p4": "addition",
    }
    stats = result.stats
    assert stats["grouping"] == "names" and stats["failed"] == {"server_error": 2}
    assert (
        stats["rounds"] == 2 and stats["fallback"] == 2 and stats["fallback_category"] == "addition"
    )
    assert stats["requests"] == 4 and server.remaining == 0


def test_schema_rejected_replies_are_failures_not_exceptions(server: StandIn) -> None:
    server.add(
        json_reply({"skills": "not a list"}),  # schema, both attempts
        json_reply({"skills": [{"index": 0, "skill": "x" * 200}]}),  # over maxLength
    )
    result = run_skill_discovery(problems(2), client_for(server), dataset="toy")
    assert result.stats["failed"] == {"schema": 1}
    assert result.mapping == {"p0": FALLBACK_CATEGORY, "p1": FALLBACK_CATEGORY}


# -- arguments ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_skills": 0}, "max_skills must be an integer >= 1"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"max_rounds": -1}, "max_rounds must be an integer >= 0"),
        ({"dataset": " "}, "dataset must be a non-empty string"),
        ({"problems": [*problems(2), problems(1)[0]]}, "duplicate id 'p0'"),
        ({"problems": ["text"]}, r"problems\[0\]: expected a Problem"),
    ],
)
def test_bad_arguments_are_refused_before_any_request(
    server: StandIn, kwargs: dict[str, Any], message: str
) -> None:
    call = {"dataset": "toy", **kwargs}
    with pytest.raises(ValueError, match=message):
        discover_skills(call.pop("problems", problems(2)), client_for(server), **call)
    assert server.requests == []


def test_prompt_files_are_checked(server: StandIn, tmp_path: Path) -> None:
    templates, text = load_discovery_prompts(
        Path(__file__).resolve().parents[1] / "agents" / "prompts" / "discovery.txt"
    )
    assert set(templates) == {"system", "name", "group", "label"} and "$problems" in text
    typo = tmp_path / "typo.txt"
    typo.write_text(text.replace("$max_skills broad", "$max_skill broad"))
    with pytest.raises(ValueError, match=r"\[group\]: unknown placeholder\(s\) \$max_skill;"):
        discover_skills(problems(2), client_for(server), dataset="toy", prompt_file=typo)
    missing = tmp_path / "missing.txt"
    missing.write_text(text.split("\n[label]\n")[0])
    with pytest.raises(ValueError, match=r"no \[label\] section"):
        load_discovery_prompts(missing)
    with pytest.raises(ValueError, match="cannot read prompt_file"):
        load_discovery_prompts(tmp_path / "absent.txt")
    assert server.requests == []


def test_a_custom_prompt_file_is_used_and_keys_the_cache(server: StandIn, tmp_path: Path) -> None:
    _, text = load_discovery_prompts(
        Path(__file__).resolve().parents[1] / "agents" / "prompts" / "discovery.txt"
    )
    custom = tmp_path / "custom.txt"
    custom.write_text(text.replace("Problems:", "PROBLEMS OF $dataset:"))
    cache = tmp_path / "cache"
    for prompt_file in (None, custom):
        script_small(server)
        result = run_skill_discovery(
            problems(3), client_for(server), dataset="toy", cache_dir=cache, prompt_file=prompt_file
        )
        assert result.stats["cache"] == "written"
    assert "PROBLEMS OF toy:" in user_text(server.requests[2])
    assert "PROBLEMS OF" not in user_text(server.requests[0])
    assert len(list(cache.iterdir())) == 2


def test_no_problems_no_requests(server: StandIn) -> None:
    result = run_skill_discovery([], client_for(server), dataset="toy")
    assert isinstance(result, SkillDiscovery) and result.mapping == {} and server.requests == []
