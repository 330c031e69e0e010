"""The op chain of a loss, read from the autograd graph it carries.

A loss tensor's `grad_fn` graph records every differentiable op from the parameters to the
loss, with the data flow between them and what each op saved: a softmax its `dim` and its
result, the negative log-likelihood its targets and `ignore_index`. So the chain is read
the same way whether the op was `F.softmax(x, dim=0)`, `nn.Softmax(dim=0)`, `x.softmax(0)`,
a line in `forward()`, in a loss function or in the user's loop, with no code parsed and no
op intercepted. Reading the graph runs nothing; it must happen before `backward()` frees
the saved tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_NODES = 20_000  # a walk stops here: a transformer's graph is a few thousand nodes
# ops a probability can pass through unchanged in meaning on its way into a log:
# `log(p + 1e-8)`, `p.clamp(min=eps).log()`, `log(p[range(n), y])`, `log(1 - p)` (hand-written BCE)
TRANSPARENT = {"AddBackward0", "AddBackward1", "ClampBackward1", "ClampMinBackward0", "ClampBackward0",
               "IndexBackward0", "GatherBackward0", "SelectBackward0", "SliceBackward0", "ViewBackward0",
               "ReshapeAliasBackward0", "UnsafeViewBackward0", "SqueezeBackward0", "SqueezeBackward1",
               "UnsqueezeBackward0", "TBackward0", "TransposeBackward0", "PermuteBackward0", "CloneBackward0",
               "ToCopyBackward0", "RsubBackward1", "RsubBackward0", "ExpandBackward0", "SplitBackward0",
               "UnbindBackward0", "CatBackward0", "StackBackward0", "MaskedFillBackward0", "WhereBackward0",
               "SumBackward0", "SumBackward1", "MulBackward0"}  # (p * onehot).sum(1).log(): the true class's p
PROBABILITIES = {"SoftmaxBackward0": "softmax", "SigmoidBackward0": "sigmoid"}
NORMALIZERS = {"SoftmaxBackward0": "softmax", "LogSoftmaxBackward0": "log_softmax"}
# ops whose derivative is zero wherever it exists: everything below them gets a zero gradient
ZERO_DERIVATIVE = {"RoundBackward0": "round", "RoundBackward1": "round", "SignBackward0": "sign",
                   "SgnBackward0": "sgn", "FloorBackward0": "floor", "CeilBackward0": "ceil", "TruncBackward0": "trunc"}


@dataclass
class Normalizer:
    """A softmax or log_softmax in the graph: its dim and its result (when still saved)."""
    op: str
    dim: int
    result: torch.Tensor | None
    order: int  # position in the walk from the loss: the same program gives the same order


@dataclass
class UnstableLog:
    """A log (or BCELoss) taken of a softmax/sigmoid output."""
    pattern: str   # "log(softmax(x))", "log(sigmoid(x))", "BCELoss(sigmoid(x))"
    via: list[str]  # the transparent ops between them, loss side first


@dataclass
class LossGraph:
    nodes: list
    normalizers: list[Normalizer]
    unstable_logs: list[UnstableLog]
    targets: list[tuple[torch.Tensor, int]]  # (target, ignore_index) of each NLL loss
    flat_ops: list[str]                      # ops with a zero derivative (round, sign, floor...), loss side first
    loss: torch.Tensor | None = None         # the loss itself (its graph kept for one backward)


def walk(loss: torch.Tensor) -> list:
    """The graph's nodes reachable from `loss`, each once, in breadth-first order."""
    root = getattr(loss, "grad_fn", None)
    if root is None:
        return []
    seen, order, frontier = {root}, [root], [root]
    while frontier and len(order) < MAX_NODES:
        nxt = []
        for node in frontier:
            for child, _ in node.next_functions:
                if child is not None and child not in seen:
                    seen.add(child)
                    order.append(child)
                    nxt.append(child)
        frontier = nxt
    return order


def _saved(node, name: str):
    try:
        return getattr(node, name)
    except (AttributeError, RuntimeError):  # freed by a backward already
        return None


def _source(node, via: list[str]) -> str | None:
    """The probability op a log's input comes from, following transparent ops (into `via`)."""
    for _ in range(12):
        name = type(node).__name__
        if name in PROBABILITIES:
            return PROBABILITIES[name]
        if name == "DivBackward0" and _is_hand_softmax(node):
            return "softmax"
        if name not in TRANSPARENT:
            return None
        via.append(name.removesuffix("Backward0").removesuffix("Backward1").lower())
        inputs = [c for c, _ in node.next_functions if c is not None]
        if name == "MulBackward0" and len(inputs) != 1:  # p * a mask or weight, never p * q
            return None
        if len(inputs) != 1:  # several graph inputs meet (p + q, cat): follow a probability among them
            probability = [c for c in inputs if _source(c, []) is not None]
            if not probability:
                return None
            inputs = probability[:1]
        node = inputs[0]
    return None


def _is_hand_softmax(div) -> bool:
    """exp(x) / exp(x).sum(...): a softmax written out."""
    parts = [c for c, _ in div.next_functions if c is not None]
    if len(parts) != 2 or type(parts[0]).__name__ != "ExpBackward0":
        return False
    denominator = parts[1]
    return type(denominator).__name__ in ("SumBackward1", "SumBackward0") and \
        any(c is parts[0] for c, _ in denominator.next_functions)


def read(loss: torch.Tensor) -> LossGraph:
    """What the loss's graph says about how it was built."""
    nodes = walk(loss)
    normalizers, logs, targets, flat = [], [], [], []
    for i, node in enumerate(nodes):
        name = type(node).__name__
        if name in ZERO_DERIVATIVE:
            flat.append(ZERO_DERIVATIVE[name])
        elif name in NORMALIZERS:
            dim = _saved(node, "_saved_dim")
            if isinstance(dim, int):
                dim = dim - 2 ** 64 if dim >= 2 ** 63 else dim  # saved as an unsigned int: -1 reads 2**64 - 1
                normalizers.append(Normalizer(NORMALIZERS[name], dim, _saved(node, "_saved_result"), i))
        elif name == "LogBackward0" or name == "BinaryCrossEntropyBackward0":
            via: list[str] = []
            child = next((c for c, _ in node.next_functions if c is not None), None)
            source = _source(child, via) if child is not None else None
            if source is not None:
                pattern = f"log({source}(x))" if name == "LogBackward0" else "BCELoss(sigmoid(x))"
                logs.append(UnstableLog(pattern, via))
        elif name == "NllLossBackward0" or name == "NllLoss2DBackward0":
            target, ignore = _saved(node, "_saved_target"), _saved(node, "_saved_ignore_index")
            if isinstance(target, torch.Tensor) and isinstance(ignore, int):
                targets.append((target, ignore))
    return LossGraph(nodes, normalizers, logs, targets, flat, loss)
