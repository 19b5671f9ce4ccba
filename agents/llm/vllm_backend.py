"""A backend on an in-process ``vllm.LLM`` engine (no server, no HTTP).

``LLM.chat`` blocks and is not safe to call from two threads at once, but it is far
faster on one batch of many conversations than on many batches of one. So requests
that arrive together (the client's concurrent attempts) are queued and one worker
thread runs them as a single ``chat`` call, handing each reply back to the event loop
that asked. Structured replies use ``structured_outputs`` (vLLM >= 0.12 removed
``guided_json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from teachgym.agents.llm.types import LLMCallError, RawReply, Sampling
from teachgym.vllm_support import quiet_vllm


def sampling_kwargs(sampling: Sampling, schema: dict[str, Any] | None) -> dict[str, Any]:
    """The ``SamplingParams`` arguments for one request; ``structured_outputs`` holds the
    ``StructuredOutputsParams`` arguments. Pure, so it is tested without vLLM."""
    kwargs: dict[str, Any] = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": sampling.seed,
        "stop": list(sampling.stop) or None,
    }
    if schema is not None:
        kwargs["structured_outputs"] = {"json": schema}
    return kwargs


def raw_reply(output: Any) -> RawReply:
    """A ``RawReply`` from a ``vllm.RequestOutput`` (read by attribute, so a stand-in
    object serves in tests)."""
    completions = getattr(output, "outputs", None) or []
    prompt_tokens = len(getattr(output, "prompt_token_ids", None) or [])
    if not completions:
        return RawReply(text=None, prompt_tokens=prompt_tokens)
    first = completions[0]
    return RawReply(
        text=first.text,
        finish_reason=first.finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=len(getattr(first, "token_ids", None) or []),
    )


@dataclass
class _Job:
    messages: list[dict[str, str]]
    params: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[RawReply]


class VLLMEngineBackend:
    """Sends requests to an in-process vLLM engine, built here (it takes tens of
    seconds, which must not count against the first request's timeout)."""

    def __init__(self, model: str, *, batch_wait_s: float = 0.005, **engine_kwargs: Any) -> None:
        try:
            quiet_vllm(offline=False)  # a hub id is allowed here; usage statistics never are
            import vllm
            from vllm.platforms import current_platform
            from vllm.sampling_params import SamplingParams, StructuredOutputsParams
        except ImportError as err:
            raise ImportError(
                "VLLMEngineBackend needs vLLM >= 0.12: pip install teachgym[vllm] "
                "(or an OpenAI-compatible vLLM server with OpenAIBackend)"
            ) from err
        self.model = model
        self._sampling_params = SamplingParams
        self._structured_params = StructuredOutputsParams
        if current_platform.is_cpu():
            # Seeded requests must not be prefilled in chunks on the CPU (see
            # teachgym.agents.llm.serve.cpu_server_args); what the caller set wins.
            engine_kwargs.setdefault("enable_chunked_prefill", False)
            engine_kwargs.setdefault(
                "max_num_batched_tokens", int(engine_kwargs.get("max_model_len") or 8192)
            )
        self.engine = vllm.LLM(model=model, **engine_kwargs)
        self.batch_wait_s = batch_wait_s
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()

    def params(self, sampling: Sampling, schema: dict[str, Any] | None) -> Any:
        kwargs = sampling_kwargs(sampling, schema)
        structured = kwargs.pop("structured_outputs", None)
        if structured is not None:
            kwargs["structured_outputs"] = self._structured_params(**structured)
        return self._sampling_params(**kwargs)

    async def send(
        self,
        messages: Sequence[dict[str, str]],
        sampling: Sampling,
        schema: dict[str, Any] | None,
    ) -> RawReply:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RawReply] = loop.create_future()
        job = _Job([dict(m) for m in messages], self.params(sampling, schema), loop, future)
        self._ensure_worker()
        self._jobs.put(job)
        return await future

    def close(self) -> None:
        """Stop the engine's core process now rather than at interpreter exit, where its
        monitor thread would log into streams that are already closed."""
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
            shutdown = getattr(core, "shutdown", None)
            if shutdown is not None:
                shutdown()

    def _ensure_worker(self) -> None:
        with self._worker_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=self._serve, name="vllm-batcher", daemon=True
                )
                self._worker.start()

    def _serve(self) -> None:
        while True:
            batch = [self._jobs.get()]
            time.sleep(self.batch_wait_s)  # let the rest of a concurrent wave arrive
            while True:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            live = [job for job in batch if not job.future.done()]  # timed-out ones dropped
            if live:
                self._run(live)

    def _run(self, batch: list[_Job]) -> None:
        try:
            outputs = self.engine.chat(
                [job.messages for job in batch],
                [job.params for job in batch],
                use_tqdm=False,
            )
            results: list[RawReply | BaseException] = [raw_reply(o) for o in outputs]
        except Exception as err:  # the engine failed this batch; each request may retry
            failure = LLMCallError("server_error", f"vLLM engine: {err}"[:300])
            results = [failure] * len(batch)
        for job, result in zip(batch, results, strict=True):
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                job.loop.call_soon_threadsafe(_settle, job.future, result)


def _settle(future: asyncio.Future[RawReply], result: RawReply | BaseException) -> None:
    if future.done():  # cancelled by the client's timeout meanwhile
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
