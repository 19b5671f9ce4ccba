"""How fast does the student evaluate, next to ``generate`` batched and one prompt at a time?

Evaluation (greedy decoding of every validation problem) runs at every step of
an episode, so its throughput bounds how fast a teacher can be scored. All
paths decode the same problems with the same model, the same
``max_new_tokens``, greedy, stopping at the student's stop tokens:

- ours: ``HFStudent.predict(problems)``, as the environment calls it.
- raw: the batched loop anyone would write first: chat template (when the
  student uses one), the tokenizer left-padding batches of the student's
  ``eval_batch_size``, ``model.generate(do_sample=False)``, ``batch_decode``.
  The goal is ours / raw >= 0.9: the hand-written decoding loop must not cost
  more than ``generate`` does.
- one at a time: ``model.generate`` per prompt (batch size 1, no padding),
  timed on a subset and scaled per problem, because the full set would take
  minutes for nothing. The goal is ours >= 25x faster: batching is the point
  of the hand-written loop.
- with ``--vllm`` (in an environment with vLLM): ``VLLMEvaluator`` with the
  student's saved adapter, against ours in the same process; no goal, the
  ratio says what ``eval_backend: vllm`` buys on this machine.

Each path is warmed up once, then the paths are timed in interleaved,
rotating order for ``--repeats`` rounds and the median is reported, so that
noise from other processes on a shared machine falls on all of them alike.
The predictions of raw (and vLLM) are compared with ours: greedy decoding of
identical token ids in identical batches should agree exactly.

    python benchmarks/eval_throughput.py [--model tiny|smollm2] [--problems N]
        [--max-new-tokens N] [--single N] [--repeats 3] [--vllm]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from teachgym import registry
from teachgym.config import load_config
from teachgym.runtime import cpu_name, default_threads, set_torch_threads
from teachgym.types import Problem
from teachgym.vllm_support import quiet_vllm

#: Defaults per model: the tiny student decodes the whole default validation
#: split; SmolLM2 (135M parameters) a spread-out subset, so a run takes minutes.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"problems": 896, "single": 64},
    "smollm2": {"problems": 64, "single": 8},
}


def stop_ids(student: Any) -> list[int]:
    """The token ids that end the student's answers, so ``generate`` stops where it does."""
    return list(student.stop_token_ids)


def build_student(model: str, config: Any, task: Any, max_new_tokens: int | None) -> Any:
    """The student as the environment builds it: through the registry, with the config's kwargs.

    The tiny student takes the default config's ``student_kwargs``; SmolLM2
    its preset's defaults (LoRA, chat template, ``eval_batch_size`` 64), on
    the CPU. ``max_new_tokens`` overrides the task's bound when given.
    """
    kwargs: dict[str, Any] = dict(config.student_kwargs) if model == config.student else {}
    if model == "smollm2":
        kwargs["device"] = "cpu"
    if max_new_tokens is not None:
        kwargs["max_new_tokens"] = max_new_tokens
    return registry.build("student", model, task=task, seed=config.seed, **kwargs)


def spread(problems: Sequence[Problem], n: int) -> list[Problem]:
    """``n`` problems evenly spaced over the split, so every skill (and length) is in a subset."""
    if n >= len(problems):
        return list(problems)
    return [problems[i * len(problems) // n] for i in range(n)]


def rendered(student: Any, prompts: Sequence[str]) -> list[str]:
    """Prompts as the model sees them: the chat template's user turn, or as they are."""
    if not student.chat_template:
        return list(prompts)
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    return list(
        student.tokenizer.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=False
        )
    )


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop string (what the student returns)."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(cuts)] if cuts else text


def generation_config(student: Any) -> Any:
    """Greedy, ``max_new_tokens``, eos = the student's stop ids: nothing from the checkpoint.

    A fresh config rather than the model's own, so that sampling defaults a
    checkpoint may ship (temperature, top-p) cannot change what is decoded.
    """
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=student.max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=stop_ids(student),
        pad_token_id=student.tokenizer.pad_token_id,
    )


@torch.no_grad()
def raw_predict(student: Any, problems: Sequence[Problem], batch_size: int) -> list[str]:
    """Batched ``generate``: left-padded batches of ``batch_size``, decoded new tokens."""
    tok, model, config = student.tokenizer, student.model, generation_config(student)
    model.eval()
    texts = rendered(student, [p.prompt for p in problems])
    out: list[str] = []
    for i in range(0, len(texts), batch_size):
        batch = tok(
            texts[i : i + batch_size],
            add_special_tokens=False,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        ).to(student.device)
        ids = model.generate(**batch, generation_config=config)
        new = ids[:, batch["input_ids"].shape[1] :]
        out.extend(
            cut_at_stops(t, student.stop) for t in tok.batch_decode(new, skip_special_tokens=True)
        )
    return out


def one_at_a_time(student: Any, problems: Sequence[Problem]) -> list[str]:
    """``generate`` on one prompt per call: what a loop over problems does without batching."""
    return raw_predict(student, problems, batch_size=1)


def timed(fn: Callable[[], list[str]]) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds of one call.

    CPU time is the steadier measure when other processes share the cores
    (a descheduled thread adds wall time but no CPU time); it only sees this
    process, so the vLLM engine (its own processes) is timed by wall clock.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def agreement(a: Sequence[str], b: Sequence[str]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / max(1, len(a))


def show_disagreements(
    name: str, problems: Sequence[Problem], ours: list[str], other: list[str]
) -> None:
    """A few differing predictions, so a mismatch can be explained rather than guessed at."""
    rows = [(p.prompt, x, y) for p, x, y in zip(problems, ours, other, strict=True) if x != y]
    for prompt, x, y in rows[:3]:
        print(f"  differs: {prompt!r}: ours {x!r} vs {name} {y!r}")


Times = dict[str, list[tuple[float, float]]]  # per path: (wall s, CPU s) of each round


def time_rounds(
    paths: dict[str, Callable[[], list[str]]], repeats: int
) -> tuple[Times, dict[str, list[str]]]:
    """Warm up every path once, then ``repeats`` rounds in rotating order."""
    outputs = {name: fn() for name, fn in paths.items()}
    seconds: Times = {name: [] for name in paths}
    names = list(paths)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds[name].append(timed(paths[name]))
    return seconds, outputs


def report(label: str, n: int, seconds: list[tuple[float, float]]) -> tuple[float, float]:
    """Prints problems per wall second (median, each round) and per CPU second; returns both."""
    wall = [n / w for w, _ in seconds]
    cpu = [n / c for _, c in seconds]
    rates = statistics.median(wall), statistics.median(cpu)
    print(
        f"{label:<34} {rates[0]:10,.1f} problems/s wall {[round(r, 1) for r in wall]}, "
        f"{rates[1]:,.1f} per CPU s"
    )
    return rates


def paired(a: list[tuple[float, float]], b: list[tuple[float, float]], na: int, nb: int) -> str:
    """Each round's wall-clock throughput ratio a / b (the same round: the same noise, roughly)."""
    return str([round((na / x) / (nb / y), 3) for (x, _), (y, _) in zip(a, b, strict=True)])


def compare_vllm(student: Any, problems: list[Problem], ours: list[str], repeats: int) -> None:
    """``VLLMEvaluator`` with the student's adapter (or base weights) against ours, interleaved."""
    from teachgym.students.vllm_eval import VLLMEvaluator

    evaluator = VLLMEvaluator.from_student(student)
    print(f"vLLM engine built in {evaluator.info['engine_s']:.1f} s (not in the timings)")
    set_torch_threads(torch.get_num_threads())  # keep ours' thread count after the engine start
    with tempfile.TemporaryDirectory(prefix="eval-throughput-") as tmp:
        adapter = None
        if student.lora:
            student.model.save_pretrained(tmp)  # what the vLLM backend hands the engine
            adapter = tmp
        try:
            seconds, outputs = time_rounds(
                {
                    "ours": lambda: student.predict(problems),
                    "vllm": lambda: evaluator.predict(problems, adapter_dir=adapter),
                },
                repeats,
            )
        finally:
            evaluator.close()
    print(f"-- vLLM vs ours, {len(problems)} problems, interleaved in this process")
    ours_rate, _ = report("ours (HFStudent.predict)", len(problems), seconds["ours"])
    vllm_rate, _ = report("VLLMEvaluator.predict (wall only)", len(problems), seconds["vllm"])
    n = len(problems)
    print(
        f"eval_throughput vllm ratio (vllm / ours, wall): {vllm_rate / ours_rate:.2f}x  "
        f"per round {paired(seconds['vllm'], seconds['ours'], n, n)}"
    )
    print(f"agreement vllm vs ours: {agreement(ours, outputs['vllm']):.3f}")
    show_disagreements("vllm", problems, ours, outputs["vllm"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--problems", type=int, help="validation problems (default per model)")
    parser.add_argument("--single", type=int, help="problems for the one-at-a-time subset")
    parser.add_argument("--max-new-tokens", type=int, help="default: the task's bound")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--vllm", action="store_true", help="also time VLLMEvaluator (smollm2)")
    args = parser.parse_args()
    if args.vllm:
        if args.model != "smollm2":
            parser.error("--vllm needs --model smollm2 (vLLM loads a checkpoint directory)")
        quiet_vllm(offline=True)  # before anything imports vLLM: no usage stats, no hub
    set_torch_threads(args.threads)
    preset = PRESETS[args.model]
    config = load_config()
    task = registry.build("task", config.task, **config.component_kwargs("task"))
    student = build_student(args.model, config, task, args.max_new_tokens)
    problems = spread(task.problems("val"), args.problems or preset["problems"])
    subset = spread(problems, min(len(problems), args.single or preset["single"]))
    batch = student.eval_batch_size

    seconds, outputs = time_rounds(
        {
            "ours": lambda: student.predict(problems),
            "raw": lambda: raw_predict(student, problems, batch),
            "single": lambda: one_at_a_time(student, subset),
        },
        args.repeats,
    )
    print(f"cpu: {cpu_name()}, torch threads: {args.threads}, torch {torch.__version__}")
    print(
        f"model: {args.model} ({sum(p.numel() for p in student.model.parameters()) / 1e6:.2f}M "
        f"parameters), {len(problems)} val problems, eval_batch_size {batch}, "
        f"max_new_tokens {student.max_new_tokens}, greedy, median of {args.repeats} rounds"
    )
    n, k = len(problems), len(subset)
    ours = report("ours (HFStudent.predict)", n, seconds["ours"])
    raw = report("raw batched model.generate", n, seconds["raw"])
    single = report(f"one at a time ({k} problems)", k, seconds["single"])
    print(
        f"eval_throughput ratio (ours / raw): {ours[0] / raw[0]:.3f} wall, "
        f"{ours[1] / raw[1]:.3f} CPU time  (goal >= 0.9); per round (wall) "
        f"{paired(seconds['ours'], seconds['raw'], n, n)}"
    )
    print(
        f"ours vs one at a time: {ours[0] / single[0]:.1f}x wall, {ours[1] / single[1]:.1f}x "
        f"CPU time faster  (goal >= 25x; one at a time timed on {k} of the {n} problems "
        f"and scaled per problem); per round (wall) "
        f"{paired(seconds['ours'], seconds['single'], n, k)}"
    )
    print(f"agreement raw vs ours: {agreement(outputs['ours'], outputs['raw']):.3f}")
    show_disagreements("raw", problems, outputs["ours"], outputs["raw"])
    by_id = dict(zip((p.id for p in problems), outputs["ours"], strict=True))
    single_ours = [by_id[p.id] for p in subset]
    print(f"agreement one-at-a-time vs ours: {agreement(single_ours, outputs['single']):.3f}")
    show_disagreements("one-at-a-time", subset, single_ours, outputs["single"])
    if args.vllm:
        compare_vllm(student, problems, outputs["ours"], args.repeats)


if __name__ == "__main__":
    main()
