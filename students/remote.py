"""A student in a Ray actor, and the proxy that makes it look local.

:class:`StudentWorker` builds any :class:`~teachgym.students.base.Student`
inside the actor, through the assembly's builder, from the config's names
(so a user's ``my_pkg:MyStudent`` is imported there, where the GPU is); the
builder also sets that process's state: torch's thread count and the global
RNG. :class:`StudentProxy` implements the
``Student`` protocol in the driver by calling it, so the environment cannot
tell the difference. Checkpoints travel as bytes: ``StudentProxy.save(path)``
writes on the driver's disk what the worker saved on its own, which is how a
remote student is checkpointed by the driver without shared storage.

Evaluation runs in the student's actor by default (no weights to move). With
``resources.evaluation.workers: N`` the weights are broadcast through Ray's
object store after each change, and the split is cut into shards on the
student's evaluation-batch boundaries, so every batch is the batch one worker
would decode and the predictions equal one worker's.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from teachgym.envs.evaluation import score_outputs
from teachgym.envs.tasks.base import TaskCapabilities
from teachgym.students.base import BatchesEvaluation, HasHorizon
from teachgym.types import Example, Problem

__all__ = [
    "WORKER_CALLS",
    "BatchesEvaluation",
    "StudentProxy",
    "StudentWorker",
    "pack_dir",
    "unpack_dir",
]

_TORCH_RNG = "worker_torch_rng.pt"

#: The student methods the proxy runs through :meth:`StudentWorker.call` (a remote
#: procedure call by name): the worker refuses any other name, so an actor runs only
#: what the ``Student`` protocol and its horizon hook define.
WORKER_CALLS = frozenset({"train", "reset", "set_horizon"})


def pack_dir(path: Path) -> bytes:
    """A directory as an uncompressed tar archive in memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for item in sorted(path.rglob("*")):
            tar.add(item, arcname=str(item.relative_to(path)), recursive=False)
    return buffer.getvalue()


def unpack_dir(data: bytes, path: Path) -> None:
    """Write an archive from :func:`pack_dir` into ``path`` (created if missing)."""
    path.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: refuse links out of path
            tar.extractall(path, filter="data")
        else:  # pragma: no cover
            tar.extractall(path)  # the archive comes from our own worker


class StudentWorker:
    """Builds and serves one student inside a Ray actor.

    Args:
        build: called once in the actor as ``build(config, threads)``; returns the
            task and the student (the assembly's builder, which also sets this
            process's threads and seeds as the local runner does).
        config: the experiment config as a dict (``ExperimentConfig.model_dump()``).
        threads: torch threads for this process (from the actor's ``num_cpus``).
    """

    def __init__(
        self,
        build: Callable[[dict[str, Any], int], tuple[Any, Any]],
        config: dict[str, Any],
        threads: int,
    ) -> None:
        task, student = build(config, threads)
        #: Built from the same config as the driver's, so it scores as the driver would.
        self.task = task
        self.caps = TaskCapabilities.of(task)
        self.student = student

    def ready(self) -> dict[str, Any]:
        """Where the worker runs and what evaluation batches it decodes in."""
        import ray

        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            **self.capabilities(),
        }

    def capabilities(self) -> dict[str, Any]:
        """What the proxy needs to know of the student: ``eval_batch_size`` (``None`` for
        a student that does not batch its evaluation, see :class:`BatchesEvaluation`) and
        ``set_horizon`` (whether it takes a horizon, :class:`~.base.HasHorizon`)."""
        student = self.student
        batch = student.eval_batch_size if isinstance(student, BatchesEvaluation) else None
        return {"eval_batch_size": batch, "set_horizon": isinstance(student, HasHorizon)}

    def call(self, method: str, *args: Any) -> Any:
        """The student's ``method`` on ``args``: one of :data:`WORKER_CALLS`, else
        ``ValueError`` (a name from the driver is never looked up unchecked)."""
        if method not in WORKER_CALLS:
            raise ValueError(
                f"a student worker runs only {sorted(WORKER_CALLS)} by name, not {method!r}"
            )
        return getattr(self.student, method)(*args)

    def predict(self, problems: Sequence[Problem]) -> list[str]:
        return list(self.student.predict(problems))

    def predict_scored(self, problems: Sequence[Problem]) -> tuple[list[str], list[bool]]:
        """Completions and their scores, both made here: scoring (a sandbox per program for
        the ``code`` task) runs on the evaluation workers' CPUs, not the driver's."""
        outputs = self.predict(problems)
        return outputs, score_outputs(self.caps, problems, outputs)

    def save_bytes(self) -> bytes:
        """The student's checkpoint, plus this process's torch RNG state, as bytes."""
        with tempfile.TemporaryDirectory() as tmp:
            self.student.save(Path(tmp))
            torch.save(torch.get_rng_state(), Path(tmp) / _TORCH_RNG)
            return pack_dir(Path(tmp))

    def load_bytes(self, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            unpack_dir(data, Path(tmp))
            self.student.load(Path(tmp))
            rng = Path(tmp) / _TORCH_RNG
            if rng.exists():
                torch.set_rng_state(torch.load(rng, weights_only=True))


class StudentProxy:
    """The ``Student`` protocol, served by a :class:`StudentWorker` actor.

    Args:
        actor: the student's actor handle.
        evaluators: actors (also ``StudentWorker``) that share evaluation;
            empty means the student's actor evaluates.
    """

    def __init__(self, actor: Any, evaluators: Sequence[Any] = ()) -> None:
        import ray

        self._ray = ray
        self.actor = actor
        self.evaluators = list(evaluators)
        info = ray.get([a.ready.remote() for a in [actor, *self.evaluators]])
        self.worker_info = info[0]
        self.evaluator_info = info[1:]
        self._eval_batch = info[0].get("eval_batch_size")
        self._version = 0  # bumps whenever the weights change
        self._synced = -1  # the version the evaluators hold
        self._problem_refs: dict[int, tuple[Sequence[Problem], Any]] = {}

    def _call(self, method: str, *args: Any) -> Any:
        return self._ray.get(self.actor.call.remote(method, *args))

    # -- the Student protocol ------------------------------------------------
    def train(self, examples: Sequence[Example]) -> dict[str, float]:
        self._version += 1
        return dict(self._call("train", list(examples)))

    def predict(self, problems: Sequence[Problem]) -> list[str]:
        return [output for part in self._per_shard("predict", problems) for output in part]

    def predict_scored(self, problems: Sequence[Problem]) -> tuple[list[str], list[bool]]:
        """Like :meth:`predict`, plus each output's score, computed by the worker's own task
        (built from the same config), shard by shard on the evaluation workers."""
        outputs: list[str] = []
        scores: list[bool] = []
        for part_outputs, part_scores in self._per_shard("predict_scored", problems):
            outputs.extend(part_outputs)
            scores.extend(part_scores)
        return outputs, scores

    def save(self, path: str | Path) -> None:
        unpack_dir(self._ray.get(self.actor.save_bytes.remote()), Path(path))

    def load(self, path: str | Path) -> None:
        self._version += 1
        self._ray.get(self.actor.load_bytes.remote(pack_dir(Path(path))))

    def reset(self) -> None:
        self._version += 1
        self._call("reset")

    def set_horizon(self, examples: int | None) -> None:
        if self.worker_info["set_horizon"]:  # only students that anneal have the hook
            self._call("set_horizon", examples)

    # -- evaluation shards ---------------------------------------------------------
    def _per_shard(self, method: str, problems: Sequence[Problem]) -> list[Any]:
        """The worker ``method`` (``predict`` or ``predict_scored``) on the whole split by the
        student's actor, or on each evaluator's shard; the results in shard order."""
        if not self.evaluators:
            ref = self._problems_ref(problems)
            return [self._ray.get(getattr(self.actor, method).remote(ref))]
        self._sync_evaluators()
        futures = [
            getattr(worker, method).remote(problems[lo:hi])
            for worker, (lo, hi) in zip(self.evaluators, self._shards(len(problems)), strict=False)
        ]
        return list(self._ray.get(futures))

    def _problems_ref(self, problems: Sequence[Problem]) -> Any:
        """Put a split into the object store once; the env passes the same list every step."""
        cached = self._problem_refs.get(id(problems))
        if cached is not None and cached[0] is problems:
            return cached[1]
        ref = self._ray.put(list(problems))
        self._problem_refs[id(problems)] = (problems, ref)
        return ref

    def _sync_evaluators(self) -> None:
        if self._synced == self._version:
            return
        state = self._ray.put(self._ray.get(self.actor.save_bytes.remote()))
        self._ray.get([w.load_bytes.remote(state) for w in self.evaluators])
        self._synced = self._version

    def _shards(self, n: int) -> list[tuple[int, int]]:
        """Contiguous shards, one per evaluator, cut on evaluation-batch boundaries."""
        unit = self._eval_batch or 1
        batches = -(-n // unit)
        per = -(-batches // len(self.evaluators))
        return [
            (min(n, i * per * unit), min(n, (i + 1) * per * unit))
            for i in range(len(self.evaluators))
        ]
