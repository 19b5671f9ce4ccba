"""Sweep planning, trial resources and grids, without Ray (the serial executor)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from teachgym.config import ConfigError, default_config_path, fingerprint, load_config
from teachgym.experiments.cli import main
from teachgym.experiments.sweep import parse_grid, plan_trials, trial_resources

SMOKE = Path(default_config_path()).with_name("smoke.yaml")


def test_plan_trials_covers_teachers_grid_and_seeds_with_distinct_fingerprints():
    config = load_config(SMOKE, {"threads": 1})
    grid = parse_grid(["teacher_kwargs.gate=0.3,0.7"])
    trials = plan_trials(config, ["curriculum"], 2, grid)
    assert [(t.label, t.seed) for t in trials] == [
        ("curriculum[teacher_kwargs.gate=0.3]", 0),
        ("curriculum[teacher_kwargs.gate=0.3]", 1),
        ("curriculum[teacher_kwargs.gate=0.7]", 0),
        ("curriculum[teacher_kwargs.gate=0.7]", 1),
    ]
    assert trials[2].config.teacher_kwargs == {"gate": 0.7} and trials[3].config.seed == 1
    assert len({fingerprint(t.config) for t in trials}) == 4
    assert len({t.dirname for t in trials}) == 4
    # Every trial's config is resolved: the thread count it will run with is recorded.
    assert all(t.config.threads == 1 for t in trials)


@pytest.mark.parametrize(
    ("teachers", "grid", "message"),
    [
        (["nobody"], [], "unknown teacher 'nobody'"),
        (["uniform"], ["budgett=3,4"], "unknown config key 'budgett'"),
        (["uniform"], ["budget=-1,4"], "budget"),
        (["uniform"], ["seed=1,2"], "use --teachers and --seeds"),
        (["uniform"], ["budget"], "not of the form key=v1,v2"),
        ([], [], "at least one teacher"),
    ],
)
def test_a_bad_sweep_is_refused_before_any_episode_runs(teachers, grid, message):
    with pytest.raises(ConfigError, match=message):
        plan_trials(load_config(SMOKE), teachers, 2, parse_grid(grid))


def test_trial_resources_per_backend():
    local = load_config(SMOKE, {"threads": 2, "resources.student.num_gpus": 1})
    assert trial_resources(local) == ([{"CPU": 2.0, "GPU": 1.0}], "PACK")
    remote = load_config(
        SMOKE,
        {
            "threads": 2,
            "backend": "ray",
            "resources.generator.num_cpus": 0.5,
            "resources.evaluation.workers": 2,
            "resources.evaluation.num_cpus": 1,
            "resources.placement": "spread",
        },
    )
    # An empty head bundle for the trial's process, then student, generator, evaluators.
    assert trial_resources(remote) == (
        [{}, {"CPU": 2.0}, {"CPU": 0.5}, {"CPU": 1.0}, {"CPU": 1.0}],
        "SPREAD",
    )


def test_compare_sweeps_a_teacher_hyper_parameter(tmp_path, capsys):
    out = tmp_path / "grid"
    code = main(
        [
            "compare",
            str(SMOKE),
            "budget=300",
            "--teachers",
            "curriculum",
            "--seeds",
            "1",
            "--grid",
            "teacher_kwargs.gate=0.0,1.0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    board = json.loads((out / "leaderboard.json").read_text())
    assert {r["teacher"] for r in board} == {
        "curriculum[teacher_kwargs.gate=0.0]",
        "curriculum[teacher_kwargs.gate=1.0]",
    }
    # The two gates taught differently: with gate 0 the next level opens at the first step.
    runs = sorted(out.glob("curriculum*/seed_0-*/steps.jsonl"))
    first_steps = [json.loads(p.read_text().splitlines()[1])["examples_used"] for p in runs]
    assert first_steps[0] != first_steps[1]
    spec = (out / "sweep.yaml").read_text()
    assert "teacher_kwargs.gate" in spec
    assert not (out / "grid.md").exists()  # one teacher per point: nothing to compare within


def test_a_grid_over_profiles_compares_teachers_within_each_profile(tmp_path, capsys):
    out = tmp_path / "profiles"
    # Two skills of which the tiny student learns a little in 600 examples: AULCs that differ.
    config = [str(SMOKE), "budget=600", "task_kwargs.skills=[cmp/3d,add/no_carry]"]
    args = ["compare", *config, "--teachers", "random,uniform", "--seeds", "2"]
    code = main([*args, "--grid", "profile=default,hidden", "--out", str(out)])
    assert code == 0
    rows = json.loads((out / "episodes.json").read_text())
    grid = json.loads((out / "grid.json").read_text())
    assert [p["point"] for p in grid["points"]] == ["profile=default", "profile=hidden"]
    for point in grid["points"]:
        assert point["reference"] == "uniform"
        [cell] = [c for c in point["cells"] if c["teacher"] == "random"]
        aulc = {
            (r["teacher_name"], r["seed"]): r["aulc"] for r in rows if r["point"] == point["point"]
        }
        # The gain is paired within the profile: random minus uniform, seed by seed.
        gains = [aulc[("random", s)] - aulc[("uniform", s)] for s in (0, 1)]
        assert cell["gain_mean"] == pytest.approx(sum(gains) / 2)
        assert cell["better"] == sum(g > 0 for g in gains) and cell["paired_seeds"] == 2
    assert any(r["aulc"] != rows[0]["aulc"] for r in rows)  # the pairing is not vacuous
    # paired.json pairs within each profile too: each point's leader against the other.
    paired = json.loads((out / "paired.json").read_text())
    assert len(paired) == 2
    for pair in paired:
        point = pair["reference"].split("[")[1]
        assert pair["teacher"].endswith("[" + point)
        assert pair["teacher"].split("[")[0] != pair["reference"].split("[")[0]
    table = (out / "grid.md").read_text()
    assert table.startswith("| teacher | profile=default | profile=hidden |")
    assert "by grid point" in capsys.readouterr().out


def test_sweep_without_ray_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["sweep", str(SMOKE), "--teachers", "uniform", "--out", str(tmp_path / "s")])
    assert code == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err
