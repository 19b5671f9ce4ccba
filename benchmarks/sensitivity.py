"""How far apart do two lone students drift when one starts 1e-7 away, next to a population?

A population member equals a lone student up to float rounding (the batched
matrix products add in another order). Whether that rounding stays small
depends on the training dynamics, not on the population: this script trains,
on the same data, (a) a lone default-size tiny student, (b) the same student
with every weight moved by 1e-7 noise after the first call, and (c) member 0 of
a population of that student and a second seed, and prints the loss and the
largest weight difference to (a) after each call. If (b) drifts as far as (c),
a population's divergence from lone runs is the dynamics amplifying rounding,
and no batched implementation could avoid it.

    python benchmarks/sensitivity.py [--calls 3] [--seed 1] [--examples 3000]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from teachgym.assembly import build_task
from teachgym.config import load_config
from teachgym.runtime import cpu_name, set_torch_threads
from teachgym.students import make_tiny_student
from teachgym.students.population import make_tiny_population
from teachgym.types import Example, Provenance


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in b)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--examples", type=int, default=3000, help="examples per call")
    args = parser.parse_args(argv)
    config = load_config(None, {"threads": 2})
    set_torch_threads(config.threads)
    task = build_task(config)
    kwargs = dict(config.student_kwargs)
    lone = make_tiny_student(task.alphabet, seed=args.seed, **kwargs)
    nudged = make_tiny_student(task.alphabet, seed=args.seed, **kwargs)
    pop = make_tiny_population(task.alphabet, [args.seed, args.seed + 1], **kwargs)
    for student in (lone, nudged, pop):
        student.set_horizon(config.budget)
    rng = np.random.default_rng(0)
    noise = torch.Generator().manual_seed(0)
    source = Provenance(generator="sensitivity")
    per_skill = args.examples // len(task.leaf_skills)
    print(f"{cpu_name()}, {config.threads} threads; default tiny student, seed {args.seed}")
    print("| call | lone loss | nudged: Δ loss, max Δ weight | member 0: Δ loss, max Δ weight |")
    print("|---|---|---|---|")
    for call in range(args.calls):
        data = [
            Example(prompt=p.prompt, completion=p.answer, skill=p.skill, source=source)
            for skill in task.leaf_skills
            for p in task.sample(skill, per_skill, rng)
        ]
        if call == 1:
            with torch.no_grad():
                for param in nudged.model.parameters():
                    param.add_(torch.randn(param.shape, generator=noise) * 1e-7)
        want = lone.train(data)["loss"]
        got_nudged = nudged.train(data)["loss"]
        got_member = pop.train({0: data, 1: data})[0]["loss"]
        state = lone.model.state_dict()
        print(
            f"| {call} | {want:.6f} "
            f"| {got_nudged - want:+.2e}, {_max_diff(nudged.model.state_dict(), state):.1e} "
            f"| {got_member - want:+.2e}, {_max_diff(pop.member_state_dict(0), state):.1e} |"
        )


if __name__ == "__main__":
    main()
