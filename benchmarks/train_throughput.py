"""How fast does the student train, next to a minimal raw torch loop on the same batches?

Both sides train the default tiny student (same seed, same initial weights)
on the same examples in the same order and batch size:

- ours: ``HFStudent.train`` as an episode calls it, from ``Example`` objects:
  tokenization, packing, loss masks, gradient clipping and the schedule.
- raw: the loop anyone would write first: the batches tokenized and padded
  beforehand (outside the timing), then ``model(**batch).loss.backward()``,
  ``opt.step()``, ``opt.zero_grad()``.

Prints examples per second for each and their ratio (ours / raw; the goal is
at least 0.9, above 1 means packing saves more than the rest costs), median
over ``--repeats`` alternating runs. It also prints how much faster the
tokenizer backend encodes than the ``transformers`` wrapper the student used
to call.

    python benchmarks/train_throughput.py [--examples 12000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from teachgym import registry
from teachgym.config import load_config
from teachgym.runtime import cpu_name, default_threads, set_torch_threads
from teachgym.students.tiny import tiny_student_for_task
from teachgym.types import Example, Provenance


def make_examples(task, n: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    src = Provenance(generator="benchmark")
    per = n // len(task.leaf_skills)
    return [
        Example(prompt=p.prompt, completion=p.answer, skill=p.skill, source=src)
        for skill in task.leaf_skills
        for p in task.sample(skill, per, rng)
    ]


def fresh_student(config, task):
    return tiny_student_for_task(task, seed=config.seed, **config.student_kwargs)


def time_ours(config, task, examples) -> float:
    student = fresh_student(config, task)
    t0 = time.perf_counter()
    student.train(examples)
    return time.perf_counter() - t0


def time_raw(config, task, examples) -> float:
    student = fresh_student(config, task)
    model = student.model
    # The order the student uses for its first train() call.
    gen = torch.Generator().manual_seed(student.seed * 1_000_003 + 1)
    order = torch.randperm(len(examples), generator=gen).tolist()
    encoded = student.codec.encode_examples(examples)  # outside the timing: raw gets it for free
    batches = []
    for b in range(0, len(order), student.batch_size):
        batch = [encoded[i] for i in order[b : b + student.batch_size]]
        batches.append(student.batch_tensors(batch, packed=False))
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=student.lr, betas=(0.9, 0.98)
    )
    model.train()
    t0 = time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def encode_speedup(task, examples) -> float:
    student = tiny_student_for_task(task)
    texts = [e.prompt for e in examples]
    t0 = time.perf_counter()
    student.tokenizer(texts, add_special_tokens=False)
    wrapper = time.perf_counter() - t0
    t0 = time.perf_counter()
    student.codec.encode(texts)
    backend = time.perf_counter() - t0
    return wrapper / backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=12_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=default_threads())
    args = parser.parse_args()
    set_torch_threads(args.threads)
    config = load_config()
    task = registry.build("task", config.task, **config.component_kwargs("task"))
    examples = make_examples(task, args.examples)
    fresh_student(config, task).train(examples[:1024])  # warm up kernels and allocators
    ours, raw = [], []
    for _ in range(args.repeats):
        ours.append(len(examples) / time_ours(config, task, examples))
        raw.append(len(examples) / time_raw(config, task, examples))
    ours_eps, raw_eps = statistics.median(ours), statistics.median(raw)
    print(f"cpu: {cpu_name()}, torch threads: {args.threads}, torch {torch.__version__}")
    print(f"ours (HFStudent.train): {ours_eps:,.0f} examples/s  {[round(x) for x in ours]}")
    print(f"raw torch loop:         {raw_eps:,.0f} examples/s  {[round(x) for x in raw]}")
    print(f"train_throughput ratio (ours / raw): {ours_eps / raw_eps:.3f}")
    print(f"tokenizer backend vs transformers wrapper: {encode_speedup(task, examples):.1f}x")


if __name__ == "__main__":
    main()
