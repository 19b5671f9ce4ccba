"""The HF student: SFT masking, decoding, determinism, save/load, modes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from teachgym.envs.tasks.arithmetic import ArithmeticTask
from teachgym.errors import ConfigError
from teachgym.students import HFStudent, Student, build_char_tokenizer, make_tiny_student
from teachgym.students.tokenizer import check_covered
from teachgym.types import Example, Problem, Provenance

TASK = ArithmeticTask(skills=["add/no_carry", "cmp/3d"], val_per_skill=8, test_per_skill=8)
# Pinned to the CPU in float32: these tests compare exact values, which a GPU's
# default bf16 mixed precision would not reproduce (tests/test_gpu.py covers it).
SMALL = {
    "hidden_size": 32,
    "layers": 1,
    "heads": 2,
    "batch_size": 16,
    "device": "cpu",
    "dtype": "fp32",
}


def _examples(n: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    src = Provenance(generator="test")
    return [
        Example(prompt=p.prompt, completion=p.answer, skill=p.skill, source=src)
        for skill in TASK.leaf_skills
        for p in TASK.sample(skill, n // 2, rng)
    ]


def _weights(student: HFStudent) -> list[torch.Tensor]:
    return [p.detach().clone() for p in student.model.parameters()]


def test_protocol_and_same_seed_same_weights_and_predictions():
    a = make_tiny_student(TASK.alphabet, seed=3, **SMALL)
    b = make_tiny_student(TASK.alphabet, seed=3, **SMALL)
    c = make_tiny_student(TASK.alphabet, seed=4, **SMALL)
    assert isinstance(a, Student)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(c), strict=True))
    data = _examples(64)
    assert a.train(data) == b.train(data)
    problems = TASK.problems("val")
    assert a.predict(problems) == b.predict(problems)


@pytest.mark.parametrize("packed", [False, True])
def test_labels_put_the_loss_on_completion_tokens_only(packed):
    student = make_tiny_student(TASK.alphabet, seed=0, **SMALL)
    examples = _examples(6)
    encoded = student.codec.encode_examples(examples)
    batch = student.batch_tensors(encoded, packed=packed)
    ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    eos = student.tokenizer.eos_token_id
    if packed:
        assert len(ids) < len(examples)  # several examples share a row
    # Walk the rows and find every example in order: its prompt positions are
    # -100, its completion and eos positions carry the token ids, padding is -100.
    found = []
    for row_ids, row_labels in zip(ids, labels, strict=True):
        pos = 0
        while pos < len(row_ids) and row_ids[pos] != student.tokenizer.pad_token_id:
            full, start = encoded[len(found)]
            assert row_ids[pos : pos + len(full)] == full
            assert row_labels[pos : pos + start] == [-100] * start
            assert row_labels[pos + start : pos + len(full)] == full[start:]
            assert full[-1] == eos
            found.append(full)
            pos += len(full)
            if not packed:
                break
        assert all(label == -100 for label in row_labels[pos:])
    assert len(found) == len(examples)


def test_packed_rows_see_only_their_own_example():
    student = make_tiny_student(TASK.alphabet, seed=0, **SMALL)
    encoded = student.codec.encode_examples(_examples(6))
    batch = student.batch_tensors(encoded, packed=True)
    mask = batch["attention_mask"][0, 0]  # row 0: additive mask, 0 = may attend
    first, second = len(encoded[0][0]), len(encoded[1][0])
    allowed = mask == 0
    assert allowed[first, first] and not allowed[first, first - 1]  # 2nd example: no look back
    assert allowed[first + 1, first] and not allowed[first, first + 1]  # causal inside
    assert batch["position_ids"][0, first : first + second].tolist() == list(range(second))
    # The loss of a packed batch is the loss of the same examples padded one per row.
    student.model.eval()
    with torch.no_grad():
        padded = student.trainer.loss(student.batch_tensors(encoded, packed=False))
        packed = student.trainer.loss(batch)
    assert float(packed) == pytest.approx(float(padded), rel=1e-5)


def test_training_on_one_example_learns_its_completion():
    student = make_tiny_student(
        TASK.alphabet, seed=0, lr=3e-3, epochs=150, warmup_steps=10, **SMALL
    )
    ex = _examples(2)[:1]
    metrics = student.train(ex)
    assert metrics["steps"] == 150
    problem = Problem(id="p", skill=ex[0].skill, prompt=ex[0].prompt, answer=ex[0].completion)
    assert student.predict([problem]) == [ex[0].completion]


def test_the_learning_rate_cools_down_to_zero_over_the_horizon():
    student = make_tiny_student(TASK.alphabet, seed=0, warmup_steps=2, cooldown=0.5, **SMALL)
    student.set_horizon(64)  # 4 steps of 16
    rates = []
    original = student.trainer.lr_at

    def spy(step, progress=None):
        rates.append(original(step, progress))
        return rates[-1]

    student.trainer.lr_at = spy
    student.train(_examples(32))
    student.train(_examples(32, seed=1))
    peak = original(3)  # what the rate would be without a horizon
    # Full rate in the first half of the horizon, then a linear fall towards 0.
    assert rates[:2] == [original(0), original(1)]
    assert rates[2] == pytest.approx(original(2) * 1.0)
    assert rates[3] == pytest.approx(peak * 0.5)
    assert original(4, progress=1.0) == 0.0
    # Without a horizon nothing cools down.
    student.set_horizon(None)
    assert original(10, progress=None) == original(10)


def test_building_a_student_leaves_torch_threads_alone():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        make_tiny_student(TASK.alphabet, **SMALL)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_greedy_decoding_matches_transformers_generate():
    student = make_tiny_student(TASK.alphabet, seed=0, **SMALL)
    student.train(_examples(256))
    problems = TASK.problems("val")
    ours = student.predict(problems)
    tok = student.tokenizer
    enc = tok(
        [p.prompt for p in problems], add_special_tokens=False, padding=True, return_tensors="pt"
    ).to(student.device)
    out = student.model.generate(
        **enc,
        max_new_tokens=student.max_new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    theirs = [tok.decode(row[enc["input_ids"].shape[1] :], skip_special_tokens=True) for row in out]
    assert ours == theirs


def test_save_load_roundtrip_and_reset(tmp_path):
    student = make_tiny_student(TASK.alphabet, seed=0, **SMALL)
    base = _weights(student)
    student.train(_examples(64))
    trained = _weights(student)
    student.save(tmp_path / "ckpt")
    other = make_tiny_student(TASK.alphabet, seed=9, **SMALL)
    other.load(tmp_path / "ckpt")
    assert all(torch.equal(x, y) for x, y in zip(trained, _weights(other), strict=True))
    # Continuing after load gives exactly what continuing without it gives.
    more = _examples(64, seed=1)
    assert student.train(more) == other.train(more)
    student.reset()
    assert all(torch.equal(x, y) for x, y in zip(base, _weights(student), strict=True))


def test_accumulate_retrains_from_base_on_all_data():
    acc = make_tiny_student(TASK.alphabet, seed=0, mode="accumulate", **SMALL)
    first, second = _examples(32, 1), _examples(32, 2)
    acc.train(first)
    metrics = acc.train(second)
    assert metrics["steps"] == 4  # 64 examples / batch 16: both calls' data
    fresh = make_tiny_student(TASK.alphabet, seed=0, mode="accumulate", **SMALL)
    fresh._calls = 1  # same data order as acc's second call
    assert fresh.train(first + second) == metrics
    cont = make_tiny_student(TASK.alphabet, seed=0, mode="continual", **SMALL)
    cont.train(first)
    assert cont.train(second)["steps"] == 2


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="mode 'online' is invalid: Input should be 'accumulate'"):
        make_tiny_student(TASK.alphabet, mode="online")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch_size 0 is invalid: Input should be greater than"):
        make_tiny_student(TASK.alphabet, batch_size=0)
    with pytest.raises(ConfigError, match="lr True is invalid: Input should be a valid number"):
        make_tiny_student(TASK.alphabet, lr=True)
    student = make_tiny_student(TASK.alphabet, **SMALL)
    student.save(tmp_path / "c")
    with pytest.raises(ValueError, match="mode 'continual'"):
        make_tiny_student(TASK.alphabet, mode="accumulate", **SMALL).load(tmp_path / "c")


def test_tokenizer_rejects_unknown_characters():
    tok = build_char_tokenizer("0123456789+=")
    check_covered(tok, ["12+3="])
    with pytest.raises(ValueError, match=r"\['<'\]"):
        check_covered(tok, ["1<2"])
    with pytest.raises(ValueError, match="single characters"):
        build_char_tokenizer(["ab"])


def test_student_refuses_text_outside_its_vocabulary():
    student = make_tiny_student("0123456789+=", **SMALL)
    bad = Example(prompt="1<2=", completion="<", skill="cmp", source=Provenance(generator="t"))
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        student.train([bad])


def test_lora_trains_adapters_only():
    pytest.importorskip("peft")
    student = make_tiny_student(
        TASK.alphabet,
        seed=0,
        lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        **SMALL,
    )
    frozen = {
        n: p.detach().clone() for n, p in student.model.named_parameters() if not p.requires_grad
    }
    trainable = {
        n: p.detach().clone() for n, p in student.model.named_parameters() if p.requires_grad
    }
    assert trainable and all("lora" in n for n in trainable)
    student.train(_examples(64))
    params = dict(student.model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert any(not torch.equal(params[n], v) for n, v in trainable.items())


def test_hf_student_loads_a_local_checkpoint(tmp_path):
    from teachgym import registry

    tiny = make_tiny_student(TASK.alphabet, seed=5, **SMALL)
    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    # The same decoding length as the tiny student built above (the hf factory
    # otherwise takes the task's answer length, as the tiny factory does).
    student = registry.build(
        "student",
        "hf",
        task=TASK,
        seed=5,
        model=str(tmp_path / "model"),
        batch_size=16,
        max_new_tokens=tiny.max_new_tokens,
    )
    problems = TASK.problems("val")
    assert student.predict(problems) == tiny.predict(problems)
    with pytest.raises(ValueError, match=r"needs student_kwargs\.model"):
        registry.build("student", "hf", task=TASK)


@pytest.mark.gpu
def test_student_trains_and_predicts_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    student = make_tiny_student(
        TASK.alphabet, seed=0, **SMALL | {"device": "cuda", "dtype": "auto"}
    )
    assert next(student.model.parameters()).is_cuda
    metrics = student.train(_examples(64))
    assert metrics["steps"] == 4
    assert len(student.predict(TASK.problems("val"))) == len(TASK.problems("val"))


def test_a_checkpoint_save_prints_nothing(tmp_path, capfd):
    # A run saves every step; transformers' per-save progress bar would bury the run's own.
    from transformers.utils import logging as hf_logging

    student = make_tiny_student(TASK.alphabet, seed=0, **SMALL)
    student.save(tmp_path / "ckpt")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert hf_logging.is_progress_bar_enabled()  # the global setting is left as it was


def test_mixed_precision_keeps_updates_that_pure_bf16_loses():
    # Updates of 1e-6 (Adam's step is about the rate) are far below bf16's resolution at
    # the weights' scale (|w| / 256), so weights stored in bf16 round them away; float32
    # master weights under bf16 autocast keep every one.
    tiny_steps = {"lr": 1e-6, "warmup_steps": 1, "lr_schedule": "constant", "cooldown": 0.0}
    tiny_steps["packing"] = True  # no packing check: every forward pass below is training
    data = _examples(32)
    moved = {}
    for dtype in ("bf16_pure", "bf16"):
        student = make_tiny_student(TASK.alphabet, seed=0, **SMALL | tiny_steps | {"dtype": dtype})
        before = {n: p.detach().float().clone() for n, p in student.model.named_parameters()}
        outputs: list[torch.dtype] = []
        layer = student.model.model.layers[0].self_attn.q_proj
        hook = layer.register_forward_hook(lambda _m, _i, out, seen=outputs: seen.append(out.dtype))
        student.train(data)
        hook.remove()
        assert set(outputs) == {torch.bfloat16}  # both compute in bf16
        changed = total = 0
        for name, param in student.model.named_parameters():
            changed += int((param.detach().float() != before[name]).sum())
            total += param.numel()
        moved[dtype] = changed / total
        stored = {p.dtype for p in student.model.parameters()}
        assert stored == ({torch.bfloat16} if dtype == "bf16_pure" else {torch.float32})
    assert moved["bf16_pure"] < 0.1  # only weights near zero, where bf16 is fine, moved
    assert moved["bf16"] > 0.99


def test_precision_names():
    from teachgym.students.options import Precision, resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == Precision(torch.float32)
    assert resolve_precision("auto", cuda) == Precision(torch.bfloat16)
    assert resolve_precision("auto", cuda).autocast
    assert not resolve_precision("fp32", cuda).autocast
    pure = resolve_precision("bf16_pure", cuda)
    assert pure.pure and not pure.autocast and pure.storage(trained=True) == torch.bfloat16
    mixed = resolve_precision("bfloat16", cpu)
    assert mixed.storage(trained=True) == torch.float32
    assert mixed.storage(trained=False) == torch.bfloat16
    assert resolve_precision("fp16", cpu).scales_loss and not mixed.scales_loss
    for bad in ("fp32_pure", "int8", "bf16-pure"):
        with pytest.raises(ValueError, match="dtype must be"):
            resolve_precision(bad, cpu)


def test_fp16_mixed_precision_scales_the_loss_and_resumes_the_scale(tmp_path):
    student = make_tiny_student(TASK.alphabet, seed=0, **SMALL | {"dtype": "fp16"})
    assert student.trainer.scaler is not None
    before = _weights(student)
    student.train(_examples(32))
    assert all(p.dtype == torch.float32 for p in student.model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, _weights(student), strict=True))
    scale = student.trainer.scaler.get_scale()
    student.save(tmp_path / "ckpt")
    again = make_tiny_student(TASK.alphabet, seed=0, **SMALL | {"dtype": "fp16"})
    again.load(tmp_path / "ckpt")
    assert again.trainer.scaler.get_scale() == scale


def test_take_perf_reports_tokens_per_second_once():
    student = make_tiny_student(TASK.alphabet, seed=0, **SMALL)
    assert student.take_perf() == {}
    student.train(_examples(32))
    student.predict(TASK.problems("val"))
    perf = student.take_perf()
    assert set(perf) == {"train_tokens_per_s", "eval_tokens_per_s"}  # no GPU: no memory
    assert perf["train_tokens_per_s"] > 0 and perf["eval_tokens_per_s"] > 0
    _, ids = student.codec.encode_prompts([p.prompt for p in TASK.problems("val")], Counter())
    prompts = sum(len(row) for row in ids)
    assert student.decoder.last_tokens > prompts  # the prompts plus what was generated
    assert student.take_perf() == {}  # taken: nothing since


@pytest.mark.parametrize("packed", [False, True])
def test_micro_batches_keep_to_the_token_budget_and_weigh_by_labelled_tokens(packed):
    from teachgym.students.encoding import labelled
    from teachgym.students.training import batch_cost, micro_batches

    student = make_tiny_student(TASK.alphabet, seed=0, **SMALL)
    batch = student.codec.encode_examples(_examples(16))
    budget = 3 * max(len(ids) for ids, _ in batch)
    chunks = micro_batches(batch, 2, budget, packed=packed, pack_width=24)
    assert len(chunks) > 2  # the budget cut the two accumulation chunks further
    assert [item for chunk, _ in chunks for item in chunk] == list(batch)  # order kept
    for chunk, share in chunks:
        assert batch_cost(chunk, packed, 24) <= budget
        assert share == sum(labelled(i) for i in chunk) / sum(labelled(i) for i in batch)
    assert sum(share for _, share in chunks) == pytest.approx(1.0)
    # An example over the budget runs alone rather than being cut.
    alone = micro_batches(batch[:3], 1, 1, packed=packed, pack_width=24)
    assert [len(chunk) for chunk, _ in alone] == [1, 1, 1]
