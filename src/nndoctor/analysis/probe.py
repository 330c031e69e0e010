"""The loss on one fixed batch as a pure function of the parameters, for the analyses.

Nothing here changes the user's model: parameters are substituted with
`torch.func.functional_call`, buffers (BatchNorm running statistics) are replaced by
copies, and the only mode change (dropout off, so the loss is a deterministic function of
the weights; BatchNorm keeps batch statistics, as in training) is undone on exit.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from torch.func import functional_call

from ..data import sample

BATCH_ROWS = 512  # rows of the fixed batch: enough for a stable loss, cheap for a small net


class LossProbe:
    """`loss(params)` on a fixed batch; `params` maps parameter names to tensors."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn):
        self.model, self.x, self.y, self.loss_fn = model, x, y, loss_fn
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
        self._buffers = {n: b for n, b in model.named_buffers()}

    def loss(self, params: dict[str, torch.Tensor] | None = None, x=None, y=None) -> torch.Tensor:
        state = {n: b.clone() for n, b in self._buffers.items()}  # BatchNorm updates land in copies
        state.update(params if params is not None else self.params)
        out = functional_call(self.model, state, (self.x if x is None else x,), strict=False)
        return self.loss_fn(out, self.y if y is None else y)

    def detached(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.params.items()}


def fixed_batch(model: nn.Module, data, rows: int = BATCH_ROWS, seed: int = 0):
    """Up to `rows` (input, target) rows of `data` on the model's device, or None."""
    pair = sample(data, max_rows=rows, seed=seed)
    if pair is None:
        return None
    device = next(model.parameters()).device
    return pair[0].to(device), pair[1].to(device)


def _twice_differentiable_attention():
    """Attention through the plain math kernel: the fused ones (flash, memory-efficient)
    have no double backward. Same values; a no-op where torch lacks the switch."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return ExitStack()
    return sdpa_kernel([SDPBackend.MATH])


@contextmanager
def analysis_mode(model: nn.Module):
    """Train mode with dropout off, attention on the math kernel, the global RNG forked;
    every module's mode restored after."""
    modes = {m: m.training for m in model.modules()}
    devices = [d for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    try:
        with torch.random.fork_rng(devices=devices), _twice_differentiable_attention():
            model.train()
            for m in model.modules():
                if isinstance(m, nn.modules.dropout._DropoutNd):
                    m.eval()
            yield
    finally:
        for m, training in modes.items():
            m.training = training
