"""Gradient through time for recurrent modules.

A fused RNN does not expose the gradient at each time step, so it is measured by a probe:
on the last sampled input of each RNN/GRU/LSTM, the sensitivity of the final output to the
input at each time step, ||d y_T / d x_t||, via `torch.autograd.grad` (nothing is
accumulated into `.grad`) with the RNG forked (dropout inside the RNN does not shift the
user's random stream), the user's hooks silenced and the module's buffers put back (a
spectral norm's power iteration must not advance): training goes on as if it never ran.
"""
from __future__ import annotations

import torch
from torch import nn

from ..sandbox import foreign_hooks_silenced, state_kept
from .activations import first_tensor


def sensitivity_through_time(module: nn.Module, x: torch.Tensor) -> list[float] | None:
    """||d output_T / d x_t|| for t = 0..T-1, or None when the module cannot be probed."""
    time_dim = 1 if getattr(module, "batch_first", False) else 0
    if x.dim() != 3 or x.shape[time_dim] < 2:
        return None
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad(), \
            foreign_hooks_silenced(module), state_kept(module):
        x = x.detach().clone().requires_grad_(True)
        out = first_tensor(module(x))
        last = out.select(time_dim, out.shape[time_dim] - 1)
        (grad,) = torch.autograd.grad(last.abs().sum(), x)
    per_step = grad.movedim(time_dim, 0).flatten(1).norm(dim=1)
    return per_step.float().cpu().tolist()
