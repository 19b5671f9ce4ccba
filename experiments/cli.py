"""The ``teachgym`` command line: ``run`` one episode, ``compare`` or ``sweep`` teachers.

Each job has one entry point: ``teachgym run`` for an episode (or
``--resume`` to finish a killed one), ``teachgym compare`` for a leaderboard
over teachers and seeds in this process, and ``teachgym sweep`` for the same
over Ray Tune (``--grid`` adds config values, ``--resume`` finishes a killed
sweep). ``teachgym list`` shows what can be named, ``teachgym config NAME``
the options a component takes. A user's mistake exits 2
with one line naming it; a run that trained on nothing exits 1 with one line
saying why; anything else exits 1 with its traceback.

Components named by import path (``teacher=my_teachers:Greedy``) are
imported from the current directory, as ``python -m`` would.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from teachgym import __version__, registry
from teachgym.config import ENV_IDS, load_config, packaged_configs, parse_cli_overrides
from teachgym.envs.registration import ENV_ENTRY_POINTS
from teachgym.errors import ConfigError, MissingDependency, RunFailed, UserError
from teachgym.experiments.runner import resume_experiment, run_experiment
from teachgym.experiments.sweep import SweepSpec, parse_grid, resume_sweep, run_sweep
from teachgym.options import describe_options, type_name

#: What ``teachgym list`` can show.
LIST_KINDS = ("teachers", "students", "tasks", "generators", "envs", "configs")
#: Longest error line printed; a message past this is cut (values are cut earlier).
MAX_ERROR_CHARS = 2000


def _split_config_and_overrides(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value ...]``: the first item without '=' is the config."""
    config: str | None = None
    overrides: list[str] = []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config is None:
            config = item
        else:
            raise ConfigError(f"unexpected argument {item[:200]!r}: overrides are key=value")
    return config, overrides


def _default_out(kind: str, config_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{kind}-{config_name}-{stamp}"


def _config_label(config_path: str | None) -> str:
    return Path(config_path).stem if config_path else "default"


def cmd_run(args: argparse.Namespace, console: Console) -> int:
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
    out = Path(args.out) if args.out else _default_out("run", _config_label(config_path))
    console.print(
        f"teachgym run: {config.env}, teacher={escape(config.teacher)}, seed={config.seed} "
        f"-> {escape(str(out))}",
        highlight=False,
    )
    run_experiment(config, out, console=console)
    return 0


def _sweep_spec(args: argparse.Namespace, *, threads_default: int | None) -> tuple[Any, Path]:
    config_path, overrides = _split_config_and_overrides(args.items)
    config = load_config(config_path, parse_cli_overrides(overrides))
    if config.threads is None and threads_default is not None:
        config = config.model_copy(update={"threads": threads_default})
    teachers = [t.strip() for t in (args.teachers or "").split(",") if t.strip()]
    if not teachers:
        raise ConfigError("--teachers needs at least one teacher name")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    if args.max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, got {args.max_failures}")
    spec = SweepSpec(
        config,
        teachers,
        args.seeds,
        parse_grid(args.grid or []),
        args.max_failures,
        metric=args.metric,
        target=args.target,
    )
    out = Path(args.out) if args.out else _default_out(args.command, _config_label(config_path))
    return spec, out


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    spec, out = _sweep_spec(args, threads_default=None)
    run_sweep(spec, out, executor="serial", console=console)
    return 0


def cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    if args.resume:
        if args.items or args.teachers or args.grid or args.max_concurrent is not None:
            raise ConfigError(
                "--resume takes no config, overrides, --teachers, --grid or --max-concurrent: "
                "a resumed sweep keeps its own"
            )
        resume_sweep(args.resume, console=console)
        return 0
    spec, out = _sweep_spec(args, threads_default=1)
    console.print(
        f"teachgym sweep: {len(spec.teachers)} teacher(s) x {spec.seeds} seed(s)"
        + (f" x grid {escape(str(spec.grid))}" if spec.grid else "")
        + f" -> {escape(str(out))}",
        highlight=False,
    )
    run_sweep(spec, out, executor="tune", console=console, max_concurrent=args.max_concurrent)
    return 0


def cmd_train_teacher(args: argparse.Namespace, console: Console) -> int:
    config_path, overrides = _split_config_and_overrides(args.items)
    # Loaded by import path, as the registry loads a component: the module needs
    # Stable-Baselines3 (the rl extra), which the rest of the CLI does not.
    try:
        training = registry.load("teachgym.experiments.teacher_training:train_teacher")
    except ModuleNotFoundError as err:
        if err.name != "stable_baselines3":
            raise
        raise MissingDependency("teachgym train-teacher", err.name) from None
    load = registry.load("teachgym.experiments.teacher_training:load_training_config")
    config = load(config_path, parse_cli_overrides(overrides))
    out = Path(args.out) if args.out else _default_out("teacher", _config_label(config_path))
    training(config, out, log=lambda line: console.print(escape(line), highlight=False))
    console.print(f"saved: {escape(str(out))}  (use it as teacher={escape(str(out))})")
    return 0


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    kinds = [args.kind] if args.kind else list(LIST_KINDS)
    for kind in kinds:
        rows = _listing(kind)
        console.print(f"[bold]{kind}[/bold]")
        width = max((len(name) for name, _ in rows), default=0)
        for name, doc in rows:
            console.print(f"  {escape(name):<{width}}  {escape(doc)}", highlight=False)
    return 0


def _listing(kind: str) -> list[tuple[str, str]]:
    """(name, one line of doc) for each thing of ``kind`` that a config can name."""
    if kind == "configs":
        return [(name, doc) for name, doc in packaged_configs().items()]
    if kind == "envs":
        return [(env_id, registry.doc_line(target)) for env_id, target in ENV_ENTRY_POINTS.items()]
    component = kind[:-1]
    return [
        (name, registry.describe(component, name))  # type: ignore[arg-type]
        for name in registry.names(component)  # type: ignore[arg-type]
    ]


#: Config blocks that are not components but have an options model of their own.
CONFIG_BLOCKS = {
    "decontamination": ("teachgym.options:Decontamination", "decontamination"),
    "discovery": ("teachgym.envs.tasks.dataset:DiscoveryOptions", "task_kwargs.discovery"),
}


def cmd_config(args: argparse.Namespace, console: Console) -> int:
    """Print a component's options: name, type, default and what it does."""
    title, model, options = _config_target(args.items, args.env)
    console.print(f"[bold]{escape(title)}[/bold]", highlight=False)
    if model is not None:
        rows = [(d.name, d.type, d.default, d.description) for d in describe_options(model)]
    elif options is not None:
        rows = [(o.name, _type(o.annotation), o.default, "") for o in options.values()]
        console.print("  (no options model: read from the constructor's signature)")
    else:
        console.print("  (takes any keyword: its constructor has **kwargs)")
        return 0
    if not rows:
        console.print("  (no options)")
    for name, kind, default, doc in rows:
        shown = "(required)" if default is inspect.Parameter.empty else repr(default)
        console.print(f"  {escape(name)}: {escape(kind)} = {escape(shown)}", highlight=False)
        if doc:
            console.print(f"      {escape(doc)}", highlight=False)
    return 0


def _type(annotation: Any) -> str:
    return type_name(annotation) if annotation is not None else "any"


def _config_target(items: Sequence[str], env: str | None) -> tuple[str, Any, Any]:
    """``[KIND] NAME`` -> (title, options model or None, signature options or None)."""
    kinds = ("task", "student", "generator", "teacher")
    if len(items) == 2:
        kind, name = items[0].removesuffix("s"), items[1]
        if kind not in kinds:
            raise ConfigError(f"unknown component kind {kind!r}; use one of {', '.join(kinds)}")
    elif len(items) == 1:
        name = items[0]
        if name in CONFIG_BLOCKS:
            target, key = CONFIG_BLOCKS[name]
            return f"{key} ({target})", registry.load(target), None
        found = [k for k in kinds if name in registry.names(k)]  # type: ignore[arg-type]
        if len(found) > 1:
            raise ConfigError(
                f"{name!r} names a {' and a '.join(found)}: say which, e.g. "
                f"`teachgym config {found[-1]} {name}`"
            )
        if not found and ":" not in name:
            every = sorted({n for k in kinds for n in registry.names(k)} | set(CONFIG_BLOCKS))
            raise ConfigError(f"unknown component {name!r}; use one of {', '.join(every)}")
        kind = found[0] if found else "teacher"
    else:
        raise ConfigError("teachgym config takes [KIND] NAME, e.g. `teachgym config student tiny`")
    env_id = env
    if kind == "teacher" and env_id is None:
        factory = registry.resolve("teacher", name)
        ids = list(factory.env_ids()) if callable(getattr(factory, "env_ids", None)) else []
        env_id = ENV_IDS[0] if not ids or ENV_IDS[0] in ids else ids[0]
    target = registry.target_class(kind, name, env_id)  # type: ignore[arg-type]
    where = f"{kind} {name!r} ({registry._qualname(target)}), {kind}_kwargs"
    if kind == "teacher" and env_id is not None:
        where += f", on {env_id}"
    model = registry.options_model(kind, name, env_id)  # type: ignore[arg-type]
    options = None if model is not None else registry.options(kind, name, env_id)  # type: ignore[arg-type]
    return where, model, options


def build_parser() -> argparse.ArgumentParser:
    """The ``teachgym`` parser: each subcommand's parser is added by a function of its own
    (``_add_<command>``), so a new subcommand is one more such function and its call here."""
    parser = argparse.ArgumentParser(
        prog="teachgym",
        description="Teacher agents that make training data for students.",
        epilog="Options and key=value overrides may come in any order.",
    )
    parser.add_argument("--version", action="version", version=f"teachgym {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_compare(sub)
    _add_sweep(sub)
    _add_train_teacher(sub)
    _add_list(sub)
    _add_config(sub)
    return parser


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run one episode into a run directory")
    run.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] [key=value ...]",
        help="a YAML file or a packaged config's name (teachgym list configs; default: "
        "default) and overrides",
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


def _add_compare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    compare = sub.add_parser(
        "compare", help="teachers x seeds, one after another here; a leaderboard"
    )
    _add_leaderboard_args(compare, "compare")
    compare.set_defaults(func=cmd_compare)


def _add_sweep(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sweep = sub.add_parser(
        "sweep", help="teachers x seeds x grid as Ray Tune trials; a leaderboard"
    )
    _add_leaderboard_args(sweep, "sweep")
    sweep.add_argument("--resume", metavar="SWEEP_DIR", help="finish a killed sweep")
    sweep.add_argument(
        "--max-concurrent",
        type=int,
        metavar="N",
        help="run at most N trials at once (default: as many as the resources allow)",
    )
    sweep.set_defaults(func=cmd_sweep)


def _add_leaderboard_args(cmd: argparse.ArgumentParser, name: str) -> None:
    """The arguments ``compare`` and ``sweep`` share (teachers, seeds, grid, ranking)."""
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
        "--metric",
        choices=("aulc", "final_test", "examples_to_target"),
        default="aulc",
        help="what ranks the leaderboard (default aulc; examples_to_target: fewest "
        "examples until val accuracy reaches --target)",
    )
    cmd.add_argument(
        "--target",
        type=float,
        default=0.9,
        help="val accuracy that examples_to_target counts the examples to (default 0.9)",
    )
    cmd.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="retries of a failed trial, from its last checkpoint (sweep)",
    )


def _add_list(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = sub.add_parser("list", help="what a config can name, with one line of doc each")
    listing.add_argument("kind", nargs="?", choices=LIST_KINDS, help="one kind (default: all)")
    listing.set_defaults(func=cmd_list)


def _add_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = sub.add_parser(
        "config",
        help="a component's options with their defaults and docs",
        description="Print the options a component takes from its *_kwargs (or a config "
        "block's keys), with types, defaults and docs: `teachgym config student tiny`, "
        "`teachgym config tiny`, `teachgym config discovery`.",
    )
    config.add_argument("items", nargs="+", metavar="[KIND] NAME")
    config.add_argument("--env", help="the env a teacher acts on (default: the default env)")
    config.set_defaults(func=cmd_config)


def _add_train_teacher(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(
        "train-teacher",
        help="train a PPO teacher on the population vector env (the rl extra)",
        description="Train a learned teacher; use the output as teacher=DIR. CONFIG is a "
        "teacher-training YAML or a packaged one (default: ppo).",
    )
    cmd.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]")
    cmd.add_argument("--out", help="output directory (default: runs/teacher-<config>-<time>)")
    cmd.set_defaults(func=cmd_train_teacher)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Options and ``key=value`` overrides in any order (``run CONFIG --out DIR k=v``).

    argparse stops filling a positional list at the first option; what
    follows the options comes back unparsed and is added to the positionals
    here, unless it looks like an option (then it is argparse's error).
    """
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-")]
    if unknown or (extra and not hasattr(args, "items")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)[:200]}")
    if extra:
        args.items = list(args.items) + list(extra)
    return args


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


def import_from_working_directory() -> None:
    """Let ``teacher=my_teachers:Greedy`` import ``my_teachers.py`` from where the command
    runs, as ``python -m`` puts the working directory first on ``sys.path``.

    A console script's ``sys.path`` starts with the script's own directory
    instead. Called after teachgym itself is imported, so a checkout's
    folders of the same names cannot shadow the installed package.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def _one_line(message: str) -> str:
    line = " ".join(str(message).split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    import_from_working_directory()
    # Rich falls back to 80 columns when output is not a terminal (a log
    # file, CI), which would truncate the per-step table; logs can be wide.
    console = Console(width=None if sys.stdout.isatty() else 160)
    _show_progress_logs()
    try:
        return int(args.func(args, console))
    except UserError as err:
        # A mistake in what was asked: one line that names it, no traceback.
        print(f"teachgym: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except RunFailed as err:
        # The run went through and its outcome is a failure; the message says why.
        print(f"teachgym: run failed: {_one_line(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = {
            "run": "resume with `teachgym run --resume DIR`",
            "sweep": "resume with `teachgym sweep --resume DIR`",
            "compare": "run the same command again: finished trials are read back",
        }.get(getattr(args, "command", ""), "")
        print(f"interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130
    except Exception:
        # Anything else is a failure inside the run or a bug: show where it happened.
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
