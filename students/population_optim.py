"""The optimizer of a population: per-member gradient clipping and AdamW on stacked weights.

Each member is updated exactly as a lone student's ``torch.optim.AdamW``
(:func:`~teachgym.students.training.make_optimizer`'s hyper-parameters) would
update it after clipping its gradient to
:data:`~teachgym.students.training.CLIP_NORM`: the clipping norm, the step
count (for the bias corrections) and the rate are each member's own, while
the arithmetic runs once over the member dimension.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from teachgym.students.training import CLIP_NORM, make_optimizer

__all__ = ["StackedAdamW"]


class StackedAdamW:
    """AdamW moments for weights stacked along a leading member dimension.

    Args:
        params: the stacked weights (name -> ``[M, ...]``); the moments take their
            shapes, and start at zero.
        lr: the base rate, only to build the reference AdamW whose ``betas``,
            ``eps`` and ``weight_decay`` are used (each step is given its rates).
        device: where the per-member step factors are built (the weights' device).

    ``exp_avg`` and ``exp_avg_sq`` are the moments under the weights' names (a
    checkpoint saves them per member). The step counts are the caller's: the
    learning-rate schedule reads them too.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], lr: float, device: torch.device) -> None:
        defaults = make_optimizer([torch.nn.Parameter(torch.zeros(1))], lr).defaults
        self.betas: tuple[float, float] = tuple(defaults["betas"])  # type: ignore[assignment]
        self.eps = float(defaults["eps"])
        self.weight_decay = float(defaults["weight_decay"])
        self.device = device
        self.exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}

    def clear(self, where: torch.Tensor) -> None:
        """Zero the moments of the members at indices ``where`` (a fresh optimizer)."""
        for k in self.exp_avg:
            self.exp_avg[k].index_fill_(0, where, 0.0)
            self.exp_avg_sq[k].index_fill_(0, where, 0.0)

    def clear_member(self, index: int) -> None:
        """Zero member ``index``'s moments."""
        for k in self.exp_avg:
            self.exp_avg[k][index] = 0.0
            self.exp_avg_sq[k][index] = 0.0

    @torch.no_grad()
    def step(
        self,
        params: dict[str, torch.Tensor],
        where: torch.Tensor,
        full: bool,
        grads: Mapping[str, torch.Tensor],
        rates: Sequence[float],
        steps: Sequence[int],
    ) -> None:
        """Per-member clipping and AdamW, in ``torch.optim.AdamW``'s formulas.

        ``grads`` are the gradients of the members at indices ``where`` (all of
        them, in order, when ``full``), ``rates`` their rates and ``steps`` their
        step counts including this step (1 on a fresh optimizer). ``params`` and
        the moments are updated in place.
        """
        m = len(rates)
        norms = torch.stack([g.reshape(m, -1).norm(dim=1) for g in grads.values()]).norm(dim=0)
        coef = (CLIP_NORM / (norms + 1e-6)).clamp(max=1.0)
        beta1, beta2 = self.betas
        step_size, bc2_sqrt = [], []
        for rate, t in zip(rates, steps, strict=True):
            step_size.append(rate / (1 - beta1**t))
            bc2_sqrt.append(math.sqrt(1 - beta2**t))
        dev = self.device
        size_t = torch.tensor(step_size, dtype=torch.float32, device=dev)
        bc2_t = torch.tensor(bc2_sqrt, dtype=torch.float32, device=dev)
        decay = 1 - torch.tensor(rates, dtype=torch.float32, device=dev) * self.weight_decay
        for k, g in grads.items():
            shape = (m,) + (1,) * (g.dim() - 1)
            g = g * coef.view(shape)
            if full:
                w, avg, avg_sq = params[k], self.exp_avg[k], self.exp_avg_sq[k]
            else:
                w = params[k].index_select(0, where)
                avg = self.exp_avg[k].index_select(0, where)
                avg_sq = self.exp_avg_sq[k].index_select(0, where)
            if self.weight_decay:
                w.mul_(decay.view(shape))
            avg.lerp_(g, 1 - beta1)
            avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (avg_sq.sqrt() / bc2_t.view(shape)).add_(self.eps)
            w.sub_(avg / denom * size_t.view(shape))
            if not full:
                params[k].index_copy_(0, where, w)
                self.exp_avg[k].index_copy_(0, where, avg)
                self.exp_avg_sq[k].index_copy_(0, where, avg_sq)
