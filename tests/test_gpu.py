"""The student on a CUDA GPU in its default precision (bf16 mixed): skipped without one.

The logic each test relies on has a CPU test too (mixed precision and the lost
update, micro-batches, decoding equal to ``generate``, LoRA reset): here it is
checked where it runs for real, in bf16 autocast on the device.
"""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest
import torch

from teachgym.envs.tasks.arithmetic import ArithmeticTask
from teachgym.students import HFStudent, build_char_tokenizer, make_tiny_student, tiny_llama
from teachgym.types import Example, Provenance

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TASK = ArithmeticTask(skills=["add/no_carry", "cmp/3d"], val_per_skill=8, test_per_skill=8)
SMALL: dict[str, Any] = {"hidden_size": 64, "layers": 2, "heads": 4, "batch_size": 16}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _examples(n: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    src = Provenance(generator="test")
    return [
        Example(prompt=p.prompt, completion=p.answer, skill=p.skill, source=src)
        for skill in TASK.leaf_skills
        for p in TASK.sample(skill, n // 2, rng)
    ]


def test_auto_is_bf16_mixed_precision_and_trains_like_float32():
    mixed = make_tiny_student(TASK.alphabet, seed=0, device="cuda", **SMALL)
    plain = make_tiny_student(TASK.alphabet, seed=0, device="cuda", dtype="fp32", **SMALL)
    assert mixed.precision.autocast and mixed.precision.compute == torch.bfloat16
    assert {p.dtype for p in mixed.model.parameters()} == {torch.float32}  # master weights
    data = _examples(128)
    loss_mixed, loss_plain = mixed.train(data)["loss"], plain.train(data)["loss"]
    assert loss_mixed == pytest.approx(loss_plain, rel=2e-2)
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters())
    state = mixed.trainer.opt.state_dict()["state"]
    assert all(s["exp_avg"].dtype == torch.float32 for s in state.values())
    for (_, a), (_, b) in zip(
        mixed.model.named_parameters(), plain.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0.0, atol=5e-3)


@pytest.mark.parametrize("split", [{"grad_accum_steps": 2}, {"max_batch_tokens": 64}])
def test_micro_batches_equal_one_full_batch_under_autocast(split):
    full = make_tiny_student(TASK.alphabet, seed=0, device="cuda", packing=False, **SMALL)
    parts = make_tiny_student(TASK.alphabet, seed=0, device="cuda", packing=False, **SMALL | split)
    batch = full.codec.encode_examples(_examples(16, seed=3))
    for student in (full, parts):
        student.model.train()
        student.model.zero_grad(set_to_none=True)
    assert parts.trainer.backward(batch) == pytest.approx(full.trainer.backward(batch), rel=1e-2)
    pairs = zip(full.model.named_parameters(), parts.model.named_parameters(), strict=True)
    for (_, a), (_, b) in pairs:
        # bf16 matmuls over different row sets round differently; the sums still agree.
        torch.testing.assert_close(b.grad, a.grad, rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("lora", [None, LORA])
def test_greedy_decoding_matches_generate_under_autocast(lora):
    tok = build_char_tokenizer(TASK.alphabet)
    model = tiny_llama(len(tok), hidden_size=64, layers=2, heads=4, seed=0)
    student = HFStudent(model, tok, device="cuda", lora=lora, batch_size=16, lr=3e-3)
    student.train(_examples(256))
    problems = TASK.problems("val")
    ours = student.predict(problems)
    enc = tok(
        [p.prompt for p in problems], add_special_tokens=False, padding=True, return_tensors="pt"
    ).to(student.device)
    with student.precision.context(student.device), torch.no_grad():
        out = student.model.generate(
            **enc,
            max_new_tokens=student.max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    width = enc["input_ids"].shape[1]
    theirs = [tok.decode(row[width:], skip_special_tokens=True) for row in out]
    assert ours == theirs


def test_device_memory_does_not_grow_across_env_steps():
    from teachgym.assembly import make_env

    env = make_env(
        "teachgym/SkillList-v0",
        task=ArithmeticTask(skills=["add/no_carry", "cmp/3d"], val_per_skill=32),
        student_kwargs=SMALL | {"device": "cuda"},
        budget=10_000,
        examples_per_step=256,
        max_steps=6,
        seed=0,
    )
    env.reset(seed=0)
    allocated = []
    for _ in range(6):
        env.step(env.action_space.sample())
        gc.collect()
        torch.cuda.synchronize()
        allocated.append(torch.cuda.memory_allocated())
    env.close()
    # After the first step (the optimizer state appears), five more steps hold no more.
    assert max(allocated[1:]) <= allocated[1] + (1 << 20), allocated


def test_lora_evaluation_with_a_fresh_adapter_is_the_base_model():
    tok = build_char_tokenizer(TASK.alphabet)
    problems = TASK.problems("val")
    base = HFStudent(
        tiny_llama(len(tok), hidden_size=64, layers=2, heads=4, seed=0), tok, device="cuda"
    )
    expected = base.predict(problems)
    student = HFStudent(
        tiny_llama(len(tok), hidden_size=64, layers=2, heads=4, seed=0),
        tok,
        device="cuda",
        lora=LORA,
        batch_size=16,
        lr=1e-2,
        warmup_steps=1,
    )
    kinds = {(p.requires_grad, p.dtype) for p in student.model.parameters()}
    assert kinds == {(True, torch.float32), (False, torch.bfloat16)}
    fresh = student.predict(problems)
    # The base is stored in bf16 here, in float32 in ``base``: compare agreement, not bytes.
    assert np.mean([a == b for a, b in zip(fresh, expected, strict=True)]) >= 0.9
    student.train(_examples(256))
    assert student.predict(problems) != fresh
    student.reset()  # a fresh adapter again: the same answers as before training
    assert student.predict(problems) == fresh
    assert "peak_memory_mib" in student.take_perf()
