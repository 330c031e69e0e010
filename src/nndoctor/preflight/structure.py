"""Discover a model's structure by running one batch through it.

Forward hooks see every module call and a `TorchFunctionMode` sees every functional call
(`F.relu`, `torch.softmax`, `x + h`), both in execution order. So an `nn.Module` subclass
that calls `F.softmax` in `forward()` is understood as well as an `nn.Sequential`, and
residual additions are noticed without parsing any code.
"""
from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..sandbox import drop_foreign_hooks

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # feed-forward layers whose init we judge
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
KNOWN_PARAMETRIC = WEIGHT_LAYERS + NORMS + (nn.RNNBase, nn.Embedding, nn.MultiheadAttention, nn.PReLU)

ACTIVATIONS = {"softmax", "log_softmax", "sigmoid", "tanh", "relu", "relu6", "leaky_relu", "elu",
               "selu", "celu", "gelu", "silu", "mish", "softplus", "hardtanh", "hardsigmoid",
               "hardswish", "logsigmoid", "softsign", "prelu", "rrelu"}
# calls that only move values around: looking backwards for the final activation, skip them
PASS_THROUGH = {"view", "reshape", "squeeze", "unsqueeze", "flatten", "contiguous",
                "transpose", "permute", "select", "narrow", "dim", "size", "get", "getitem", "dropout",
                "clone", "to", "float", "double", "type_as", "t", "expand", "numel", "len",
                "detach", "unflatten", "identity"}
_MODULE_ACTIVATION = {nn.Softmax: "softmax", nn.LogSoftmax: "log_softmax", nn.Sigmoid: "sigmoid",
                      nn.Tanh: "tanh", nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu",
                      nn.ELU: "elu", nn.SELU: "selu", nn.CELU: "celu", nn.GELU: "gelu", nn.SiLU: "silu",
                      nn.Mish: "mish", nn.Softplus: "softplus", nn.Hardtanh: "hardtanh",
                      nn.Hardsigmoid: "hardsigmoid", nn.Hardswish: "hardswish",
                      nn.LogSigmoid: "logsigmoid", nn.Softsign: "softsign", nn.PReLU: "prelu"}
_MODULE_PASS_THROUGH = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                        nn.Flatten, nn.Unflatten, nn.Identity)


@dataclass
class Event:
    """One call in execution order: a module (`name` is its path) or a function (`name` is the op)."""
    kind: str                    # "module" or "func"
    name: str
    module: nn.Module | None = None
    op: str = ""                 # the activation / op name this call stands for


@dataclass
class Layer:
    """A Linear/Conv call with the signal measured around it on the batch."""
    name: str
    module: nn.Module
    signal_in: float             # input-dependent spread of the layer's input (see `signal`)
    signal_out: float            # same for its output without the bias
    width: int
    event: int                   # its index in Trace.events

    @property
    def gain(self) -> float:
        """How much the weights alone scale the signal (bias excluded)."""
        return self.signal_out / self.signal_in if self.signal_in > 0 else 0.0


@dataclass
class Trace:
    output: torch.Tensor
    events: list[Event] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    residual_adds: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def modules(self) -> list[Event]:
        return [e for e in self.events if e.kind == "module"]

    @property
    def norms(self) -> list[str]:
        return [e.name for e in self.modules if isinstance(e.module, NORMS)]

    @property
    def first_parametric(self) -> Event | None:
        """The first module with parameters that the input meets (BatchNorm-first nets)."""
        return next((e for e in self.modules if any(True for _ in e.module.parameters(recurse=False))
                     or isinstance(e.module, nn.MultiheadAttention)), None)

    def next_op(self, index: int) -> str:
        """The first op after event `index` that does more than move values ('' at the end)."""
        return next((e.op for e in self.events[index + 1:] if e.op not in PASS_THROUGH), "")

    def final_activation(self) -> Event | None:
        """The activation applied last before the output, or None if a layer comes last."""
        for e in reversed(self.events):
            if e.op in ACTIVATIONS:
                return e
            if e.op not in PASS_THROUGH:
                return None
        return None


def probe_copy(model: nn.Module) -> nn.Module:
    """A deep copy in training mode with dropout off and without the user's hooks: the user's
    model is never run, their hooks never called, and probes measure the model as it trains,
    without dropout noise."""
    copy = drop_foreign_hooks(deepcopy(model))
    copy.train()
    for m in copy.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    return copy


def code_ref(name: str) -> str:
    """`0.fc` -> `model[0].fc`: the Python expression for a submodule in a fix."""
    return "model" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in name.split("."))


def signal(t: torch.Tensor) -> float:
    """Input-dependent spread: RMS over units of each unit's std across the batch. A bias adds
    nothing to it, so it measures how much of the input still reaches this point."""
    flat = t.detach().reshape(t.shape[0], -1).double()
    return float(flat.var(0, unbiased=False).mean().sqrt()) if len(flat) > 1 else 0.0


def first_tensor(value):
    """The tensor a model or module returns (the output of a GRU/LSTM's `(output, h)` tuple)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return None


class _Recorder(TorchFunctionMode):
    def __init__(self, events: list[Event]):
        super().__init__()
        self.events, self.paused, self.residual_adds = events, False, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if not self.paused:
            op = getattr(func, "__name__", "").strip("_") or "?"
            op = {"iadd": "add", "radd": "add"}.get(op, op)
            self.events.append(Event("func", op, op=op))
            if op == "add" and len(args) >= 2 and all(isinstance(a, torch.Tensor) for a in args[:2]) \
                    and args[0].shape == args[1].shape and args[0].dim() > 0:
                self.residual_adds += 1  # x + f(x): two same-shaped tensors meet
        return result


def trace(model: nn.Module, x: torch.Tensor) -> Trace:
    """Run `model(x)` once with hooks; `model` should be a copy (BatchNorm statistics move)."""
    events: list[Event] = []
    recorder = _Recorder(events)
    layers: list[Layer] = []

    def hook(name):
        def on_forward(module, inputs, output):
            recorder.paused = True
            try:
                op = next((v for k, v in _MODULE_ACTIVATION.items() if isinstance(module, k)), "")
                if isinstance(module, _MODULE_PASS_THROUGH):
                    op = "identity"
                events.append(Event("module", name, module, op=op or type(module).__name__))
                out = first_tensor(output)
                if isinstance(module, WEIGHT_LAYERS) and inputs and out is not None:
                    if module.bias is not None:  # Linear: bias on the last axis; Conv: on the channel axis
                        out = out - (module.bias if isinstance(module, nn.Linear)
                                     else module.bias.view(1, -1, *[1] * (out.dim() - 2)))
                    width = module.out_features if isinstance(module, nn.Linear) else module.out_channels
                    layers.append(Layer(name, module, signal(inputs[0]), signal(out), width, len(events) - 1))
            finally:
                recorder.paused = False
        return on_forward

    leaves = [(n, m) for n, m in model.named_modules()
              if n and (not any(True for _ in m.children()) or isinstance(m, nn.MultiheadAttention))]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    try:
        with torch.no_grad(), recorder:
            output = model(x)
    finally:
        for h in handles:
            h.remove()
    result = Trace(output=first_tensor(output), events=events, layers=layers,
                   residual_adds=recorder.residual_adds)
    if not isinstance(output, torch.Tensor):
        result.notes.append(f"The model returns a {type(output).__name__}; its first tensor was taken as the output.")
    unsupported = sorted({f"model{'.' if n else ''}{n} ({type(m).__name__})" for n, m in [("", model)] + leaves
                          if any(True for _ in m.parameters(recurse=False)) and not isinstance(m, KNOWN_PARAMETRIC)})
    if unsupported:
        result.notes.append("Init checks skip layers of a kind they do not judge: " + ", ".join(unsupported) + ".")
    return result
