"""A student wrapping any ``transformers`` causal language model.

Supervised fine-tuning puts the loss on completion tokens only: the prompt is
given, so learning to predict it would spend capacity on copying the question.
Short examples are *packed*: several sequences share one row of a batch, each
attending only to itself through a block-diagonal mask, with positions that
restart per sequence. The optimizer sees exactly the examples and the loss it
would see with one padded row per example, but no compute is spent on padding,
which is most of the waste when examples are a dozen tokens of varying length.
Decoding is batched greedy with a KV cache and left padding, written out here
rather than through ``generate`` so that the per-token cost is one forward
pass and nothing else (evaluation runs every step, on every validation
problem).
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_model, save_model

from teachgym.students.tokenizer import check_ids
from teachgym.types import Example, Problem

Mode = Literal["accumulate", "continual"]
Encoded = tuple[list[int], int]  # token ids of prompt+completion+eos, completion start

_STATE_FILE = "student_state.json"
_WEIGHTS_FILE = "model.safetensors"
_OPTIMIZER_FILE = "optimizer.pt"
_SCHEDULES = ("constant", "inverse_sqrt")


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
        warmup_steps, lr_schedule: linear warm-up over ``warmup_steps`` optimizer
            steps, then ``"inverse_sqrt"`` decay or a ``"constant"`` rate.
        cooldown: the last fraction of the training horizon over which the rate
            falls linearly to zero. In continual mode the horizon is the
            episode's data budget, which the environment passes to
            :meth:`set_horizon`; a student that keeps a high rate to the end of
            an episode ends wherever its last noisy update left it, and a
            teacher's final score would hinge on that. In accumulate mode every
            call is a complete training run and cools down at its own end.
            ``0`` disables it.
        eval_batch_size, max_new_tokens: greedy decoding settings.
        packing: pack several examples into one row (see the module docstring).
            ``"auto"`` checks once, on the first batch, that the model honours a
            block-diagonal 4D attention mask (the packed and padded losses
            agree) and falls back to padding with a warning if it does not.
        pack_width: tokens per packed row (at least the longest example).
        seed: drives data order, so the same seed gives the same weights.
        lora: optional ``peft.LoraConfig`` keyword arguments; trains adapters
            only (needs the ``llm`` extra).
        device: ``"cpu"``, ``"cuda"``, or ``None`` for CUDA when available.

    The student sets no process-wide state: torch's thread count belongs to
    whoever owns the process (the runner sets it from the config's
    ``threads``; a Ray worker from its ``num_cpus``).
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
        cooldown: float = 0.0,
        packing: bool | Literal["auto"] = "auto",
        pack_width: int = 64,
        seed: int = 0,
        lora: dict[str, Any] | None = None,
        device: str | None = None,
    ) -> None:
        if mode not in ("accumulate", "continual"):
            raise ValueError(f"mode must be 'accumulate' or 'continual', got {mode!r}")
        for name, value in (
            ("epochs", epochs),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("max_new_tokens", max_new_tokens),
            ("pack_width", pack_width),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0.0 <= cooldown <= 1.0:
            raise ValueError(f"cooldown must be in [0, 1], got {cooldown}")
        if lr_schedule not in _SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {_SCHEDULES}, got {lr_schedule!r}")
        if packing not in (True, False, "auto"):
            raise ValueError(f"packing must be true, false or 'auto', got {packing!r}")
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs a pad token and an eos token")
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
        self.lr_schedule = lr_schedule
        self.cooldown = float(cooldown)
        self.packing: bool | Literal["auto"] = packing
        self.pack_width = pack_width
        self.horizon: int | None = None
        self._opt: torch.optim.Optimizer | None = None
        self._params: list[torch.nn.Parameter] = []
        self._opt_steps = 0
        self._examples_done = 0  # examples trained on since the last reset (continual)
        forward = getattr(self.model, "get_base_model", lambda: self.model)().forward
        # transformers 5 renamed ``past_key_values`` to ``cache``; support both.
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
        )
        self._base = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._seen: list[Example] = []
        self._calls = 0

    # -- training ---------------------------------------------------------
    def set_horizon(self, examples: int | None) -> None:
        """How many examples of new data the student will get over an episode.

        The environment calls this with the episode's data budget, so the
        learning rate can cool down as the budget runs out (see ``cooldown``).
        """
        if examples is not None and examples < 1:
            raise ValueError(f"the horizon must be >= 1 example, got {examples}")
        self.horizon = examples

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids without special tokens, through the Rust tokenizer when there is one.

        A fast tokenizer's Rust backend encodes a batch much faster than the
        ``transformers`` wrapper around it, and every step encodes thousands
        of examples (``benchmarks/train_throughput.py`` measures it).
        """
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        return list(self.tokenizer(texts, add_special_tokens=False)["input_ids"])

    def _encode_examples(self, examples: Sequence[Example]) -> list[Encoded]:
        """Token ids of prompt+completion+eos, and where the completion starts."""
        prompt_texts = [e.prompt for e in examples]
        comp_texts = [e.completion for e in examples]
        prompts, comps = self._encode(prompt_texts), self._encode(comp_texts)
        check_ids(self.tokenizer, prompt_texts, prompts)
        check_ids(self.tokenizer, comp_texts, comps)
        eos = self.tokenizer.eos_token_id
        return [(p + c + [eos], len(p)) for p, c in zip(prompts, comps, strict=True)]

    def batch_tensors(self, batch: Sequence[Encoded], packed: bool) -> dict[str, torch.Tensor]:
        """Model inputs for one optimizer step: ``input_ids``, ``labels`` and masks.

        ``labels`` are -100 (ignored) on prompt tokens and padding, so only the
        completion and its eos carry loss. Padded: one right-padded row per
        example. Packed: examples laid end to end in rows of ``pack_width``
        tokens, a 4D additive mask that lets each token see only earlier tokens
        of its own example, and positions restarting at 0 for each example.
        """
        pad = self.tokenizer.pad_token_id
        if not packed:
            width = max(len(ids) for ids, _ in batch)
            rows = [ids + [pad] * (width - len(ids)) for ids, _ in batch]
            labels = [
                [-100] * start + ids[start:] + [-100] * (width - len(ids)) for ids, start in batch
            ]
            attn = [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch]
            return {
                "input_ids": torch.tensor(rows, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long),
                "attention_mask": torch.tensor(attn, dtype=torch.long),
            }
        width = max(self.pack_width, max(len(ids) for ids, _ in batch))
        groups: list[list[Encoded]] = [[]]
        used = 0
        for item in batch:  # next-fit, in batch order
            if used + len(item[0]) > width:
                groups.append([])
                used = 0
            groups[-1].append(item)
            used += len(item[0])
        width = max(sum(len(ids) for ids, _ in g) for g in groups)
        rows, labels, positions, segments = [], [], [], []
        for group in groups:
            row: list[int] = []
            lab: list[int] = []
            pos: list[int] = []
            seg: list[int] = []
            for k, (ids, start) in enumerate(group):
                row += ids
                lab += [-100] * start + ids[start:]
                pos += range(len(ids))
                seg += [k] * len(ids)
            tail = width - len(row)
            rows.append(row + [pad] * tail)
            labels.append(lab + [-100] * tail)
            positions.append(pos + list(range(tail)))
            segments.append(seg + [-1] * tail)
        seg_t = torch.tensor(segments)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        allowed = (seg_t[:, :, None] == seg_t[:, None, :]) & causal
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(len(groups), 1, width, width, dtype=dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        return {
            "input_ids": torch.tensor(rows, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": mask,
            "position_ids": torch.tensor(positions, dtype=torch.long),
        }

    def _loss(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**{k: v.to(self.device) for k, v in tensors.items()}).loss

    @torch.no_grad()
    def _packing_works(self, sample: Sequence[Encoded]) -> bool:
        """Does this model honour a 4D mask? Packed and padded losses must agree."""
        was_training = self.model.training
        self.model.eval()
        try:
            padded = float(self._loss(self.batch_tensors(sample, packed=False)))
            packed = float(self._loss(self.batch_tensors(sample, packed=True)))
        except Exception as err:  # a model that rejects 4D masks outright
            warnings.warn(f"packing disabled: the model rejected a 4D mask ({err})", stacklevel=3)
            return False
        finally:
            self.model.train(was_training)
        ok = math.isclose(padded, packed, rel_tol=1e-3, abs_tol=1e-5)
        if not ok:
            warnings.warn(
                f"packing disabled: the model ignores 4D attention masks "
                f"(packed loss {packed:.5f} vs padded {padded:.5f})",
                stacklevel=3,
            )
        return ok

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
        if self.packing == "auto":
            self.packing = self._packing_works(encoded[: min(8, len(encoded))])
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._calls)
        opt = self._optimizer()
        if self.mode == "accumulate":
            done, horizon = 0, len(encoded) * self.epochs
        else:
            done = self._examples_done
            horizon = self.horizon * self.epochs if self.horizon else None
        n_batches = math.ceil(len(encoded) / self.batch_size)
        self.model.train()
        loss_sum, tokens, steps = 0.0, 0, 0
        for _ in range(self.epochs):
            order = torch.randperm(len(encoded), generator=gen).tolist()
            for b in range(n_batches):
                batch = [encoded[i] for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
                loss = self._loss(self.batch_tensors(batch, packed=bool(self.packing)))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self._params, 1.0)
                rate = self._lr_at(self._opt_steps, done / horizon if horizon else None)
                for group in opt.param_groups:
                    group["lr"] = rate
                opt.step()
                self._opt_steps += 1
                done += len(batch)
                loss_sum += float(loss.detach())
                tokens += sum(len(ids) for ids, _ in batch)
                steps += 1
        if self.mode == "continual":
            self._examples_done = done
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

    def _lr_at(self, step: int, progress: float | None = None) -> float:
        """The rate for optimizer step ``step`` at ``progress`` (0..1) through the horizon.

        Linear warm-up, then inverse-square-root decay (or constant): the
        decay needs no horizon yet damps the oscillation a constant high rate
        causes. On top, a linear cool-down to zero over the last ``cooldown``
        of the horizon, when one is known. Both depend only on saved counters,
        so a resumed run follows the same schedule.
        """
        warm = self.warmup_steps
        if self.lr_schedule == "constant":
            rate = self.lr * min(1.0, (step + 1) / warm)
        else:
            rate = self.lr * min((step + 1) / warm, (warm / max(step + 1, warm)) ** 0.5)
        if progress is not None and self.cooldown > 0:
            rate *= min(1.0, max(0.0, (1.0 - progress) / self.cooldown))
        return rate

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
        encoded = self._encode(prompts)
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
        self._examples_done = 0

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
            "examples_done": self._examples_done,
            "packing": self.packing,
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
        self._examples_done = int(state.get("examples_done", 0))
        self.packing = state.get("packing", self.packing)
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

    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    with torch.random.fork_rng(devices=[]):  # seeds any fresh heads without touching global state
        torch.manual_seed(seed)
        lm = AutoModelForCausalLM.from_pretrained(model)
    return HFStudent(lm, tokenizer, seed=seed, **kwargs)
