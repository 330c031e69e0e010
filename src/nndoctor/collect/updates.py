"""Update/weight ratio per parameter on sampled steps: ||Δw|| / ||w|| across one optimizer
step (CS231n's rule of thumb: about 1e-3 is healthy). Measured from the weights themselves,
so it is right for any optimizer, schedule or weight decay.

Copying whole parameters before every sampled step would cost a model's worth of memory
traffic; instead each large parameter is read at a fixed random set of `COORDINATES`
positions (drawn once, with a private generator). The ratio of norms over a random subset
estimates the full ratio closely for any layer of more than a few thousand weights, at a
cost independent of model size. The weight norm itself is measured in full.

A ratio against a zero or tiny norm says nothing about the step: a weight initialised at
zero by design (LoRA's `lora_B`, a zero position embedding, ReZero's gate) grows from
nothing, so its first updates are "infinitely" larger than it. Where the weights read are
below `TINY_SCALE` of a default initialisation's size for their fan-in, the ratio is
recorded as NaN (no evidence; the rules skip non-finite ratios).
"""
from __future__ import annotations

import math

import torch

from .buffer import StepBuffer
from .gradients import local_tensor, norms

COORDINATES = 4096
TINY_SCALE = 0.01  # 1% of PyTorch's default init RMS, 1/sqrt(3 fan_in): no standard init starts 100x smaller


class UpdateCollector:
    def __init__(self, params: list[tuple[str, torch.nn.Parameter]]):
        self.params = params
        self._generator = torch.Generator().manual_seed(0)
        self.positions: list[torch.Tensor | None] = [self._positions(local_tensor(p)) for _, p in params]
        self._drawn_for = [local_tensor(p).numel() for _, p in params]  # the local size the positions fit
        self.floors: list[float] = []  # the norm of the weights read below which a ratio is no evidence
        for (_, p), idx in zip(params, self.positions):
            read = local_tensor(p).numel() if idx is None else COORDINATES
            fan_in = math.prod(p.shape[1:]) if len(p.shape) >= 2 else max(p.numel(), 1)  # shape: no DTensor op
            self.floors.append(TINY_SCALE * (read / (3 * max(fan_in, 1))) ** 0.5)
        self.ratios = StepBuffer()
        self.weight_norms = StepBuffer()
        self._before: tuple[int, tuple, list[torch.Tensor]] | None = None
        self._floor_cache: dict[tuple, torch.Tensor] = {}

    def _positions(self, p: torch.Tensor) -> torch.Tensor | None:
        if p.numel() <= 2 * COORDINATES:
            return None
        return torch.randperm(p.numel(), generator=self._generator)[:COORDINATES].to(p.device)

    def _read(self, i: int) -> torch.Tensor:
        """The local shard's weights at the fixed positions (FSDP1 can resize a parameter's
        local view between construction and the step: the positions follow it)."""
        flat = local_tensor(self.params[i][1].detach()).reshape(-1)
        if flat.numel() != self._drawn_for[i]:
            self.positions[i], self._drawn_for[i] = self._positions(flat), flat.numel()
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
        size = norms(before)
        floor = self._floor_cache.get((idx, size.device))
        if floor is None:  # made once per set of parameters with a gradient (one copy to the device)
            floor = self._floor_cache[idx, size.device] = torch.tensor([self.floors[i] for i in idx], device=size.device)
        ratio = torch.where(size > floor, delta / size.clamp_min(1e-12), torch.full_like(size, float("nan")))
        self.ratios.append(step, idx, ratio)
