"""Where NaN/Inf starts: every training forward pass, the output of each leaf module that
can create a NaN/Inf from finite inputs is summed on the device (one reduction, accumulated in float32 so fp16 outputs do not overflow it).
A sum is non-finite exactly when the output holds a NaN/Inf (or overflows float32, which is
as bad). The rows reach the CPU with the other buffers; the first step with a non-finite
sum, and the first module in execution order at that step, is where it started. The
model's input is checked the same way, so bad data is told apart from a bad op.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .activations import first_tensor
from .buffer import StepBuffer

INPUT = "<input>"
ROWS_LIMIT = 1 << 16  # values summed per module output and step; the model input is summed in full
# Modules that cannot turn finite inputs into NaN/Inf: they can only pass one on, so they need
# no sentinel (and the step pays for fewer Python calls).
PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh,
                nn.Softsign, nn.Softmax, nn.modules.dropout._DropoutNd, nn.modules.pooling._MaxPoolNd,
                nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
                nn.modules.pooling._AdaptiveMaxPoolNd, nn.Flatten, nn.Unflatten, nn.Identity)


def rows_sample(t: torch.Tensor, limit: int = ROWS_LIMIT) -> torch.Tensor:
    """A strided view of whole rows (batch entries) with about `limit` values: an extra pass
    over a large conv activation costs more than the rest of the watching. A NaN made inside
    a module spreads over its output, so the rows seen still catch it; a NaN confined to one
    input row is caught by the full check of the model's input."""
    if t.numel() <= limit or t.dim() == 0 or t.shape[0] < 2:
        return t
    per_row = max(1, t.numel() // t.shape[0])
    return t[:: math.ceil(t.shape[0] / max(1, limit // per_row))]


class NonFiniteSentinel:
    def __init__(self, model: nn.Module, names: dict[nn.Module, str]):
        self.model = model
        self.names = names
        self.rows = StepBuffer()
        self.origin: dict | None = None
        self.order: list[str] = []  # module names in execution order, from the first pass
        self._calls: list[str] = []
        self._sums: list[torch.Tensor] = []

    def modules(self):
        for module, name in self.names.items():
            leaf = module is not self.model and not any(True for _ in module.children())
            if leaf and not isinstance(module, PASS_THROUGH):
                yield module, self._hook(name)

    def on_input(self, module, args):
        if torch.is_grad_enabled():
            x = first_tensor(args)
            if x is not None and x.is_floating_point():
                self._calls.append(INPUT)
                self._sums.append(torch.sum(x.detach(), dtype=torch.float32))

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if torch.is_grad_enabled():
                out = first_tensor(output)
                if out is not None and out.is_floating_point():
                    self._record(name, out)
        return hook

    def _record(self, name: str, tensor: torch.Tensor) -> None:
        self._calls.append(name)
        self._sums.append(torch.sum(rows_sample(tensor.detach()), dtype=torch.float32))

    def end_step(self, step: int) -> None:
        if self._sums:
            if not self.order:
                self.order = [c for c in self._calls if c != INPUT]
            device = self._sums[0].device
            sums = [s if s.device == device else s.to(device, non_blocking=True) for s in self._sums]
            self.rows.append(step, tuple(self._calls), sums)
        self._calls, self._sums = [], []

    def flush(self) -> None:
        """Find the origin in the rows that reached the CPU; keep the first one ever found."""
        found = []
        for calls, steps, values in self.rows.flush():
            bad = ~np.isfinite(values)
            rows = np.flatnonzero(bad.any(1))
            if rows.size:
                cols = np.flatnonzero(bad[rows[0]])
                found.append({"step": int(steps[rows[0]]), "module": calls[cols[0]],
                              "then": sorted({calls[c] for c in cols[1:]} - {calls[cols[0]]})[:8]})
        if found and self.origin is None:
            self.origin = min(found, key=lambda f: f["step"])
