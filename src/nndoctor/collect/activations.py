"""Activation statistics from forward hooks, on sampled training steps only (forward passes
under `torch.no_grad()`, such as validation, are ignored).

- ReLU-like modules: which units fired at least once in a window of sampled batches; a unit
  silent for a whole window (hundreds of examples) is dead.
- Sigmoid/tanh-like modules: the share of outputs where the local derivative is below 1%
  of its maximum (sigmoid outside ~[0.0025, 0.9975], tanh beyond |y| > 0.995).
- Weight modules (Linear/Conv): the share of positive outputs, which tells a layer killed
  by a functional `F.relu` (never positive) from one cut by a non-differentiable op.
- The model's output: the share of the most frequent predicted class and the spread of the
  outputs across the batch, for `output.collapsed`. A single output has no classes to
  count (its sign is a class only for a logit, which the output alone cannot tell from a
  regression), so its share is NaN and only its spread counts.
- Recurrent modules: the last sampled input, kept (a few rows, detached) for the
  through-time gradient probe.

The watcher attaches these hooks only for the forward pass of a sampled step, so the other
steps do not even pay for a Python call.
"""
from __future__ import annotations

import torch
from torch import nn

from .buffer import StepBuffer

RELU_LIKE = (nn.ReLU, nn.ReLU6)
SATURATING = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0), nn.Hardtanh: (-1.0, 1.0),
              nn.Hardsigmoid: (0.0, 1.0), nn.Softsign: (-1.0, 1.0)}
WEIGHTED = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
RECURRENT = (nn.RNN, nn.GRU, nn.LSTM)
DEAD_WINDOW = 8          # sampled batches per dead-unit window
SATURATION_LEVEL = 0.0025  # u(1-u) below this: derivative < 1% of its maximum


def first_tensor(value):
    """The tensor inside a module's output (RNNs return (output, hidden))."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value:
        return first_tensor(value[0])
    return None


def kind_of(module: nn.Module) -> str | None:
    if isinstance(module, RELU_LIKE):
        return "relu"
    if type(module) in SATURATING:
        return "saturating"
    if isinstance(module, WEIGHTED):
        return "weighted"
    if isinstance(module, RECURRENT):
        return "recurrent"
    return None


class _Window:
    """Units that fired at least once over a run of sampled batches."""

    def __init__(self, fired: torch.Tensor):
        self.alive = fired
        self.batches = 0
        self.examples = 0


class ActivationCollector:
    def __init__(self, model: nn.Module, names: dict[nn.Module, str]):
        self.model = model
        self.names = names
        self.dead = StepBuffer()
        self.saturated = StepBuffer()
        self.positive = StepBuffer()
        self.output = StepBuffer()
        self.kinds: dict[str, str] = {}
        self.rnn_inputs: dict[str, torch.Tensor] = {}
        self._windows: dict[str, _Window] = {}
        self._last_conv = False
        self._step = 0

    def modules(self):
        """(module, hook) pairs to register as forward hooks."""
        for module, name in self.names.items():
            kind = kind_of(module)
            if kind:
                self.kinds[name] = kind
                yield module, self._hook(name, kind, module)
        yield self.model, self._on_output

    def _hook(self, name: str, kind: str, module: nn.Module):
        def hook(mod, inputs, output):
            if not torch.is_grad_enabled():
                return
            out = first_tensor(output)
            if out is None or not out.is_floating_point():
                return
            out = out.detach()
            if kind == "relu":
                self._relu(name, out)
            elif kind == "saturating":
                lo, hi = SATURATING[type(mod)]
                u = (out - lo) / (hi - lo)
                self.saturated.append(self._step, (name,), (u * (1 - u) < SATURATION_LEVEL).float().mean())
            elif kind == "weighted":
                self._last_conv = isinstance(mod, CONV)
                self.positive.append(self._step, (name,), (out > 0).float().mean())
            elif kind == "recurrent" and inputs and isinstance(inputs[0], torch.Tensor):
                self.rnn_inputs[name] = inputs[0].detach()[:16].clone() if mod.batch_first else inputs[0].detach()[:, :16].clone()
        return hook

    def _relu(self, name: str, out: torch.Tensor) -> None:
        if out.dim() < 2:
            return
        unit_dim = 1 if (out.dim() >= 4 or (out.dim() == 3 and self._last_conv)) else out.dim() - 1
        # the largest value of each unit over the batch (and positions): no copy of the output.
        # NaN counts as fired: a NaN says nothing about the unit being dead (loss.nonfinite covers it)
        peak = torch.amax(out, dim=[d for d in range(out.dim()) if d != unit_dim])
        fired = peak.le(0).logical_not()
        window = self._windows.get(name)
        if window is None or window.alive.shape != fired.shape:
            window = self._windows[name] = _Window(fired)
        else:
            window.alive |= fired
        window.batches += 1
        window.examples += out.shape[0]
        if window.batches >= DEAD_WINDOW and window.examples >= 256:
            self.dead.append(self._step, (name,), (~window.alive).float().mean())
            del self._windows[name]

    def _on_output(self, module, inputs, output):
        if not torch.is_grad_enabled():
            return
        out = first_tensor(output)
        if out is None or not out.is_floating_point() or out.dim() != 2 or out.shape[0] < 2:
            return
        out = out.detach().float()
        if out.shape[1] > 1:
            pred = out.argmax(1)
            counts = torch.zeros(out.shape[1], device=out.device).index_add_(0, pred, torch.ones_like(out[:, 0]))
            share = counts.max() / out.shape[0]  # not bincount: its output size needs a device sync
        else:
            share = torch.full((), float("nan"), device=out.device)
        across = out.std(0).mean()
        self.output.append(self._step, ("top_share", "spread", "std"),
                           torch.stack([share, across / (out.abs().mean() + 1e-12), across]))
