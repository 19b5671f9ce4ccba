"""The run directory: its layout, its JSONL files and its checkpoints, in one place.

```
config.yaml          the resolved config (resume reads it)
steps.jsonl          one StepRecord per step (deterministic: byte-identical on a rerun)
timings.jsonl        seconds per phase per step (kept apart: not deterministic)
perf.jsonl           the student's tokens/s and peak device memory per step (idem)
data/step_NNNN.jsonl          the accepted training examples of each step
predictions/step_NNNN.jsonl   the student's answer to every validation problem
checkpoint/          the newest complete checkpoint (COMPLETE written last)
summary.json  learning_curve.png  skills_heatmap.png  allocation.png
failures.jsonl  attempts.jsonl   (sweep trials: each failure, each attempt)
```

A checkpoint is written beside the current one (``checkpoint.tmp``), marked
:data:`COMPLETE` last, then swapped in by two renames, so a crash at any
moment leaves at least one complete checkpoint; :meth:`RunDir.find_checkpoint`
finds the newest wherever the crash left it. A directory whose start failed
(a config but no complete checkpoint) holds nothing worth keeping, and a new
run may replace it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from teachgym.config import ExperimentConfig, build_config, read_yaml

CONFIG = "config.yaml"
STEPS = "steps.jsonl"
TIMINGS = "timings.jsonl"
#: Per step, what a student that reports it measured (``ReportsPerf``): training and
#: evaluation tokens per second, peak device memory. Not deterministic, so never in STEPS.
PERF = "perf.jsonl"
SUMMARY = "summary.json"
DATA = "data"
PREDICTIONS = "predictions"
CHECKPOINT = "checkpoint"
#: Written last into a checkpoint directory: without it the directory is a torn write.
COMPLETE = "COMPLETE"
FAILURES = "failures.jsonl"
ATTEMPTS = "attempts.jsonl"
LEARNING_CURVE = "learning_curve.png"
SKILLS_HEATMAP = "skills_heatmap.png"
ALLOCATION = "allocation.png"
#: What a sweep trial reports to Ray Tune with each checkpoint (enough to resume from).
RESUMABLE = (CONFIG, STEPS, TIMINGS)

__all__ = [
    "CHECKPOINT",
    "COMPLETE",
    "PERF",
    "RunDir",
    "StepRecord",
    "append_jsonl",
    "read_jsonl",
    "write_jsonl",
]


class StepRecord(BaseModel):
    """One ``steps.jsonl`` row: what a step did and what it achieved.

    Step 0 is the untrained student after ``reset``. Everything here is a
    function of the config, the seed and the machine (no wall time), so a
    rerun writes the same bytes. Keys that only some runs have are left out
    when unset: ``llm`` (an LLM teacher's or generator's counters),
    ``length_truncated`` (examples cut at the student's length limits, when
    it has limits) and the test results of the last step.
    """

    model_config = ConfigDict(extra="forbid")

    step: int
    val_accuracy: float
    reward: float
    skills: dict[str, float]
    examples_accepted: int
    examples_made: int
    examples_total: int
    examples_used: dict[str, int]
    examples_by_skill: dict[str, dict[str, Any]]
    rejected: dict[str, int]
    budget_left: int
    train_loss: float | None
    terminated: bool
    truncated: bool
    llm: dict[str, Any] | None = None
    length_truncated: dict[str, int] | None = None
    test_accuracy: float | None = None
    test_skills: dict[str, float] | None = None

    #: Keys left out of the row when unset.
    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "llm",
        "length_truncated",
        "test_accuracy",
        "test_skills",
    )

    @classmethod
    def from_step(
        cls,
        info: dict[str, Any],
        *,
        reward: float = 0.0,
        terminated: bool = False,
        truncated: bool = False,
        examples_total: int = 0,
        teacher_stats: dict[str, Any] | None = None,
    ) -> StepRecord:
        """The record of a step from the env's ``info`` (step 0: from ``reset``)."""
        train = info.get("train", {})
        llm = dict(info["llm"]) if info.get("llm") else {}
        if teacher_stats:
            llm["teacher"] = teacher_stats
        cut = {k: int(v) for k, v in train.items() if k.startswith("truncated_")}
        test = info.get("test_report")
        return cls(
            step=info["step"],
            val_accuracy=info["accuracy"],
            reward=reward,
            skills={s: v["accuracy"] for s, v in info["report"].items()},
            examples_accepted=info.get("examples_accepted", 0),
            examples_made=info.get("examples_made", 0),
            examples_total=examples_total,
            examples_used=info["examples_used"],
            examples_by_skill=info.get("examples_by_skill", {}),
            rejected=info.get("rejected", {}),
            budget_left=info["budget_left"],
            train_loss=train.get("loss"),
            terminated=terminated,
            truncated=truncated,
            llm=llm or None,
            length_truncated=cut or None,
            test_accuracy=info.get("test_accuracy"),
            test_skills={s: v["accuracy"] for s, v in test.items()} if test else None,
        )

    def to_row(self) -> dict[str, Any]:
        """The JSON object written to ``steps.jsonl``."""
        row = self.model_dump()
        for key in self.OPTIONAL:
            if row[key] is None:
                del row[key]
        return row


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Rows as sorted-key JSON lines (the same bytes for the same rows)."""
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """One row, flushed to disk before returning (a crash keeps every finished step)."""
    with path.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; a line cut by a crash ends the list (it is replayed)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def _fsync_tree(path: Path) -> None:
    for item in sorted(path.rglob("*")):
        if item.is_file():
            with item.open("rb") as f:
                os.fsync(f.fileno())


def checkpoint_step(path: Path) -> int | None:
    """The env step a checkpoint directory holds, or None if it is incomplete."""
    marker = path / COMPLETE
    if not marker.is_file() or not (path / "state.json").is_file():
        return None
    try:
        return int(marker.read_text())
    except ValueError:
        return None


class RunDir:
    """One run directory (see the module docstring for its layout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- files ---------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def data_file(self, step: int) -> Path:
        return self.path / DATA / f"step_{step:04d}.jsonl"

    def predictions_file(self, step: int) -> Path:
        return self.path / PREDICTIONS / f"step_{step:04d}.jsonl"

    def rows(self) -> list[dict[str, Any]]:
        """The ``steps.jsonl`` rows written so far."""
        return read_jsonl(self.path / STEPS)

    def read_config(self) -> ExperimentConfig:
        """The config the run was started with."""
        where = f"{str(self.path / CONFIG)!r}"
        return build_config(read_yaml((self.path / CONFIG).read_text(), where) or {})

    def summary(self) -> dict[str, Any] | None:
        """``summary.json`` of a finished run, else None."""
        path = self.path / SUMMARY
        return dict(json.loads(path.read_text())) if path.exists() else None

    # -- state of the directory -------------------------------------------------
    def has_config(self) -> bool:
        return (self.path / CONFIG).is_file()

    def holds_run(self) -> bool:
        """A run started here and got as far as its first checkpoint (or is finished)."""
        return self.find_checkpoint() is not None or (self.path / SUMMARY).exists()

    def failed_start(self) -> bool:
        """A run's files are here but no checkpoint: its start failed, nothing to resume."""
        return not self.holds_run() and any(
            (self.path / name).exists() for name in (CONFIG, STEPS, DATA, PREDICTIONS)
        )

    def create(self, config_text: str) -> None:
        """A fresh run's directory, replacing what a failed start left behind."""
        self.discard()
        for sub in (DATA, PREDICTIONS):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        (self.path / CONFIG).write_text(config_text)

    def discard(self) -> None:
        """Remove every file a run writes here (and the directory, if then empty)."""
        for name in (DATA, PREDICTIONS, CHECKPOINT, CHECKPOINT + ".tmp", CHECKPOINT + ".old"):
            shutil.rmtree(self.path / name, ignore_errors=True)
        for name in (
            CONFIG,
            STEPS,
            TIMINGS,
            PERF,
            SUMMARY,
            LEARNING_CURVE,
            SKILLS_HEATMAP,
            ALLOCATION,
        ):
            (self.path / name).unlink(missing_ok=True)
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def truncate(self, step: int) -> list[dict[str, Any]]:
        """Drop ``steps.jsonl``, ``timings.jsonl`` and ``perf.jsonl`` rows newer than
        ``step``; the ``steps.jsonl`` rows kept."""
        rows = [r for r in self.rows() if r["step"] <= step]
        write_jsonl(self.path / STEPS, rows)
        timings = read_jsonl(self.path / TIMINGS)
        write_jsonl(self.path / TIMINGS, [t for t in timings if t["step"] <= step])
        if (self.path / PERF).exists():
            perf = read_jsonl(self.path / PERF)
            write_jsonl(self.path / PERF, [p for p in perf if p["step"] <= step])
        return rows

    # -- checkpoints -----------------------------------------------------------------
    def find_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, wherever a crash left it.

        A crash inside :meth:`write_checkpoint` can leave the newest complete
        checkpoint as ``checkpoint/``, ``checkpoint.tmp/`` (written, not yet
        swapped in) or ``checkpoint.old/`` (the previous one, when the crash came
        between the two renames); incomplete directories are ignored.
        """
        best: tuple[int, Path] | None = None
        for name in (CHECKPOINT, CHECKPOINT + ".tmp", CHECKPOINT + ".old"):
            step = checkpoint_step(self.path / name)
            if step is not None and (best is None or step > best[0]):
                best = (step, self.path / name)
        return None if best is None else best[1]

    @contextmanager
    def write_checkpoint(self, step: int) -> Iterator[Path]:
        """Yield a directory to fill; on success it is marked complete and swapped in."""
        tmp = self.path / (CHECKPOINT + ".tmp")
        old = self.path / (CHECKPOINT + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
        _fsync_tree(tmp)
        (tmp / COMPLETE).write_text(str(step))
        current = self.path / CHECKPOINT
        if current.exists():
            shutil.rmtree(old, ignore_errors=True)
            current.rename(old)
        tmp.rename(current)
        shutil.rmtree(old, ignore_errors=True)

    def adopt(self, ckpt: Path) -> Path:
        """Move the checkpoint being resumed into ``checkpoint/`` and drop the others."""
        current = self.path / CHECKPOINT
        if ckpt != current:
            shutil.rmtree(current, ignore_errors=True)
            ckpt.rename(current)
        for name in (CHECKPOINT + ".tmp", CHECKPOINT + ".old"):
            shutil.rmtree(self.path / name, ignore_errors=True)
        return current

    def export_resumable(self, dest: Path) -> None:
        """Copy what a resume needs (the checkpoint and :data:`RESUMABLE`) into ``dest``."""
        shutil.copytree(self.path / CHECKPOINT, dest / CHECKPOINT)
        for name in RESUMABLE:
            shutil.copy2(self.path / name, dest / name)

    def import_resumable(self, source: Path) -> bool:
        """Seed this directory from an export unless it already holds a newer checkpoint.

        Returns whether it copied. On shared storage the run directory
        survives a failure and is at least as new; on a node's local disk it
        may be gone, and the export is all there is.
        """
        ours = self.find_checkpoint()
        ours_step = checkpoint_step(ours) if ours is not None else -1
        theirs = checkpoint_step(source / CHECKPOINT)
        if theirs is None or theirs <= (ours_step if ours_step is not None else -1):
            return False
        self.path.mkdir(parents=True, exist_ok=True)
        for sub in (DATA, PREDICTIONS):
            (self.path / sub).mkdir(exist_ok=True)
        shutil.rmtree(self.path / CHECKPOINT, ignore_errors=True)
        shutil.copytree(source / CHECKPOINT, self.path / CHECKPOINT)
        for name in RESUMABLE:
            shutil.copy2(source / name, self.path / name)
        return True
