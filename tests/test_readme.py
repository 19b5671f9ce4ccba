"""The README's promises, checked against the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from teachgym.config import ExperimentConfig, default_config_path, load_config

README = Path(__file__).resolve().parents[1] / "README.md"
SMOKE = Path(default_config_path()).with_name("smoke.yaml")


def _teacher_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    matches = [b for b in blocks if b.startswith("# my_teachers.py")]
    assert len(matches) == 1, "the README shows one teacher module"
    return matches[0]


def test_readme_teacher_is_short_and_runs_with_the_cli(tmp_path):
    """The README's two commands, as a user types them: the real console script, run from
    the directory that holds ``my_teachers.py``, with nothing added to ``sys.path``."""
    code = _teacher_block()
    assert len(code.strip().splitlines()) < 40
    (tmp_path / "my_teachers.py").write_text(code)
    script = Path(sys.executable).parent / "teachgym"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    text = README.read_text()
    for command in (
        "teachgym run teacher=my_teachers:Greedy",
        "teachgym compare --teachers my_teachers:Greedy,uniform --seeds 3",
    ):
        assert command in text
    small = ["smoke", "budget=200", "threads=1"]
    run = subprocess.run(
        [str(script), "run", *small, "teacher=my_teachers:Greedy", "--out", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "final val accuracy" in run.stdout and (tmp_path / "run" / "summary.json").exists()
    compare = subprocess.run(
        [
            str(script),
            "compare",
            *small,
            "--teachers",
            "my_teachers:Greedy,uniform",
            "--seeds",
            "1",
            "--out",
            "cmp",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert compare.returncode == 0, compare.stderr
    assert "my_teachers:Greedy" in compare.stdout and "leaderboard" in compare.stdout


def test_readme_commands_and_keys_match_the_code():
    text = README.read_text()
    assert 'pip install "torch==2.13.0" -e ".[dev]" && teachgym run' in text
    assert "pytest -q" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pytest -q" in ci and "torch==2.13.0" in ci
    for key in ExperimentConfig.model_fields:
        assert f"`{key}`" in text, f"config key {key} is not documented in the README"


def test_packaged_default_yaml_equals_the_model_defaults():
    # gymnasium.make() without arguments and `teachgym run` must be the same experiment.
    assert load_config(default_config_path()).model_dump() == _defaults()


def _defaults() -> dict:
    """The config's defaults, with the default.yaml's component options read from the
    components' options models (where the defaults are written once)."""
    from teachgym.envs.tasks.arithmetic import ArithmeticOptions
    from teachgym.students.tiny import TinyOptions

    cfg = ExperimentConfig().model_dump()
    task = ArithmeticOptions()
    student = TinyOptions()
    written = load_config(default_config_path())
    return cfg | {
        "task_kwargs": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in task.model_dump().items()
            if k in written.task_kwargs
        },
        "student_kwargs": {
            k: v for k, v in student.model_dump().items() if k in written.student_kwargs
        },
    }


def test_the_readme_documents_teachgym_config():
    text = README.read_text()
    assert "teachgym config [KIND] NAME" in text and "`teachgym config tiny`" in text


@pytest.mark.parametrize("key", ["val_per_skill", "test_per_skill", "pad_operands"])
def test_yaml_task_defaults_match_the_task(key):
    import inspect

    from teachgym.envs.tasks.arithmetic import ArithmeticTask

    default = inspect.signature(ArithmeticTask).parameters[key].default
    assert load_config(default_config_path()).task_kwargs[key] == default


@pytest.mark.parametrize(
    "path", sorted(Path(default_config_path()).parent.glob("*.yaml")), ids=lambda p: p.name
)
def test_every_packaged_config_loads_and_names_known_components(path):
    from teachgym import registry

    config = load_config(path)
    for kind in ("task", "student", "generator", "teacher"):
        assert callable(registry.resolve(kind, getattr(config, kind)))
    assert f"experiments/configs/{path.name}" in README.read_text()


def test_readme_population_snippet_runs(capsys):
    """The README's vector-env snippet, run as shown: its printed shapes and counts."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (code,) = [b for b in blocks if b.startswith("# population_vec.py")]
    exec(compile(code, "population_vec.py", "exec"), {})
    assert capsys.readouterr().out.split("\n")[:2] == ["(4, 7)", "[20 20 20 20]"]
