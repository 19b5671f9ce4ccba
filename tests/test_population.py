"""A population of tiny students: each member equals a lone tiny student given the same data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from teachgym.envs.tasks.arithmetic import ArithmeticTask
from teachgym.students import Student, make_tiny_student
from teachgym.students.population import make_tiny_population
from teachgym.types import Example, Provenance

TASK = ArithmeticTask(
    skills=["add/no_carry", "add/carry", "sub/borrow", "cmp/3d"], val_per_skill=64, test_per_skill=4
)
#: Small shapes (the default's structure: 2 layers, tied embeddings) so the test is quick.
SMALL = {
    "hidden_size": 32,
    "layers": 2,
    "heads": 4,
    "batch_size": 16,
    "warmup_steps": 4,
    "cooldown": 0.3,
    "max_new_tokens": TASK.max_answer_length + 1,
}
SEEDS = [0, 1, 2, 3]


def _examples(n: int, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    src = Provenance(generator="test")
    return [
        Example(prompt=p.prompt, completion=p.answer, skill=p.skill, source=src)
        for skill in TASK.leaf_skills
        for p in TASK.sample(skill, n // 4, rng)
    ]


def _max_weight_diff(pop, index: int, lone) -> float:
    state = pop.member_state_dict(index)
    return max((state[k] - v).abs().max().item() for k, v in lone.model.state_dict().items())


@pytest.mark.slow
def test_four_members_equal_four_lone_students():
    """N=4 against 4 lone students: the same initial weights, the same loss curves (each
    member with its own data, of its own size, some calls skipped), the same weights
    and the same greedy predictions on the validation problems afterwards."""
    pop = make_tiny_population(TASK.alphabet, SEEDS, **SMALL)
    lones = [make_tiny_student(TASK.alphabet, seed=s, **SMALL) for s in SEEDS]
    pop.set_horizon(600)
    for lone in lones:
        lone.set_horizon(600)
    for i, lone in enumerate(lones):
        assert _max_weight_diff(pop, i, lone) == 0.0
    worst = 0.0
    for call in range(4):
        # Different sizes per member (different step counts, ragged last batches), and
        # member 3 sits out the second call (not called at all, as an env with no data).
        data = {
            i: _examples(48 + 24 * i + 8 * call, 100 * call + i)
            for i in range(4)
            if not (call == 1 and i == 3)
        }
        got = pop.train(data)
        assert sorted(got) == sorted(data)
        for i, examples in data.items():
            want = lones[i].train(examples)
            assert got[i]["steps"] == want["steps"] and got[i]["tokens"] == want["tokens"]
            worst = max(worst, abs(got[i]["loss"] - want["loss"]))
    print(f"largest loss difference over 4 members x 4 calls: {worst:.2e}")
    assert worst < 1e-4
    for i, lone in enumerate(lones):
        assert _max_weight_diff(pop, i, lone) < 1e-4
    val = TASK.problems("val")
    outputs = pop.predict(val)
    agree = [
        a == b
        for i, lone in enumerate(lones)
        for a, b in zip(outputs[i], lone.predict(val), strict=True)
    ]
    print(f"prediction agreement: {np.mean(agree):.4f} over {len(agree)}")
    assert np.mean(agree) >= 0.999
    # A subset predicts what the full population does for those members.
    assert pop.predict(val[:20], [2, 0]) == [outputs[2][:20], outputs[0][:20]]


def test_tied_embedding_gets_both_halves_of_its_gradient():
    """One step on one member: its weights equal the lone student's, embedding included
    (the tie is the trap of vmap over a tied Llama: its output half of the gradient)."""
    pop = make_tiny_population(TASK.alphabet, [5], **SMALL)
    lone = make_tiny_student(TASK.alphabet, seed=5, **SMALL)
    data = _examples(16, 7)
    pop.train({0: data})
    lone.train(data)
    embed = "model.embed_tokens.weight"
    before = make_tiny_student(TASK.alphabet, seed=5, **SMALL).model.state_dict()[embed]
    moved = (lone.model.state_dict()[embed] - before).abs().max().item()
    diff = (pop.member_state_dict(0)[embed] - lone.model.state_dict()[embed]).abs().max().item()
    assert moved > 1e-4 and diff < 1e-6


def test_members_are_students_reset_and_resume(tmp_path):
    pop = make_tiny_population(TASK.alphabet, [0, 1], **SMALL)
    member = pop.member(1)
    assert isinstance(member, Student)
    base = {k: v.clone() for k, v in pop.member_state_dict(1).items()}
    member.train(_examples(32, 1))
    member.save(tmp_path / "m")
    after_one = pop.member_state_dict(1)
    member.train(_examples(32, 2))
    continued = pop.member_state_dict(1)
    member.load(tmp_path / "m")
    assert all(torch.equal(after_one[k], v) for k, v in pop.member_state_dict(1).items())
    member.train(_examples(32, 2))  # the same data order and optimizer state resume
    assert all(torch.allclose(continued[k], v) for k, v in pop.member_state_dict(1).items())
    untouched = pop.member_state_dict(0)
    pop.reset([1])
    assert all(torch.equal(base[k], v) for k, v in pop.member_state_dict(1).items())
    assert pop.states[1].calls == 0 and pop.states[1].opt_steps == 0
    assert all(torch.equal(untouched[k], v) for k, v in pop.member_state_dict(0).items())


def test_bad_options_and_members_are_refused():
    with pytest.raises(ValueError, match="does not support"):
        make_tiny_population(TASK.alphabet, [0], lora={"r": 4})
    pop = make_tiny_population(TASK.alphabet, [0, 1], **SMALL)
    with pytest.raises(ValueError, match="distinct indices"):
        pop.predict(TASK.problems("val")[:2], [0, 2])


@pytest.mark.slow
def test_sensitivity_benchmark_prints_its_table(capsys):
    """benchmarks/sensitivity.py at two short calls: the nudge lands after the first call,
    and before it the member equals the lone student up to rounding."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "sensitivity.py"
    spec = importlib.util.spec_from_file_location("sensitivity_benchmark", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--calls", "2", "--examples", "140"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0 ")]
    [first] = rows
    nudged, member = (cell.strip() for cell in first.strip("|").split("|")[2:4])
    assert nudged == "+0.00e+00, 0.0e+00"  # not nudged yet
    assert float(member.split(", ")[1]) < 1e-5  # rounding only


def test_roofline_benchmark_counts_every_member(capsys):
    """benchmarks/cpu_roofline.py --small: the population's counted FLOPs are N lone
    calls' (plus its eager attention), and the bound follows from what was measured."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "cpu_roofline.py"
    spec = importlib.util.spec_from_file_location("roofline_benchmark", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    got = bench.main(["--small", "--n", "3", "--repeats", "1", "--threads", "1"])
    assert 3 * got["lone_flops"] <= got["pop_flops"] <= 1.3 * 3 * got["lone_flops"]
    assert got["lone_s"] > 0 and got["pop_s"] > 0 and got["episode_s"] > 0
    out = capsys.readouterr().out
    assert f"{got['bound']:.2f}x" in out and "of peak" in out
