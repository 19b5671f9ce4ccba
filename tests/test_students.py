"""The HF student: SFT masking, decoding, determinism, save/load, modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from teachgym.envs.tasks.arithmetic import ArithmeticTask
from teachgym.errors import ConfigError
from teachgym.students import HFStudent, Student, build_char_tokenizer, make_tiny_student
from teachgym.students.tokenizer import check_covered
from teachgym.types import Example, Problem, Provenance

TASK = ArithmeticTask(skills=["add/no_carry", "cmp/3d"], val_per_skill=8, test_per_skill=8)
SMALL = {"hidden_size": 32, "layers": 1, "heads": 2, "batch_size": 16}


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
    )
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
    student = make_tiny_student(TASK.alphabet, seed=0, device="cuda", **SMALL)
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
