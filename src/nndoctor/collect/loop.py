"""The user's training loop: gradients left over from the previous step, and eval mode.

Stale gradients: on sampled steps, a tensor hook on the last parameters (the output layer,
always on the loss path) sees each incoming gradient before it is accumulated into `.grad`. On the first
backward after an optimizer step, `.grad` should be None or zero; if it still holds the
previous step's gradient, `zero_grad()` was not called. Deliberate accumulation zeroes
after each step, so it is not mistaken for the bug.
"""
from __future__ import annotations

import torch

from .buffer import StepBuffer
from .gradients import local_tensor

WATCHED = 2  # parameters carrying the hook


class LoopCollector:
    def __init__(self, params: list[tuple[str, torch.nn.Parameter]], model: torch.nn.Module | None):
        self.model = model
        self.stale = StepBuffer()
        self.steps = 0
        self.eval_steps = 0
        self._after_step = False
        self._step = 0
        self.watched = [p for _, p in params[-WATCHED:]]

    def tensor_hook(self, param: torch.nn.Parameter):
        def hook(grad):
            if self._after_step:
                self._after_step = False
                old = param.grad
                flag = local_tensor(old.detach()).ne(0).any() if old is not None and not old.is_sparse else torch.zeros((), dtype=torch.bool, device=grad.device)
                self.stale.append(self._step, ("stale",), flag.float())
        return hook

    def on_step(self, step: int) -> None:
        self.steps += 1
        if self.model is not None and not self.model.training:
            self.eval_steps += 1

    def after_step(self, step: int) -> None:
        self._after_step = True
        self._step = step + 1
