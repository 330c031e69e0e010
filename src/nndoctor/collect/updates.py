"""Update/weight ratio per parameter on sampled steps: ||Δw|| / ||w|| across one optimizer
step (CS231n's rule of thumb: about 1e-3 is healthy). Measured from the weights themselves,
so it is right for any optimizer, schedule or weight decay.

The snapshot before the step is a copy of the sampled parameters; to bound that memory on
big models, only the first `budget` elements' worth of parameters are sampled (the rest
are named in the report's notes).
"""
from __future__ import annotations

import torch

from .buffer import StepBuffer
from .gradients import norms

BUDGET = 1 << 25  # elements copied per sampled step (~128 MB in float32)


class UpdateCollector:
    def __init__(self, params: list[tuple[str, torch.nn.Parameter]], budget: int = BUDGET):
        chosen, used = [], 0
        for i, (_, p) in enumerate(params):
            if used + p.numel() <= budget:
                chosen.append(i)
                used += p.numel()
        self.params = params
        self.chosen = chosen
        self.skipped = [params[i][0] for i in range(len(params)) if i not in set(chosen)]
        self.ratios = StepBuffer()
        self.weight_norms = StepBuffer()
        self._before: tuple[int, tuple, list[torch.Tensor]] | None = None

    def before_step(self, step: int) -> None:
        idx = tuple(i for i in self.chosen if self.params[i][1].grad is not None)
        if idx:
            self._before = (step, idx, [self.params[i][1].detach().clone() for i in idx])

    def after_step(self) -> None:
        if self._before is None:
            return
        step, idx, before = self._before
        self._before = None
        after = [self.params[i][1].detach() for i in idx]
        w = norms(before)
        delta = norms([a - b for a, b in zip(after, before)])
        self.ratios.append(step, idx, delta / w.clamp_min(1e-12))
        self.weight_norms.append(step, idx, w)
