"""A student wrapping any ``transformers`` causal language model.

Supervised fine-tuning puts the loss on completion tokens only: the prompt is
given, so learning to predict it would spend capacity on copying the question.
Decoding is batched greedy with a KV cache and left padding, written out here
rather than through ``generate`` so that the per-token cost is one forward pass
and nothing else (evaluation runs every step, on every validation problem).
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_model, save_model

from teachgym.students.tokenizer import check_ids
from teachgym.types import Example, Problem

Mode = Literal["accumulate", "continual"]

_STATE_FILE = "student_state.json"
_WEIGHTS_FILE = "model.safetensors"
_OPTIMIZER_FILE = "optimizer.pt"


def default_threads() -> int:
    """Threads for CPU torch: every core, but no more than 8.

    Oversubscribing a 2-core laptop with torch's default thread pool makes
    small matmuls slower, and more than 8 threads rarely helps a model this size.
    """
    return max(1, min(os.cpu_count() or 1, 8))


class HFStudent:
    """Fine-tunes and queries a causal LM.

    Args:
        model: a ``transformers`` causal LM (``AutoModelForCausalLM`` or built
            from a config). Its weights at construction are the base that
            ``reset`` returns to.
        tokenizer: the model's tokenizer; needs ``pad_token_id`` and
            ``eos_token_id``.
        mode: ``"accumulate"`` retrains from the base weights on all data seen so
            far at every ``train`` call (as DataEnvGym does); ``"continual"``
            keeps training the current weights on the new data only.
        lr, epochs, batch_size: SFT hyper-parameters for one ``train`` call.
        eval_batch_size, max_new_tokens: greedy decoding settings.
        seed: drives data order, so the same seed gives the same weights.
        lora: optional ``peft.LoraConfig`` keyword arguments; trains adapters
            only (needs the ``llm`` extra).
        device: ``"cpu"``, ``"cuda"``, or ``None`` for CUDA when available.
        threads: CPU threads for torch; ``None`` picks :func:`default_threads`.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        mode: Mode = "continual",
        lr: float = 1e-3,
        epochs: int = 1,
        batch_size: int = 64,
        eval_batch_size: int = 512,
        max_new_tokens: int = 8,
        warmup_steps: int = 50,
        lr_schedule: str = "inverse_sqrt",
        seed: int = 0,
        lora: dict[str, Any] | None = None,
        device: str | None = None,
        threads: int | None = None,
    ) -> None:
        if mode not in ("accumulate", "continual"):
            raise ValueError(f"mode must be 'accumulate' or 'continual', got {mode!r}")
        for name, value in (
            ("epochs", epochs),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("max_new_tokens", max_new_tokens),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs a pad token and an eos token")
        torch.set_num_threads(threads or default_threads())
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(**lora))
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.mode: Mode = mode
        self.lr, self.epochs, self.batch_size = lr, epochs, batch_size
        self.eval_batch_size, self.max_new_tokens = eval_batch_size, max_new_tokens
        self.seed = seed
        self.warmup_steps = max(1, warmup_steps)
        if lr_schedule not in ("constant", "inverse_sqrt"):
            raise ValueError(
                f"lr_schedule must be 'constant' or 'inverse_sqrt', got {lr_schedule!r}"
            )
        self.lr_schedule = lr_schedule
        self._opt: torch.optim.Optimizer | None = None
        self._params: list[torch.nn.Parameter] = []
        self._opt_steps = 0
        forward = getattr(self.model, "get_base_model", lambda: self.model)().forward
        # transformers 5 renamed ``past_key_values`` to ``cache``; support both.
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
        )
        self._base = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._seen: list[Example] = []
        self._calls = 0

    # -- training ---------------------------------------------------------
    def _encode_examples(self, examples: Sequence[Example]) -> list[tuple[list[int], int]]:
        """Token ids of prompt+completion+eos, and where the completion starts."""
        tok = self.tokenizer
        prompt_texts = [e.prompt for e in examples]
        comp_texts = [e.completion for e in examples]
        prompts = tok(prompt_texts, add_special_tokens=False)["input_ids"]
        comps = tok(comp_texts, add_special_tokens=False)["input_ids"]
        check_ids(tok, prompt_texts, prompts)
        check_ids(tok, comp_texts, comps)
        return [(p + c + [tok.eos_token_id], len(p)) for p, c in zip(prompts, comps, strict=True)]

    def train(self, examples: Sequence[Example]) -> dict[str, float]:
        """One SFT pass over the new data (continual) or all data (accumulate)."""
        self._calls += 1
        if self.mode == "accumulate":
            self._seen.extend(examples)
            self.model.load_state_dict(self._base)
            data = list(self._seen)
        else:
            data = list(examples)
        if not data:
            return {"loss": float("nan"), "steps": 0.0, "tokens": 0.0}
        encoded = self._encode_examples(data)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._calls)
        opt = self._optimizer()
        n_batches = math.ceil(len(encoded) / self.batch_size)
        pad = self.tokenizer.pad_token_id
        self.model.train()
        loss_sum, tokens, steps = 0.0, 0, 0
        for _ in range(self.epochs):
            order = torch.randperm(len(encoded), generator=gen).tolist()
            for b in range(n_batches):
                batch = [encoded[i] for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
                width = max(len(ids) for ids, _ in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                attn = torch.zeros((len(batch), width), dtype=torch.long)
                for r, (ids, start) in enumerate(batch):
                    input_ids[r, : len(ids)] = torch.tensor(ids)
                    labels[r, start : len(ids)] = torch.tensor(ids[start:])
                    attn[r, : len(ids)] = 1
                out = self.model(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attn.to(self.device),
                    labels=labels.to(self.device),
                )
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(self._params, 1.0)
                for group in opt.param_groups:
                    group["lr"] = self._lr_at(self._opt_steps)
                opt.step()
                self._opt_steps += 1
                loss_sum += float(out.loss.detach())
                tokens += int(attn.sum())
                steps += 1
        self.model.eval()
        return {"loss": loss_sum / max(1, steps), "steps": float(steps), "tokens": float(tokens)}

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW whose state persists across ``train`` calls in continual mode.

        Restarting Adam every call (every few dozen steps) throws away its
        second-moment estimates and stalls small models on a plateau; in
        accumulate mode each call starts from the base weights, so the
        optimizer restarts with them.
        """
        if self._opt is None or self.mode == "accumulate":
            self._params = [p for p in self.model.parameters() if p.requires_grad]
            self._opt = torch.optim.AdamW(
                self._params, lr=self.lr, betas=(0.9, 0.98), weight_decay=0.0
            )
            self._opt_steps = 0
        return self._opt

    def _lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then inverse-square-root decay.

        The decay needs no horizon (a continual student does not know how long
        the teacher will train it) yet damps the late oscillation a constant
        high rate causes. It depends only on the optimizer step count, which is
        saved, so a resumed run follows the same schedule.
        """
        warm = self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr * min(1.0, (step + 1) / warm)
        return self.lr * min((step + 1) / warm, (warm / max(step + 1, warm)) ** 0.5)

    # -- inference --------------------------------------------------------
    @torch.no_grad()
    def predict(self, problems: Sequence[Problem]) -> list[str]:
        """Greedy completions, batched with left padding and a KV cache."""
        self.model.eval()
        out: list[str] = []
        for i in range(0, len(problems), self.eval_batch_size):
            out.extend(self._greedy([p.prompt for p in problems[i : i + self.eval_batch_size]]))
        return out

    def _greedy(self, prompts: list[str]) -> list[str]:
        tok = self.tokenizer
        encoded = tok(prompts, add_special_tokens=False)["input_ids"]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(encoded), width), dtype=torch.long)
        for r, ids in enumerate(encoded):
            input_ids[r, width - len(ids) :] = torch.tensor(ids)
            attn[r, width - len(ids) :] = 1
        input_ids, attn = input_ids.to(self.device), attn.to(self.device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        result = self.model(
            input_ids=input_ids, attention_mask=attn, position_ids=positions, use_cache=True
        )
        eos = tok.eos_token_id
        done = torch.zeros(len(encoded), dtype=torch.bool, device=self.device)
        generated: list[torch.Tensor] = []
        pos = positions[:, -1:]
        for _ in range(self.max_new_tokens):
            nxt = result.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            generated.append(nxt)
            done |= nxt == eos
            if bool(done.all()):
                break
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            pos = pos + 1
            result = self.model(
                input_ids=nxt[:, None],
                attention_mask=attn,
                position_ids=pos,
                use_cache=True,
                **{self._cache_arg: _cache_of(result)},
            )
        rows = torch.stack(generated, dim=1).tolist()
        texts = []
        for row in rows:
            if eos in row:
                row = row[: row.index(eos)]
            texts.append(tok.decode(row, skip_special_tokens=True))
        return texts

    # -- state ------------------------------------------------------------
    def reset(self) -> None:
        """Back to the base weights with no data seen."""
        self.model.load_state_dict(self._base)
        self._seen = []
        self._calls = 0
        self._opt = None
        self._opt_steps = 0

    def save(self, path: str | Path) -> None:
        """Weights as safetensors plus the little state that resume needs."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(path / _WEIGHTS_FILE))
        if self._opt is not None:
            torch.save(self._opt.state_dict(), path / _OPTIMIZER_FILE)
        state = {
            "mode": self.mode,
            "calls": self._calls,
            "opt_steps": self._opt_steps,
            "seed": self.seed,
            "seen": [e.model_dump() for e in self._seen],
        }
        (path / _STATE_FILE).write_text(json.dumps(state))

    def load(self, path: str | Path) -> None:
        path = Path(path)
        state = json.loads((path / _STATE_FILE).read_text())
        if state["mode"] != self.mode:
            raise ValueError(f"checkpoint was saved in mode {state['mode']!r}, not {self.mode!r}")
        load_model(self.model, str(path / _WEIGHTS_FILE), device=str(self.device))
        self._calls = int(state["calls"])
        self.seed = int(state["seed"])  # the data order continues as it would have
        self._opt = None
        self._opt_steps = int(state["opt_steps"])
        if (path / _OPTIMIZER_FILE).exists():
            steps = self._opt_steps
            self._optimizer().load_state_dict(
                torch.load(path / _OPTIMIZER_FILE, map_location=self.device, weights_only=True)
            )
            self._opt_steps = steps
        self._seen = [Example.model_validate(e) for e in state["seen"]]


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def hf_student_from_pretrained(
    task: Any, seed: int = 0, model: str = "", **kwargs: Any
) -> HFStudent:
    """Registry factory for ``student: hf``: a hub or local checkpoint.

    ``model`` is a hub id or a local directory; loading from the hub needs
    network access, a local directory does not.
    """
    if not model:
        raise ValueError("student 'hf' needs student_kwargs.model (a hub id or a local path)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    lm = AutoModelForCausalLM.from_pretrained(model)
    return HFStudent(lm, tokenizer, seed=seed, **kwargs)
