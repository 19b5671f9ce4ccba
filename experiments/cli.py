"""The ``teachgym`` command line: ``run`` one episode, ``compare`` or ``sweep`` teachers.

Each job has one entry point: ``teachgym run`` for an episode (or
``--resume`` to finish a killed one), ``teachgym compare`` for a leaderboard
over teachers and seeds in this process, and ``teachgym sweep`` for the same
over Ray Tune (``--grid`` adds config values, ``--resume`` finishes a killed
sweep). A user's mistake exits 2 with one line naming it; anything else exits
1 with its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from teachgym.config import load_config, parse_cli_overrides
from teachgym.errors import ConfigError, UserError


def _split_config_and_overrides(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value ...]``: the first item without '=' is the config path."""
    config: str | None = None
    overrides: list[str] = []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config is None:
            config = item
        else:
            raise ConfigError(f"unexpected argument {item!r}: overrides are key=value")
    return config, overrides


def _default_out(kind: str, config_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{kind}-{config_name}-{stamp}"


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from teachgym.experiments.runner import resume_experiment, run_experiment

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.resume:
        if args.items:
            raise ConfigError(
                "--resume takes no config or overrides: the run keeps its config "
                "(only --threads may change, with a warning)"
            )
        resume_experiment(args.resume, console=console, threads=args.threads)
        return 0
    config_path, overrides = _split_config_and_overrides(args.items)
    config = load_config(config_path, parse_cli_overrides(overrides))
    if args.threads is not None:
        config = config.model_copy(update={"threads": args.threads})
    out = (
        Path(args.out)
        if args.out
        else _default_out("run", Path(config_path).stem if config_path else "default")
    )
    console.print(
        f"teachgym run: {config.env}, teacher={config.teacher}, seed={config.seed} -> {out}"
    )
    run_experiment(config, out, console=console)
    return 0


def _sweep_spec(args: argparse.Namespace, *, threads_default: int | None) -> tuple[Any, Path]:
    from teachgym.experiments.sweep import SweepSpec, parse_grid

    config_path, overrides = _split_config_and_overrides(args.items)
    config = load_config(config_path, parse_cli_overrides(overrides))
    if config.threads is None and threads_default is not None:
        config = config.model_copy(update={"threads": threads_default})
    teachers = [t.strip() for t in (args.teachers or "").split(",") if t.strip()]
    if not teachers:
        raise ConfigError("--teachers needs at least one teacher name")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    spec = SweepSpec(config, teachers, args.seeds, parse_grid(args.grid or []), args.max_failures)
    kind = args.command
    out = (
        Path(args.out)
        if args.out
        else _default_out(kind, Path(config_path).stem if config_path else "default")
    )
    return spec, out


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from teachgym.experiments.sweep import run_sweep

    spec, out = _sweep_spec(args, threads_default=None)
    run_sweep(spec, out, executor="serial", console=console)
    return 0


def cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    from teachgym.experiments.sweep import resume_sweep, run_sweep

    if args.resume:
        if args.items or args.teachers or args.grid:
            raise ConfigError("--resume takes no config, overrides, --teachers or --grid")
        resume_sweep(args.resume, console=console)
        return 0
    spec, out = _sweep_spec(args, threads_default=1)
    console.print(
        f"teachgym sweep: {len(spec.teachers)} teacher(s) x {spec.seeds} seed(s)"
        + (f" x grid {spec.grid}" if spec.grid else "")
        + f" -> {out}"
    )
    run_sweep(spec, out, executor="tune", console=console)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="teachgym", description="Teacher agents that make training data for students."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one episode into a run directory")
    run.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] [key=value ...]",
        help="a YAML config (default: the packaged one) and overrides",
    )
    run.add_argument("--out", help="run directory (default: runs/run-<config>-<time>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="finish a killed run from its checkpoint")
    run.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (the same as threads=N; with --resume, overrides the recorded "
        "count with a warning)",
    )
    run.set_defaults(func=cmd_run)
    for name, func, helptext in (
        ("compare", cmd_compare, "teachers x seeds, one after another here; a leaderboard"),
        ("sweep", cmd_sweep, "teachers x seeds x grid as Ray Tune trials; a leaderboard"),
    ):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]")
        cmd.add_argument("--teachers", required=name == "compare", help="comma-separated names")
        cmd.add_argument("--seeds", type=int, default=3, help="seeds per teacher (0..N-1)")
        cmd.add_argument(
            "--grid",
            action="append",
            metavar="KEY=V1,V2",
            help="config values to sweep (repeatable), e.g. teacher_kwargs.gate=0.3,0.5",
        )
        cmd.add_argument("--out", help=f"output directory (default: runs/{name}-<config>-<time>)")
        cmd.add_argument(
            "--max-failures",
            type=int,
            default=2,
            help="retries of a failed trial, from its last checkpoint (sweep)",
        )
        if name == "sweep":
            cmd.add_argument("--resume", metavar="SWEEP_DIR", help="finish a killed sweep")
        cmd.set_defaults(func=func)
    return parser


def _show_progress_logs() -> None:
    """Show teachgym's INFO messages on stderr (long work before the first step, such as
    skill discovery, says what it is doing); once, and only teachgym's loggers."""
    logger = logging.getLogger("teachgym")
    if not any(getattr(h, "_teachgym_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._teachgym_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Rich falls back to 80 columns when output is not a terminal (a log
    # file, CI), which would truncate the per-step table; logs can be wide.
    console = Console(width=None if sys.stdout.isatty() else 160)
    _show_progress_logs()
    try:
        return int(args.func(args, console))
    except UserError as err:
        # A mistake in what was asked: one line that names it, no traceback.
        message = " ".join(str(err).split())
        print(f"teachgym: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with `teachgym run --resume DIR`", file=sys.stderr)
        return 130
    except Exception:
        # Anything else is a failure inside the run or a bug: show where it happened.
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
