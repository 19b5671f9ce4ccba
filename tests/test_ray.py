"""The loop on Ray: actors behind proxies, worker deaths, resources, sweeps, two nodes.

Slow-marked (each starts Ray); skipped where Ray is not installed. The
in-process tests share one local Ray instance; the sweep tests run
``teachgym sweep`` in subprocesses that start (or join) clusters of their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from teachgym.config import default_config_path, load_config
from teachgym.distributed import ResourceError
from teachgym.experiments.loop import Callback
from teachgym.experiments.runner import EpisodeRunner

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

SMOKE = Path(default_config_path()).with_name("smoke.yaml")
ONE_THREAD = {"threads": 1}


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _alive_actors(expect: int = 0) -> int:
    """Actors not dead, once there are ``expect`` of them (or after 10 s).

    Reads GCS's actor table (the state API would need the dashboard); a
    killed actor turns DEAD asynchronously, hence the wait.
    """
    from ray._private import state

    deadline = time.monotonic() + 10
    while True:
        alive = sum(a["State"] != "DEAD" for a in state.actors().values())
        if alive == expect or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _run(tmp_path: Path, name: str, **overrides) -> tuple[Path, dict]:
    config = load_config(SMOKE, {**ONE_THREAD, **overrides})
    out = tmp_path / name
    summary = EpisodeRunner(config, out).run()
    assert summary is not None
    return out, summary


def test_ray_backend_gives_the_local_backends_steps(local_ray, tmp_path):
    local, _ = _run(tmp_path, "local")
    remote, _ = _run(tmp_path, "ray", backend="ray")
    assert (remote / "steps.jsonl").read_bytes() == (local / "steps.jsonl").read_bytes()
    # The run closed its env, and with it every actor it started.
    assert _alive_actors() == 0


def test_env_close_releases_every_actor(local_ray):
    before = _alive_actors()
    overrides = {"backend": "ray", "resources.evaluation.workers": 2}
    config = load_config(SMOKE, {**ONE_THREAD, **overrides, "resources.evaluation.num_cpus": 0.5})
    env = gym.make(config.env, config=config)
    assert _alive_actors(before + 4) == before + 4  # student, generator, two evaluators
    env.reset(seed=0)
    env.close()
    assert _alive_actors(before) == before


def test_sharded_evaluation_equals_one_workers(local_ray):
    def predictions(workers: int) -> list[list[str]]:
        overrides = {
            **ONE_THREAD,
            "backend": "ray",
            "resources.evaluation.workers": workers,
            "resources.evaluation.num_cpus": 0.5,
            # Batches of 8: the 56 validation problems make 7 batches over 2 workers.
            "student_kwargs.eval_batch_size": 8,
            "student_kwargs.warmup_steps": 2,  # so that two steps change the answers
        }
        env = gym.make("teachgym/SkillList-v0", config=load_config(SMOKE, overrides))
        try:
            env.reset(seed=0)
            out = [list(p.completion for p in env.unwrapped.last_predictions)]
            for _ in range(2):
                env.step(np.ones(7, dtype=np.float32))
                out.append([p.completion for p in env.unwrapped.last_predictions])
            return out
        finally:
            env.close()

    one, two = predictions(0), predictions(2)
    assert one == two and one[0] != one[-1]  # the weights changed, and both saw it


def test_evaluation_workers_score_their_own_shards(local_ray):
    """With backend=ray the workers score: the driver's task is never asked, and the
    reports equal the local backend's."""

    def reports(backend: str) -> list[tuple[dict, list[bool]]]:
        overrides = {**ONE_THREAD, "backend": backend, "student_kwargs.eval_batch_size": 8}
        if backend == "ray":
            overrides |= {"resources.evaluation.workers": 2, "resources.evaluation.num_cpus": 0.5}
        env = gym.make("teachgym/SkillList-v0", config=load_config(SMOKE, overrides))
        try:
            task = env.unwrapped.task
            if backend == "ray":

                def refuse(*args):
                    raise AssertionError("the driver scored")

                task.score = task.score_batch = refuse  # the workers must do it
            out = []
            env.reset(seed=0)
            for _ in range(2):
                _, _, _, _, info = env.step(np.ones(7, dtype=np.float32))
                out.append((info["report"], [p.correct for p in env.unwrapped.last_predictions]))
            return out
        finally:
            env.close()

    local, remote = reports("local"), reports("ray")
    assert remote == local
    assert any(not c for _, correct in local for c in correct)  # some answers are wrong


class _KillStudentWorker(Callback):
    """Kills the student's actor process (SIGKILL) once, after ``at`` steps."""

    def __init__(self, at: int) -> None:
        self.at, self.done = at, False

    def on_step(self, env, teacher, transition):
        if not self.done and transition.info["step"] == self.at:
            self.done = True
            os.kill(env.unwrapped.student.worker_info["pid"], signal.SIGKILL)


def test_a_killed_student_worker_is_replaced_and_the_run_ends_as_if_nothing_happened(
    local_ray, tmp_path
):
    whole, _ = _run(tmp_path, "whole", backend="ray")
    config = load_config(SMOKE, {**ONE_THREAD, "backend": "ray"})
    out = tmp_path / "killed"
    killer = _KillStudentWorker(at=3)
    runner = EpisodeRunner(config, out, callbacks=[killer])
    with pytest.warns(UserWarning, match="a Ray worker died"):
        summary = runner.run()
    assert killer.done and runner.restarts == 1 and summary is not None
    assert (out / "steps.jsonl").read_bytes() == (whole / "steps.jsonl").read_bytes()
    assert _alive_actors() == 0


def test_resources_no_node_has_fail_at_once_naming_them(local_ray):
    config = load_config(SMOKE, {**ONE_THREAD, "backend": "ray", "resources.student.num_gpus": 1})
    t0 = time.monotonic()
    with pytest.raises(ResourceError, match=r"resources\.student asks for .*GPU 1.*largest node"):
        gym.make(config.env, config=config)
    assert time.monotonic() - t0 < config.resources.timeout_s
    assert _alive_actors() == 0


def test_resources_held_by_others_fail_after_the_timeout(local_ray):
    from ray.util import placement_group, remove_placement_group

    hog = placement_group([{"CPU": 2}])
    ray.get(hog.ready())
    try:
        config = load_config(SMOKE, {**ONE_THREAD, "backend": "ray", "resources.timeout_s": 2})
        with pytest.raises(ResourceError, match=r"did not free resources\.student: CPU 1"):
            gym.make(config.env, config=config)
    finally:
        remove_placement_group(hog)


# -- sweeps, in subprocesses with clusters of their own ------------------------------
FLAKY_TEACHER = '''
from pathlib import Path
from teachgym.agents.policies.baselines import UniformTeacher


class FailsOnce(UniformTeacher):
    """Raises in its first episode's third step; the marker file makes it once only."""

    def __init__(self, env, seed=0, marker=""):
        super().__init__(env, seed)
        self.marker, self.calls = Path(marker), 0

    def act(self, observation, info):
        self.calls += 1
        if self.calls == 3 and not self.marker.exists():
            self.marker.write_text("failed once")
            raise RuntimeError("flaky teacher: first attempt fails")
        return super().act(observation, info)
'''


SELF_KILLING_TEACHER = '''
import os, signal
from pathlib import Path
from teachgym.agents.policies.baselines import UniformTeacher


class KilledOnce(UniformTeacher):
    """SIGKILLs its own trial process in its first episode's third step (once)."""

    def __init__(self, env, seed=0, marker=""):
        super().__init__(env, seed)
        self.marker, self.calls = Path(marker), 0

    def act(self, observation, info):
        self.calls += 1
        if self.calls == 3 and not self.marker.exists():
            self.marker.write_text("killed once")
            os.kill(os.getpid(), signal.SIGKILL)
        return super().act(observation, info)
'''


def _sweep_cmd(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "teachgym.experiments.cli",
        "sweep",
        str(SMOKE),
        "budget=400",
        *extra,
        "--out",
        str(out),
    ]


def _env(**extra: str) -> dict[str, str]:
    """The test's environment, minus any cluster address the machine has, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    env.update(extra)
    return env


def test_sweep_retries_a_failing_trial_and_reports_it(tmp_path):
    (tmp_path / "flaky_teachers.py").write_text(FLAKY_TEACHER)
    marker = tmp_path / "marker"
    out = tmp_path / "sweep"
    cmd = _sweep_cmd(
        out,
        f"teacher_kwargs.marker={marker}",
        "--teachers",
        "flaky_teachers:FailsOnce",
        "--seeds",
        "2",
    )
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "sweep.json").read_text())
    assert all(t["finished"] for t in report["trials"])
    failures = [f for t in report["trials"] for f in t["failures"]]
    assert len(failures) == 1 and "first attempt fails" in failures[0]["message"]
    board = json.loads((out / "leaderboard.json").read_text())
    assert board[0]["seeds"] == 2
    for name in ("paired.json", "comparison.png", "episodes.json"):
        assert (out / name).exists()


def test_a_killed_trial_process_is_retried_and_reported(tmp_path):
    (tmp_path / "killing_teachers.py").write_text(SELF_KILLING_TEACHER)
    out = tmp_path / "sweep"
    teacher = ["--teachers", "killing_teachers:KilledOnce", "--seeds", "1"]
    cmd = _sweep_cmd(out, f"teacher_kwargs.marker={tmp_path / 'marker'}", *teacher)
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [trial] = json.loads((out / "sweep.json").read_text())["trials"]
    assert trial["finished"] and trial["attempts"] == 2
    assert [f["error"] for f in trial["failures"]] == ["WorkerLost"]
    # The retry resumed from the last checkpoint: the episode is the one a
    # single uninterrupted attempt writes.
    whole = tmp_path / "whole"
    local = subprocess.run(
        [
            sys.executable,
            "-m",
            "teachgym.experiments.cli",
            "run",
            str(SMOKE),
            "budget=400",
            "threads=1",
            "teacher=uniform",
            "--out",
            str(whole),
        ],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert local.returncode == 0, local.stderr
    [run_dir] = out.glob("killing_teachers_KilledOnce/seed_0-*")
    rows = [json.loads(x) for x in (run_dir / "steps.jsonl").read_text().splitlines()]
    reference = [json.loads(x) for x in (whole / "steps.jsonl").read_text().splitlines()]
    assert [r["val_accuracy"] for r in rows] == [r["val_accuracy"] for r in reference]


def test_a_killed_sweep_driver_resumes_to_the_same_leaderboard(tmp_path):
    args = ["--teachers", "uniform,weakest", "--seeds", "2"]
    whole = tmp_path / "whole"
    subprocess.run(_sweep_cmd(whole, *args), env=_env(), check=True, capture_output=True)
    killed = tmp_path / "killed"
    # Relative paths, as a user types them: Tune must get them resolved.
    proc = subprocess.Popen(
        _sweep_cmd(Path("killed"), *args),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list(killed.glob("*/seed_*/summary.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local cluster it started
    proc.wait()
    finished = len(list(killed.glob("*/seed_*/summary.json")))
    assert 1 <= finished < 4, "the kill must land mid-sweep"
    assert not (killed / "leaderboard.json").exists()
    resume = [sys.executable, "-m", "teachgym.experiments.cli", "sweep", "--resume", "killed"]
    done = subprocess.run(resume, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (killed / "leaderboard.json").read_text() == (whole / "leaderboard.json").read_text()
    assert (killed / "paired.json").read_text() == (whole / "paired.json").read_text()
    # Quiet, and a killed driver is one driver stop, not a trial failure.
    output = done.stdout + done.stderr
    for noise in ("Traceback", "FileNotFoundError", "SystemExit", "trial failure"):
        assert noise not in output, output[-3000:]
    assert "cached: read back from an earlier run" in done.stdout
    report = json.loads((killed / "sweep.json").read_text())
    assert report["driver_stops"] == 1
    assert all(t["failures"] == [] and t["finished"] for t in report["trials"])


def test_a_sweep_runs_trials_on_both_nodes_of_a_two_node_cluster(tmp_path):
    from ray.cluster_utils import Cluster

    os.environ["RAY_AUTH_MODE"] = "disabled"
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "two_nodes"
        cmd = _sweep_cmd(out, "--teachers", "uniform,weakest", "--seeds", "2")
        proc = subprocess.run(
            cmd, env=_env(RAY_ADDRESS=cluster.address), capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads((out / "sweep.json").read_text())
        nodes = {n for t in report["trials"] for n in t["nodes"]}
        assert len(nodes) == 2 and all(t["finished"] for t in report["trials"])
        assert len(json.loads((out / "episodes.json").read_text())) == 4
    finally:
        cluster.shutdown()
