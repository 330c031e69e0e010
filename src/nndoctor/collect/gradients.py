"""Gradients, read at the optimizer step (after any GradScaler unscaling; steps a scaler
skips never reach the step hook, so they are never judged).

On sampled steps only (reading every gradient costs about one extra optimizer pass, ~5% of
a step on a CPU): one norm per parameter, computed on the device with `torch._foreach_norm`;
which weight rows got an exactly-zero gradient (a dead unit, however its activation was
written); and which parameters have no gradient at all.
"""
from __future__ import annotations

import torch

from .buffer import StepBuffer

ROW_WINDOW = 8  # sampled steps per dead-row window: a row silent for all of them is dead


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded tensor (an FSDP2/DTensor parameter or gradient), else `t`.
    An op on a DTensor may run a collective; the collectors must never start one (a rank
    that is alone in it waits forever), so they read the local shard and the ranks' shares
    are combined in the exchange (integrations/distributed.py)."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-tensor L2 norms (of the local shards) as one float32 vector on the first tensor's device."""
    tensors = [local_tensor(t) for t in tensors]
    device = tensors[0].device
    try:
        if all(t.device == device and not t.is_sparse for t in tensors):
            return torch.stack(torch._foreach_norm(tensors)).float()
    except (RuntimeError, TypeError):
        pass
    out = [(t.coalesce().values() if t.is_sparse else t).norm().float().to(device) for t in tensors]
    return torch.stack(out)


class GradientCollector:
    def __init__(self, params: list[tuple[str, torch.nn.Parameter]]):
        self.params = params
        self.norms = StepBuffer()
        self.dead_rows = StepBuffer()
        self.none_counts = {name: 0 for name, _ in params}
        self.sampled = 0
        self._rows = [(i, name) for i, (name, p) in enumerate(params) if p.dim() >= 2]
        self._alive: dict[int, torch.Tensor] = {}
        self._window = 0

    def on_step(self, step: int) -> None:
        """Called on sampled steps."""
        idx = tuple(i for i, (_, p) in enumerate(self.params) if p.grad is not None)
        if idx:
            self.norms.append(step, idx, norms([self.params[i][1].grad for i in idx]))
        self.sampled += 1
        for name, p in self.params:
            if p.grad is None and local_tensor(p).numel():  # a rank holding none of it cannot tell
                self.none_counts[name] += 1
        for i, _ in self._rows:
            g = self.params[i][1].grad
            if g is None or g.is_sparse:
                continue
            g = local_tensor(g.detach())
            if g.dim() < 2 or not g.numel():
                continue
            alive = torch.linalg.vector_norm(g.flatten(1), dim=1) > 0  # fastest all-zero test per row
            self._alive[i] = alive if i not in self._alive else self._alive[i] | alive
        self._window += 1
        if self._window >= ROW_WINDOW and self._alive:
            keys = tuple(sorted(self._alive))
            row = torch.stack([(~self._alive[i]).float().mean().to(self._alive[keys[0]].device) for i in keys])
            self.dead_rows.append(step, keys, row)
            self._alive, self._window = {}, 0
