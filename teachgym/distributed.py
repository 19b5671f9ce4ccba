"""Ray plumbing shared by every role: connecting, checking and placing resources, shipping code.

``backend: ray`` moves the student, the generator and (optionally) evaluation
into Ray actors. The environment and the teacher stay in the driver (or in
the Ray Tune trial that runs the episode) and talk to the actors through
proxies that implement the same protocols as the in-process components
(:mod:`teachgym.students.remote`, :mod:`teachgym.agents.generators.remote`),
so ``TeacherEnv`` and every teacher are unchanged.

Ray is an optional dependency (the ``ray`` extra): nothing here
imports it until a Ray backend or a sweep is asked for.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teachgym.config import ExperimentConfig
from teachgym.errors import MissingDependency, UserError

__all__ = [
    "ResourceError",
    "RolePlacement",
    "check_feasible",
    "connect",
    "local_modules",
    "require_ray",
    "role_bundles",
    "worker_failures",
]


class ResourceError(UserError):
    """The Ray cluster cannot give what the config asks for; the message names it."""


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise MissingDependency("backend: ray and `teachgym sweep`", "ray") from None
    return ray


def worker_failures() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a Ray worker died (empty when Ray was never imported)."""
    if "ray" not in sys.modules:
        return ()
    from ray.exceptions import ActorUnavailableError, RayActorError

    return (RayActorError, ActorUnavailableError)


def local_modules(names: Iterable[str]) -> list[str]:
    """Import paths (``pkg.mod:Class``) whose top-level module lives outside site-packages.

    Those are the user's own code (``my_teachers.py`` next to a script): a
    Ray worker on another node, or a Tune trial, cannot import them unless
    they are shipped with the job (``runtime_env["py_modules"]``). Returns
    the paths of their top-level packages or module files.
    """
    site = {
        Path(p).resolve()
        for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])
    }
    out: list[str] = []
    for name in names:
        if ":" not in name:
            continue
        top = name.partition(":")[0].split(".")[0]
        if top == "teachgym":
            continue
        spec = importlib.util.find_spec(top)
        if spec is None or spec.origin in (None, "built-in", "frozen"):
            continue
        origin = Path(spec.origin).resolve()
        path = origin.parent if origin.name == "__init__.py" else origin
        if not any(parent in site for parent in path.parents) and str(path) not in out:
            out.append(str(path))
    return out


def runtime_env_for(configs: Iterable[ExperimentConfig]) -> dict[str, Any]:
    """The Ray runtime environment that lets workers import the configs' user components,
    and quiets Ray's own progress logs in them (:func:`quiet_worker_logs`)."""
    names = [
        getattr(c, key) for c in configs for key in ("task", "student", "generator", "teacher")
    ]
    modules = local_modules(names)
    env: dict[str, Any] = {"worker_process_setup_hook": f"{__name__}.quiet_worker_logs"}
    if modules:
        env["py_modules"] = modules
    return env


#: Ray loggers whose INFO lines say what Ray is doing, not what the run is doing
#: (a Tune trial restored from its checkpoint says so once per trial on resume).
RAY_CHATTER = ("ray.tune", "ray.train")


def quiet_worker_logs() -> None:
    """In each Ray worker process: Ray's own progress logs at WARNING, not INFO,
    and no traceback for the exit that Ray's SIGTERM handler raises.

    Runs before any task or actor in the process (``worker_process_setup_hook``);
    warnings and errors, and everything teachgym logs, still reach the driver.
    Ray stops a worker (a sweep's driver killed, a cluster shutting down) with
    SIGTERM, whose handler raises ``SystemExit``; when the signal lands inside
    a weakref callback Python cannot propagate it and prints it as an
    "unraisable" traceback, which the driver forwards. That one is dropped;
    every other unraisable exception is printed as before.
    """
    for name in RAY_CHATTER:
        logging.getLogger(name).setLevel(logging.WARNING)
    sys.unraisablehook = _UnraisableFilter(sys.unraisablehook)


class _UnraisableFilter:
    """``sys.unraisablehook`` that drops ``SystemExit`` and passes the rest on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, SystemExit):
            return
        self.inner(unraisable)


def connect(runtime_env: Mapping[str, Any] | None = None) -> Any:
    """Join the cluster at ``RAY_ADDRESS``, or start a local one, once per process.

    A process that is already connected (a Tune trial, a user's own
    ``ray.init``) keeps its connection.
    """
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS") or None,
            include_dashboard=False,
            runtime_env=dict(runtime_env or {}) or None,
            log_to_driver=True,
            configure_logging=False,
        )
    return ray


# -- resources --------------------------------------------------------------------
@dataclass(frozen=True)
class RolePlacement:
    """One actor to start: its role name, its Ray resources and its torch threads."""

    role: str
    num_cpus: float
    num_gpus: float
    memory: int | None
    threads: int

    @property
    def bundle(self) -> dict[str, float]:
        """Its placement-group bundle (empty when it asks for nothing)."""
        out: dict[str, float] = {}
        if self.num_cpus:
            out["CPU"] = float(self.num_cpus)
        if self.num_gpus:
            out["GPU"] = float(self.num_gpus)
        if self.memory:
            out["memory"] = float(self.memory)
        return out


def role_bundles(config: ExperimentConfig) -> list[RolePlacement]:
    """The actors ``backend: ray`` starts for ``config``, in a fixed order.

    Torch threads follow each actor's CPUs, at least one; the student and the
    evaluation workers default to the run's ``threads``, so a Ray run does the
    same arithmetic as a local one.
    """
    threads = config.threads or 1
    res = config.resources
    roles = [RolePlacement(**_role(res.student, "student", threads))]
    roles.append(RolePlacement(**_role(res.generator, "generator", 0)))
    for i in range(res.evaluation.workers):
        roles.append(RolePlacement(**_role(res.evaluation, f"evaluation_{i}", threads)))
    return roles


def _role(spec: Any, role: str, default_cpus: float) -> dict[str, Any]:
    cpus = default_cpus if spec.num_cpus is None else spec.num_cpus
    return {
        "role": role,
        "num_cpus": cpus,
        "num_gpus": spec.num_gpus,
        "memory": spec.memory,
        "threads": max(1, int(cpus)),
    }


def check_feasible(bundles: Mapping[str, Mapping[str, float]], what: str) -> None:
    """Fail at once, naming the request, if no node of the cluster could ever hold a bundle.

    Ray would otherwise wait forever for a GPU the cluster does not have.
    Requests that fit a node but are busy are waited for (with a timeout, by
    the caller).
    """
    ray = require_ray()
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for name, bundle in bundles.items():
        if not any(all(node.get(k, 0.0) >= v for k, v in bundle.items()) for node in nodes):
            largest = {
                k: max((node.get(k, 0.0) for node in nodes), default=0.0) for k in sorted(bundle)
            }
            raise ResourceError(
                f"{what}: {name} asks for {_fmt(bundle)} but no node of the Ray cluster has "
                f"that much (largest node: {_fmt(largest)}; {len(nodes)} node(s))"
                + _fix_hint(name, bundle, largest)
            )


def _fix_hint(name: str, bundle: Mapping[str, float], largest: Mapping[str, float]) -> str:
    """The config keys that ask for less, when CPUs are what no node has."""
    if bundle.get("CPU", 0.0) <= largest.get("CPU", 0.0):
        return ""
    cpus = max(1, int(largest.get("CPU", 1.0)))
    role = name.removeprefix("resources.").split(" ")[0]
    if role in ("student", "generator", "evaluation"):
        return f"; ask for fewer with resources.{role}.num_cpus={cpus} (or threads={cpus})"
    return f"; ask for fewer with threads={cpus} (each trial's CPUs)"


def _fmt(bundle: Mapping[str, float]) -> str:
    parts = []
    for key, value in bundle.items():
        if key == "memory":
            parts.append(f"memory {value / 2**30:.1f} GiB")
        else:
            parts.append(f"{key} {value:g}")
    return ", ".join(parts) or "nothing"


@dataclass
class Placement:
    """Where an episode's actors go: a placement group of its own, or its trial's."""

    group: Any
    indices: dict[str, int] = field(default_factory=dict)
    owned: bool = False

    def strategy(self, role: str) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self.group is None:
            return "DEFAULT"
        return PlacementGroupSchedulingStrategy(
            self.group,
            placement_group_bundle_index=self.indices.get(role, -1),
            placement_group_capture_child_tasks=True,
        )

    def release(self) -> None:
        if self.owned and self.group is not None:
            from ray.util import remove_placement_group

            remove_placement_group(self.group)
            self.group = None


def place(roles: list[RolePlacement], config: ExperimentConfig) -> Placement:
    """Reserve the roles' bundles together, or use the Tune trial's placement group.

    Inside a Ray Tune trial the trial's placement group already holds the
    roles' bundles after its head bundle (see
    :func:`teachgym.experiments.sweep.trial_resources`), in the same order.
    Elsewhere a new placement group is created and waited for at most
    ``resources.timeout_s``; a request the cluster cannot meet in that time
    is an error that names it.
    """
    ray = require_ray()
    from ray.util import get_current_placement_group, placement_group

    needing = [r for r in roles if r.bundle]
    current = get_current_placement_group()
    if current is not None:
        return Placement(current, {r.role: i + 1 for i, r in enumerate(needing)}, owned=False)
    if not needing:
        return Placement(None)
    bundles = {f"resources.{_key(r.role)}": r.bundle for r in needing}
    check_feasible(bundles, "backend: ray")
    strategy = "PACK" if config.resources.placement == "colocate" else "SPREAD"
    group = placement_group([r.bundle for r in needing], strategy=strategy)
    try:
        ray.get(group.ready(), timeout=config.resources.timeout_s)
    except ray.exceptions.GetTimeoutError:
        from ray.util import remove_placement_group

        remove_placement_group(group)
        wanted = "; ".join(f"{k}: {_fmt(v)}" for k, v in bundles.items())
        free = ray.available_resources()
        raise ResourceError(
            f"backend: ray: the cluster did not free {wanted} within resources.timeout_s="
            f"{config.resources.timeout_s:g} s (free now: CPU {free.get('CPU', 0):g}, "
            f"GPU {free.get('GPU', 0):g})"
        ) from None
    return Placement(group, {r.role: i for i, r in enumerate(needing)}, owned=True)


def _key(role: str) -> str:
    return "evaluation" if role.startswith("evaluation_") else role
