"""The student's side of an evaluation engine that holds its own copy of the model.

With ``eval_backend: vllm`` training stays in the student, and ``predict``
hands the current weights to one engine of the base model kept for the run
(:class:`~teachgym.students.vllm_eval.VLLMEvaluator`, or what an
``evaluator_factory`` builds). :class:`EvaluatorSync` owns that engine's
lifecycle: it builds it on the first ``predict`` (an engine takes tens of
seconds), puts it to sleep around training, writes changed weights to a new
directory before the next ``predict``, carries the engine's adapter-id counter
through checkpoints, and deletes what it wrote on ``close``.

The evaluator contract: ``predict(problems, adapter_dir)``, ``load_weights(dir)``,
``before_train()``/``after_train()``, ``state_dict()``/``load_state_dict()``,
``close()``, and optionally an ``info`` dict with ``truncated_prompts``
(:class:`ReportsTruncation`).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from teachgym.students.checkpoints import save_quietly
from teachgym.students.vllm_eval import VLLMEvaluator
from teachgym.types import Problem


@runtime_checkable
class ReportsTruncation(Protocol):
    """``info``: the evaluator's counters, of which ``truncated_prompts`` (prompts cut
    to fit the engine's context) is added to the step's truncation count."""

    info: Mapping[str, Any]


#: How many of the weights/adapter directories written for the evaluator are kept.
KEEP_EVAL_DIRS = 2


class EvaluatorSync:
    """Builds, feeds and closes a student's evaluator.

    Args:
        factory: builds the evaluator from the student; ``None``:
            ``VLLMEvaluator.from_student(student, **vllm_kwargs)``.
        vllm_kwargs: more ``VLLMEvaluator.from_student`` arguments.
        eval_dir: where weights for the engine are written; a private
            temporary directory (deleted by :meth:`close`) by default.
    """

    def __init__(
        self,
        factory: Callable[[Any], Any] | None = None,
        vllm_kwargs: Mapping[str, Any] | None = None,
        eval_dir: str | Path | None = None,
    ) -> None:
        self.factory = factory
        self.vllm_kwargs: dict[str, Any] = dict(vllm_kwargs or {})
        #: The evaluator, once the first ``predict`` built it.
        self.evaluator: Any | None = None
        self.root: Path | None = Path(eval_dir) if eval_dir is not None else None
        self.own_root = eval_dir is None  # a temp dir we made is ours to delete
        # True while the engine may hold other weights than the student's model. It
        # starts true: the model handed in need not equal the checkpoint on disk.
        self.dirty = True
        self.version = 0  # the n of the last ``step_<n>`` directory
        self.dirs: list[Path] = []
        #: The adapter directory now evaluated (LoRA), else ``None``.
        self.adapter: Path | None = None
        # The evaluator's id counter from a checkpoint loaded before the evaluator exists.
        self.pending_state: dict[str, Any] | None = None

    def mark_changed(self) -> None:
        """The student's weights changed: the next ``predict`` hands them over first."""
        self.dirty = True

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Around a ``train`` call: the engine sleeps (on a GPU it gives the trainer its
        memory) and the weights count as changed, even when training fails half-way (the
        weights may have moved, and a sleeping engine would refuse ``predict``)."""
        evaluator = self.evaluator
        if evaluator is not None:
            evaluator.before_train()
        try:
            yield
        finally:
            self.dirty = True
            if evaluator is not None:
                evaluator.after_train()

    def ensure(self, student: Any) -> Any:
        """The evaluator, built on first use."""
        if self.evaluator is None:
            if self.factory is not None:
                evaluator = self.factory(student)
            else:
                evaluator = VLLMEvaluator.from_student(student, **self.vllm_kwargs)
            if self.pending_state is not None:
                evaluator.load_state_dict(self.pending_state)
                self.pending_state = None
            self.evaluator = evaluator
        return self.evaluator

    def sync(self, student: Any) -> Path | None:
        """Hand changed weights to the evaluator; returns the adapter directory to use.

        Each change goes to a new ``step_<n>`` directory rather than over the
        last one: the engine (or a snapshot it takes) may still read the old
        one, and a path that silently changes content is how stale adapters
        get served. Full weights are written with ``save_pretrained``, which
        keeps ``embed_tokens`` of a tied model (vLLM's Llama loader reads the
        embedding and skips a tied ``lm_head``). Directories beyond the last
        :data:`KEEP_EVAL_DIRS` are deleted.
        """
        evaluator = self.ensure(student)
        if not self.dirty:
            return self.adapter
        self.version += 1
        kind = "adapters" if student.lora else "weights"
        folder = self._workdir() / kind / f"step_{self.version}"
        if folder.exists():  # left by a previous student sharing eval_dir
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        save_quietly(student.model, folder)
        if student.lora:
            self.adapter = folder
        else:
            evaluator.load_weights(folder)
            self.adapter = None
        self.dirs.append(folder)
        while len(self.dirs) > KEEP_EVAL_DIRS:
            shutil.rmtree(self.dirs.pop(0), ignore_errors=True)
        self.dirty = False
        return self.adapter

    def predict(
        self, student: Any, problems: Sequence[Problem], truncated: Counter[str]
    ) -> list[str]:
        """The evaluator's greedy completions for the student's current weights."""
        evaluator = self.ensure(student)
        adapter = self.sync(student)
        out = list(evaluator.predict(problems, adapter))
        if isinstance(evaluator, ReportsTruncation):
            truncated["truncated_prompts"] += int(evaluator.info.get("truncated_prompts", 0))
        return out

    def state_dict(self) -> dict[str, Any] | None:
        """The evaluator's state for a checkpoint (its id counter), if there is any."""
        state = self.evaluator.state_dict() if self.evaluator is not None else self.pending_state
        return None if state is None else dict(state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpoint's evaluator state now, or when the evaluator is built."""
        if self.evaluator is not None:
            self.evaluator.load_state_dict(state)
        else:
            self.pending_state = dict(state)

    def _workdir(self) -> Path:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="teachgym-student-"))
        return self.root

    def close(self) -> None:
        """Shut the engine down and delete the weights written for it; safe to call twice.

        An ``eval_dir`` the caller chose keeps its directory; only the
        ``step_<n>`` directories written here are removed.
        """
        evaluator, self.evaluator = self.evaluator, None
        try:
            if evaluator is not None:
                evaluator.close()
        finally:
            for folder in self.dirs:
                shutil.rmtree(folder, ignore_errors=True)
            self.dirs = []
            if self.root is not None and self.own_root:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
            self.dirty = True
