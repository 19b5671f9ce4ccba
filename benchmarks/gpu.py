"""The student on one device, against plain torch/HF loops on the same data.

On a CUDA GPU (about 5 minutes on one H200): a Qwen2.5-0.5B-shaped Llama body
(24 layers, width 896, random init, the arithmetic task's character
tokenizer, nothing downloaded). Without CUDA, or with ``--small``, a tiny body
and a few hundred examples, so CI can smoke it in seconds. It prints:

- ``train <lora|full> ours/raw``: examples/s of ``HFStudent.train`` against a
  plain padded loop (the same batches, the same precision, AdamW), same batch;
- ``eval ours/generate``: problems/s of ``HFStudent.predict`` against
  batched greedy ``model.generate``;
- training tokens/s and model FLOPs utilisation (``6 * params * tokens /
  seconds / peak``; the peak bf16 FLOP/s from :data:`PEAK_FLOPS` by device
  name, ``n/a`` where unknown, on a CPU say) at the default batch and at a
  device-sized batch;
- peak device memory (``n/a`` on a CPU);
- the default experiment's wall time (``--experiment``; on by default on a GPU).

    python benchmarks/gpu.py [--small] [--experiment | --no-experiment]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from teachgym.envs.tasks.arithmetic import ArithmeticTask
from teachgym.runtime import cpu_name
from teachgym.students import HFStudent, build_char_tokenizer, tiny_llama
from teachgym.students.options import resolve_precision
from teachgym.types import Example, Provenance

#: Dense bf16 tensor-core peak FLOP/s by a substring of the device name.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
LORA = {
    "r": 16,
    "alpha": 32,
    "dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
#: Body shapes: a Qwen2.5-0.5B-like one for a GPU, a tiny one for the smoke run.
SHAPES = {
    "gpu": {"hidden_size": 896, "layers": 24, "heads": 14, "intermediate_size": 4864},
    "small": {"hidden_size": 64, "layers": 2, "heads": 4},
}
SIZES = {
    "gpu": {"examples": 16_384, "problems": 896, "batch": 64, "big_batch": 1024},
    "small": {"examples": 128, "problems": 32, "batch": 32, "big_batch": 128},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def examples(task: ArithmeticTask, n: int) -> list[Example]:
    rng = np.random.default_rng(0)
    src = Provenance(generator="benchmark")
    per = max(1, n // len(task.leaf_skills))
    return [
        Example(prompt=p.prompt, completion=p.answer, skill=p.skill, source=src)
        for skill in task.leaf_skills
        for p in task.sample(skill, per, rng)
    ]


def student(tok: Any, shape: dict[str, int], device: torch.device, **kwargs: Any) -> HFStudent:
    model = tiny_llama(len(tok), seed=0, max_positions=128, **shape)
    return HFStudent(model, tok, device=str(device), warmup_steps=10, lr=1e-4, **kwargs)


def raw_train(s: HFStudent, data: list[Example], batch: int) -> float:
    """Seconds of a plain padded loop over the same batches, in the student's precision."""
    encoded = s.codec.encode_examples(data)  # outside the timing: raw gets it for free
    batches = [
        {k: v.to(s.device) for k, v in s.batch_tensors(encoded[i : i + batch], False).items()}
        for i in range(0, len(encoded), batch)
    ]
    opt = torch.optim.AdamW([p for p in s.model.parameters() if p.requires_grad], lr=1e-4)
    s.model.train()

    def loop() -> None:
        for b in batches:
            with s.precision.context(s.device):
                loss = s.model(**b).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return timed(loop, s.device)


def raw_generate(s: HFStudent, prompts: list[str]) -> list[str]:
    tok, out = s.tokenizer, []
    for i in range(0, len(prompts), s.eval_batch_size):
        enc = tok(
            prompts[i : i + s.eval_batch_size],
            add_special_tokens=False,
            padding=True,
            return_tensors="pt",
        ).to(s.device)
        with s.precision.context(s.device), torch.no_grad():
            ids = s.model.generate(
                **enc,
                max_new_tokens=s.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=s.stop_token_ids,
            )
        width = enc["input_ids"].shape[1]
        out += [tok.decode(row[width:], skip_special_tokens=True) for row in ids]
    return out


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def mfu(params: int, tokens: float, seconds: float, peak: float | None) -> str:
    return "n/a" if peak is None else f"{6 * params * tokens / seconds / peak:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny body and data (CI smoke)")
    parser.add_argument("--experiment", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = "small" if args.small or device.type != "cuda" else "gpu"
    shape, sizes = SHAPES[size], SIZES[size]
    task = ArithmeticTask(val_per_skill=max(1, sizes["problems"] // 28))
    tok = build_char_tokenizer(task.alphabet)
    data = examples(task, sizes["examples"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device: {name}, torch {torch.__version__}, size: {size}")
    print(f"precision: {resolve_precision('auto', device)}")
    peak = peak_flops(device)
    batch = sizes["batch"]
    for kind, lora in (("lora", LORA), ("full", None)):
        ours_s = student(tok, shape, device, lora=lora, batch_size=batch)
        ours_s.train(data[: 4 * batch])  # warm-up: kernels, allocator, packing check
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ours = timed(lambda s=ours_s: s.train(data), device)
        raw_s = student(tok, shape, device, lora=lora, batch_size=batch)
        raw_train(raw_s, data[: 4 * batch], batch)
        raw = raw_train(raw_s, data, batch)
        print(
            f"train {kind} ours/raw: {raw / ours:.3f}  "
            f"(ours {len(data) / ours:,.0f} ex/s, raw {len(data) / raw:,.0f} ex/s, batch {batch})"
        )
    params = sum(p.numel() for p in ours_s.model.parameters())
    tokens = sum(len(ids) for ids, _ in ours_s.codec.encode_examples(data))
    print(f"train full tokens/s: {tokens / ours:,.0f}  mfu: {mfu(params, tokens, ours, peak)}")
    big = student(tok, shape, device, batch_size=sizes["big_batch"])
    big.train(data[: sizes["big_batch"]])
    seconds = timed(lambda: big.train(data), device)
    print(
        f"train full tokens/s at batch {sizes['big_batch']}: {tokens / seconds:,.0f}  "
        f"mfu: {mfu(params, tokens, seconds, peak)}"
    )
    problems = task.problems("val")[: sizes["problems"]]
    prompts = [p.prompt for p in problems]
    for kind, lora in (("lora", LORA), ("full", None)):
        s = student(tok, shape, device, lora=lora, batch_size=batch)
        s.train(data[: 4 * batch])
        s.predict(problems)  # warm-up
        raw_generate(s, prompts)
        ours = timed(lambda s=s: s.predict(problems), device)
        theirs = timed(lambda s=s: raw_generate(s, prompts), device)
        agree = np.mean(
            [a == b for a, b in zip(s.predict(problems), raw_generate(s, prompts), strict=True)]
        )
        print(
            f"eval {kind} ours/generate: {theirs / ours:.3f}  "
            f"(ours {len(problems) / ours:,.0f} problems/s, generate "
            f"{len(problems) / theirs:,.0f}; answers agree {agree:.0%})"
        )
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    else:
        print("peak memory: n/a")
    run_experiment = args.experiment if args.experiment is not None else size == "gpu"
    if run_experiment:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "teachgym.experiments.cli", "run", "seed=0", "--out", out]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            print(f"default experiment wall: {time.perf_counter() - start:.1f} s")
    else:
        print("default experiment wall: skipped (--experiment runs it)")


if __name__ == "__main__":
    main()
