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
steps do not even pay for a Python call. A sampled step's cost is bounded whatever the
number of modules: each step hooks at most `MODULES_PER_KIND` modules of each kind (hooking,
unhooking and one statistic cost ~30 us a module on a CPU: 400 of them made a 800-module
net's sampled step 30 ms slower). A net with more of a kind rotates through them in groups,
strided from input to output, so every module is still measured; a group stays for a whole
dead-unit window (`DEAD_WINDOW` sampled batches, the same as without rotation), which also
gives the saturation rule its several points in a row. A net with at most
`MODULES_PER_KIND` of each kind (every zoo net) has one group: every module, every sampled step.
The price is latency: with g groups a module's verdicts come every g windows (an 80-block
residual MLP, 3 groups: every ReLU judged by step ~480). Not one global forward hook instead:
it saves the hooking, but still calls Python once per module call (and for every other
model's modules, an EMA copy or a teacher), and torch warns at each call of a compiled
wrapper while one exists.
While rotating, which axis of a 3-d ReLU output holds the units (channels after a Conv1d,
features after a Linear on a sequence) is read off the weight module that ran before it,
learned once, on the first sampled step, with a bare bookkeeping hook on the modules
outside the group.
"""
from __future__ import annotations

import math

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
MODULES_PER_KIND = 32    # modules of one kind measured per sampled step; more rotate in groups
MAX_DWELL = 4 * DEAD_WINDOW  # sampled steps a group stays at most (windows of a small batch take longer)
SHARE_VALUES = 8192      # outputs read for a weight layer's positive share (a strided sample of larger ones: ±0.6%)
SATURATION_LEVEL = 0.0025  # u(1-u) below this: derivative < 1% of its maximum


def first_tensor(value):
    """The tensor inside a module's output (RNNs return (output, hidden))."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value:
        return first_tensor(value[0])
    return None


def strided_sample(t: torch.Tensor, limit: int) -> torch.Tensor:
    """At most `limit` of `t`'s values, evenly strided over it (a view, no copy, of a
    contiguous `t`). The stride shares no factor with one example's size, so the positions
    read move across the units (features, channels) from example to example instead of
    meeting the same one in every k."""
    flat = t.reshape(-1)
    if flat.numel() <= limit:
        return flat
    stride, per_example = flat.numel() // limit + 1, math.prod(t.shape[1:])
    while math.gcd(stride, per_example) != 1:
        stride += 1
    return flat[::stride]


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


def saturation_band(module: nn.Module) -> tuple[float, float]:
    """(middle, half-width) of the outputs with u(1-u) >= SATURATION_LEVEL, u the output
    scaled to [0, 1]: saturated exactly when |output - middle| > half-width (two or three
    ops on the output where scaling and u(1-u) took five)."""
    lo, hi = SATURATING[type(module)]
    return (lo + hi) / 2, (hi - lo) / 2 * (1 - 4 * SATURATION_LEVEL) ** 0.5


class _Window:
    """Each unit's largest output over a run of sampled batches: a unit whose largest is
    <= 0 never fired (a NaN propagates and counts as fired). One `maximum` per batch."""

    def __init__(self, peak: torch.Tensor):
        self.peak = peak
        self.batches = 0
        self.examples = 0


class ActivationCollector:
    def __init__(self, model: nn.Module, names: dict[nn.Module, str]):
        self.model = model
        self.dead = StepBuffer()
        self.saturated = StepBuffer()
        self.positive = StepBuffer()
        self.output = StepBuffer()
        self.kinds: dict[str, str] = {}
        self.rnn_inputs: dict[str, torch.Tensor] = {}
        self._windows: dict[str, _Window] = {}
        self._last_conv = False
        self._step = 0
        self._members: dict[str, list[tuple[nn.Module, str, object]]] = {}  # kind -> (module, name, hook)
        for module, name in names.items():
            kind = kind_of(module)
            if kind:
                self.kinds[name] = kind
                self._members.setdefault(kind, []).append((module, name, self._hook(name, kind, module)))
        self.rotating = any(len(m) > MODULES_PER_KIND for m in self._members.values())
        self._conv_before: dict[str, bool] = {}  # ReLU -> it runs after a conv (while rotating)
        self._learning = self.rotating and "relu" in self._members  # the first sampled step learns it
        self._cycle = 0   # the group of each kind measured now
        self._dwell = 0   # sampled steps the current group has been measured

    def _group(self, kind: str) -> list[tuple[nn.Module, str, object]]:
        members = self._members[kind]
        groups = -(-len(members) // MODULES_PER_KIND)
        return members[self._cycle % groups::groups]

    def modules(self):
        """(module, hook) pairs to register as forward hooks for one sampled step: the current
        group of each kind, the bookkeeping hooks while they are still learning, the model's output."""
        grouped = set()
        for kind in self._members:
            for module, name, hook in self._group(kind):
                grouped.add(name)
                yield module, hook
        if self._learning:
            for kind in ("weighted", "relu"):
                for module, name, _ in self._members.get(kind, ()):
                    if name not in grouped:
                        yield module, self._note_order(name, kind)
        yield self.model, self._on_output

    def sampled(self) -> None:
        """The sampled step's hooks came off: move on to the next group once the current one
        has had its dead-unit windows (at most `MAX_DWELL` sampled steps)."""
        if not self.rotating:
            return
        self._learning = False
        self._dwell += 1
        relus = self._group("relu") if "relu" in self._members else []
        if self._dwell >= MAX_DWELL or self._dwell >= DEAD_WINDOW and not any(n in self._windows for _, n, _ in relus):
            self._cycle += 1
            self._dwell = 0

    def _note_order(self, name: str, kind: str):
        """A bookkeeping hook: which kind of weight module ran before each ReLU (see the module docstring)."""
        def hook(mod, inputs, output):
            if not torch.is_grad_enabled():
                return
            if kind == "weighted":
                self._last_conv = isinstance(mod, CONV)
            else:
                self._conv_before.setdefault(name, self._last_conv)
        return hook

    def _hook(self, name: str, kind: str, module: nn.Module):
        middle, half_width = saturation_band(module) if kind == "saturating" else (0.0, 0.0)

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
                distance = out.abs() if middle == 0 else (out - middle).abs()
                self.saturated.append(self._step, (name,), (distance > half_width).float().mean())
            elif kind == "weighted":
                self._last_conv = isinstance(mod, CONV)
                read = out if out.numel() <= SHARE_VALUES else strided_sample(out, SHARE_VALUES)
                self.positive.append(self._step, (name,), torch.mean(read > 0, dtype=torch.float32))
            elif kind == "recurrent" and inputs and isinstance(inputs[0], torch.Tensor):
                self.rnn_inputs[name] = inputs[0].detach()[:16].clone() if mod.batch_first else inputs[0].detach()[:, :16].clone()
        return hook

    def _relu(self, name: str, out: torch.Tensor) -> None:
        if out.dim() < 2:
            return
        after_conv = self._conv_before.setdefault(name, self._last_conv) if self.rotating else self._last_conv
        unit_dim = 1 if (out.dim() >= 4 or (out.dim() == 3 and after_conv)) else out.dim() - 1
        # the largest value of each unit over the batch (and positions): no copy of the output.
        # NaN counts as fired: a NaN says nothing about the unit being dead (loss.nonfinite covers it)
        peak = torch.amax(out, dim=[d for d in range(out.dim()) if d != unit_dim])
        window = self._windows.get(name)
        if window is None or window.peak.shape != peak.shape:
            window = self._windows[name] = _Window(peak)
        else:
            torch.maximum(window.peak, peak, out=window.peak)
        window.batches += 1
        window.examples += out.shape[0]
        if window.batches >= DEAD_WINDOW and window.examples >= 256:
            self.dead.append(self._step, (name,), window.peak.le(0).float().mean())
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
