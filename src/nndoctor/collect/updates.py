"""Update/weight ratio per parameter on sampled steps: ||Δw|| / ||w|| across one optimizer
step (CS231n's rule of thumb: about 1e-3 is healthy). Measured from the weights themselves,
so it is right for any optimizer, schedule or weight decay.

Copying whole parameters before every sampled step would cost a model's worth of memory
traffic; instead each large parameter is read at a fixed random set of `COORDINATES`
positions (drawn once, with a private generator). The ratio of norms over a random subset
estimates the full ratio closely for any layer of more than a few thousand weights, at a
cost independent of model size. The weight norm itself is measured in full.
"""
from __future__ import annotations

import torch

from .buffer import StepBuffer
from .gradients import norms

COORDINATES = 4096


class UpdateCollector:
    def __init__(self, params: list[tuple[str, torch.nn.Parameter]]):
        self.params = params
        generator = torch.Generator().manual_seed(0)
        self.positions: list[torch.Tensor | None] = []
        for _, p in params:
            if p.numel() > 2 * COORDINATES:
                idx = torch.randperm(p.numel(), generator=generator)[:COORDINATES].to(p.device)
                self.positions.append(idx)
            else:
                self.positions.append(None)
        self.ratios = StepBuffer()
        self.weight_norms = StepBuffer()
        self._before: tuple[int, tuple, list[torch.Tensor]] | None = None

    def _read(self, i: int) -> torch.Tensor:
        flat = self.params[i][1].detach().reshape(-1)
        idx = self.positions[i]
        return flat.clone() if idx is None else flat[idx]

    def before_step(self, step: int) -> None:
        idx = tuple(i for i, (_, p) in enumerate(self.params) if p.grad is not None)
        if idx:
            self._before = (step, idx, [self._read(i) for i in idx])
            self.weight_norms.append(step, idx, norms([self.params[i][1].detach() for i in idx]))

    def after_step(self) -> None:
        if self._before is None:
            return
        step, idx, before = self._before
        self._before = None
        delta = norms([self._read(i) - b for i, b in zip(idx, before)])
        self.ratios.append(step, idx, delta / norms(before).clamp_min(1e-12))
