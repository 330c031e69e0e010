"""Update/weight ratio per parameter on sampled steps: ||Δw|| / ||w|| across one optimizer
step (CS231n's rule of thumb: about 1e-3 is healthy). Measured from the weights themselves,
so it is right for any optimizer, schedule or weight decay.

Copying whole parameters before every sampled step would cost a model's worth of memory
traffic; instead each large parameter is read at a fixed random set of `COORDINATES`
positions (drawn once, with a private generator). The ratio of norms over a random subset
estimates the full ratio closely for any layer of more than a few thousand weights, at a
cost independent of model size. The weight norm itself is measured in full. The small
parameters are copied, subtracted and measured in batches (batched.py), so a model of
hundreds of small layers pays a few ops per sampled step, not a few per parameter.

A ratio against a zero or tiny norm says nothing about the step: a weight initialised at
zero by design (LoRA's `lora_B`, a zero position embedding, ReZero's gate) grows from
nothing, so its first updates are "infinitely" larger than it. Where the weights read are
below `TINY_SCALE` of a default initialisation's size for their fan-in, the ratio is
recorded as NaN (no evidence; the rules skip non-finite ratios).
"""
from __future__ import annotations

import math

import torch

from .batched import SMALL, Layouts, row_squares
from .buffer import StepBuffer
from .gradients import local_tensor, norms, read_as_is

COORDINATES = SMALL // 2  # positions read of a parameter larger than SMALL
TINY_SCALE = 0.01  # 1% of PyTorch's default init RMS, 1/sqrt(3 fan_in): no standard init starts 100x smaller


class UpdateCollector:
    def __init__(self, params: list[tuple[str, torch.nn.Parameter]]):
        self.params = params
        self._tensors = [p for _, p in params]
        self._as_is = read_as_is(self._tensors)
        self._generator = torch.Generator().manual_seed(0)
        self.positions: list[torch.Tensor | None] = [self._positions(local_tensor(p)) for p in self._tensors]
        self._drawn_for = [local_tensor(p).numel() for p in self._tensors]  # the local size the positions fit
        self.floors: list[float] = []  # the norm of the weights read below which a ratio is no evidence
        for p, idx in zip(self._tensors, self.positions):
            read = local_tensor(p).numel() if idx is None else COORDINATES
            fan_in = math.prod(p.shape[1:]) if len(p.shape) >= 2 else max(p.numel(), 1)  # shape: no DTensor op
            self.floors.append(TINY_SCALE * (read / (3 * max(fan_in, 1))) ** 0.5)
        self.ratios = StepBuffer()
        self.weight_norms = StepBuffer()
        self._layouts = Layouts()
        self._checked: tuple | None = None  # (idx, layout) whose positions fit the weights' sizes
        # the weights read before the step: step, idx, their layout, the groups' copies, the others' reads, their norms
        self._before: tuple | None = None
        self._floor_cache: dict[tuple, torch.Tensor] = {}

    def _positions(self, p: torch.Tensor) -> torch.Tensor | None:
        if p.numel() <= SMALL:
            return None
        return torch.randperm(p.numel(), generator=self._generator)[:COORDINATES].sort().values.to(p.device)  # in memory order: a faster gather

    def _weights(self, idx: tuple[int, ...]):
        """The local shards' weights of parameters `idx` (the parameters themselves, unless
        sharded), and their layout. FSDP1 can resize a parameter's local view between
        construction and the step: the positions follow it (checked when the shapes change)."""
        weights = [self._tensors[i] for i in idx] if self._as_is else [local_tensor(self._tensors[i].detach()) for i in idx]
        layout = self._layouts.of(weights)
        if (idx, layout) != self._checked:
            for i, w in zip(idx, weights):
                if w.numel() != self._drawn_for[i]:
                    self.positions[i], self._drawn_for[i] = self._positions(w), w.numel()
            self._checked = (idx, layout)
        return weights, layout

    def _read_alone(self, idx: tuple[int, ...], layout, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """The weights of the parameters outside the layout's groups: a large one's at its
        fixed positions, another's all (a copy)."""
        reads = []
        for j in layout.alone:
            at = self.positions[idx[j]]
            w = weights[j]
            if at is None:
                reads.append(w.clone())
            else:  # index_select on a flat view gathers ~2x faster than take
                reads.append(torch.index_select(w.view(-1), 0, at) if w.is_contiguous() else torch.take(w, at))
        return reads

    def before_step(self, step: int) -> None:
        idx = tuple([i for i, p in enumerate(self._tensors) if p.grad is not None])
        if not idx:
            return
        with torch.no_grad():  # the parameters are read as they are: no graph
            weights, layout = self._weights(idx)
            copies = layout.concat(weights)
            group_norms = [layout.sums_of_squares(g, row_squares(c)).sqrt() for g, c in enumerate(copies)]
            alone = self._read_alone(idx, layout, weights)
            whole = norms([weights[j] for j in layout.alone]) if alone else None
            self.weight_norms.append(step, idx, layout.assemble(group_norms, whole))
            size = layout.assemble(group_norms, norms(alone) if alone else None)  # a small one is read whole
            self._before = (step, idx, layout, copies, alone, size)

    def after_step(self) -> None:
        if self._before is None:
            return
        step, idx, layout, copies, alone, size = self._before
        self._before = None
        with torch.no_grad():
            weights, _ = self._weights(idx)
            moved = [layout.sums_of_squares(g, row_squares(after.sub_(before))).sqrt()
                     for g, (after, before) in enumerate(zip(layout.concat(weights), copies))]
            reads = self._read_alone(idx, layout, weights)
            delta = layout.assemble(moved, norms(torch._foreach_sub(reads, alone)) if alone else None)
        floor = self._floor_cache.get((idx, size.device))
        if floor is None:  # made once per set of parameters with a gradient (one copy to the device)
            floor = self._floor_cache[idx, size.device] = torch.tensor([self.floors[i] for i in idx], device=size.device)
        ratio = torch.where(size > floor, delta / size.clamp_min(1e-12), torch.full_like(size, float("nan")))
        self.ratios.append(step, idx, ratio)
