"""Optional Weights & Biases logging of the same rows the run directory holds.

Offline unless the user configured wandb (``WANDB_MODE``, ``wandb login``):
a run never needs a network, and ``wandb sync`` uploads later. The wandb run
id is derived from the run directory, so a resumed run continues the same
wandb run instead of starting a duplicate.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from teachgym.config import ExperimentConfig


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


class WandbTracker:
    """Logs each step row, and the summary at the end, to a wandb run."""

    def __init__(self, config: ExperimentConfig, run_dir: Path) -> None:
        try:
            import wandb
        except ImportError as err:
            raise RuntimeError(
                "wandb=true needs the wandb package: pip install 'teachgym[wandb]'"
            ) from err
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "teachgym"),
            dir=str(run_dir),
            id=run_id,
            resume="allow",
            mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
            config=config.model_dump(),
            name=f"{config.teacher}-seed{config.seed}",
            # Leave the process's stdout alone: wandb's console capture wraps
            # sys.stdout, which swallows output of the caller (and of pytest).
            settings=wandb.Settings(console="off"),
        )

    def log_row(self, row: dict[str, Any]) -> None:
        self._run.log(row_metrics(row), step=int(row["step"]))

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
