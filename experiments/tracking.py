"""Optional Weights & Biases logging of the same rows the run directory holds.

Offline unless the user configured wandb (``WANDB_MODE``, ``WANDB_API_KEY``
or ``wandb login``): a run never needs a network, and ``wandb sync`` uploads
later. The wandb run
id is derived from the run directory, so a resumed run continues the same
wandb run instead of starting a duplicate.
"""

from __future__ import annotations

import hashlib
import netrc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from teachgym.config import ExperimentConfig, WandbSettings
from teachgym.errors import MissingDependency


def row_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A ``steps.jsonl`` row flattened to scalar metrics (``skill/add/carry`` ...).

    >>> row_metrics({"step": 2, "val_accuracy": 0.5, "reward": 0.1, "examples_total": 10,
    ...              "budget_left": 5, "skills": {"add": 0.75}, "rejected": {"duplicate": 2}})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'val_accuracy': 0.5, 'reward': 0.1, 'examples_total': 10.0, 'budget_left': 5.0,
     'skill/add': 0.75, 'rejected/duplicate': 2.0}
    """
    out: dict[str, float] = {}
    for key in (
        "val_accuracy",
        "reward",
        "examples_total",
        "budget_left",
        "train_loss",
        "test_accuracy",
    ):
        if row.get(key) is not None:
            out[key] = float(row[key])
    for skill, acc in row.get("skills", {}).items():
        out[f"skill/{skill}"] = float(acc)
    for reason, n in row.get("rejected", {}).items():
        out[f"rejected/{reason}"] = float(n)
    return out


def wandb_mode() -> str:
    """``WANDB_MODE`` if set; online when an API key is configured; offline otherwise.

    A run never needs a network: without a key it logs offline, and ``wandb
    sync`` uploads later.
    """
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


#: Rows of each per-step sample table: generated examples and student errors.
TABLE_ROWS = 16


class WandbTracker:
    """Logs each step row, sample tables and the summary at the end, to a wandb run.

    Args:
        config: the run's config (logged as the wandb run's config); its
            ``wandb`` mapping gives the project, entity, tags, notes and mode.
        run_dir: the run directory; wandb's files go inside it, and its path
            fixes the wandb run id, so a resumed run continues the same run.
        group: the wandb group (a sweep's name: one run per trial, grouped).
    """

    def __init__(self, config: ExperimentConfig, run_dir: Path, group: str | None = None) -> None:
        try:
            import wandb
        except ImportError:
            raise MissingDependency("wandb logging (config key wandb)", "wandb") from None
        self._wandb = wandb
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
        settings = config.wandb_settings or WandbSettings()
        self._run = wandb.init(
            project=settings.project or os.environ.get("WANDB_PROJECT", "teachgym"),
            entity=settings.entity,
            tags=list(settings.tags) or None,
            notes=settings.notes,
            dir=str(run_dir),
            id=run_id,
            resume="allow",
            mode=settings.mode or wandb_mode(),  # type: ignore[arg-type]
            group=group,
            config=config.model_dump(mode="json"),
            name=f"{config.teacher}-seed{config.seed}",
            # Leave the process's stdout alone: wandb's console capture wraps
            # sys.stdout, which swallows output of the caller (and of pytest).
            settings=wandb.Settings(console="off"),
        )

    def log_row(
        self,
        row: dict[str, Any],
        examples: Sequence[Any] = (),
        errors: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Scalars of a step, plus tables of some of its examples and the student's errors."""
        data: dict[str, Any] = dict(row_metrics(row))
        if examples:
            table = self._wandb.Table(columns=["skill", "prompt", "completion"])
            for e in list(examples)[:TABLE_ROWS]:
                table.add_data(e.skill, e.prompt, e.completion)
            data["samples/examples"] = table
        if errors:
            table = self._wandb.Table(columns=["skill", "prompt", "student", "gold"])
            for e in list(errors)[:TABLE_ROWS]:
                table.add_data(e["skill"], e["prompt"], e["student_answer"], e["gold_answer"])
            data["samples/errors"] = table
        self._run.log(data, step=int(row["step"]))

    def finish(self, summary: dict[str, Any]) -> None:
        for key, value in summary.items():
            if isinstance(value, int | float):
                self._run.summary[key] = value
        self.close()

    def close(self, exit_code: int = 0) -> None:
        """Finish the wandb run (a resumed run reopens it by its id)."""
        self._run.finish(exit_code=exit_code)

    @property
    def run(self) -> Any:
        return self._run
