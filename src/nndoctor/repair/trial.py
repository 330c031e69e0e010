"""A training setup the repair can rebuild from scratch and re-run.

A Trial holds the model at its initial state, the optimizer as class + hyperparameters, the
data as training sees it, and the repairs of the data that must travel with the model
(`inputs`: a fitted standardization in front; `outputs`: the inverse target scaling
behind; `relabel`: the target map the model's answers refer to). `run()` trains a deep copy
under `diagnose`, so a Trial is never changed by running it.
"""
from __future__ import annotations

import copy
import inspect
import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler, TensorDataset

from ..data import check_data, sample
from ..findings import Report
from ..preflight.losses import loss_kind

EVAL_ROWS = 4096


class Affine(nn.Module):
    """x * scale + shift with fitted, saved constants: standardization in front of a model
    (scale 1/std, shift -mean/std) or its inverse behind it."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x):
        return x * self.scale + self.shift


class Repaired(nn.Module):
    """The user's model with the data repairs that travel with it: it takes the user's raw
    inputs and answers in the user's units."""

    def __init__(self, model: nn.Module, inputs: nn.Module | None = None, outputs: nn.Module | None = None):
        super().__init__()
        self.inputs = inputs or nn.Identity()
        self.model = model
        self.outputs = outputs or nn.Identity()

    def forward(self, x):
        return self.outputs(self.model(self.inputs(x)))


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer as its class and param groups (parameter positions + options), so it
    can be rebuilt over a copy of the model."""
    cls: type
    groups: tuple[tuple[tuple[int, ...], dict], ...]

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer, model: nn.Module) -> "OptimizerSpec":
        position = {id(p): i for i, p in enumerate(model.parameters())}
        groups = tuple((tuple(position[id(p)] for p in g["params"] if id(p) in position),
                        {k: v for k, v in g.items() if k != "params"}) for g in optimizer.param_groups)
        return cls(type(optimizer), groups)

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        params = list(model.parameters())
        covered = sorted(i for positions, _ in self.groups for i in positions)
        if covered != list(range(len(params))):  # the repair changed the parameters: one group
            return self.cls([{"params": params, **self.groups[0][1]}])
        return self.cls([{"params": [params[i] for i in positions], **options} for positions, options in self.groups])

    @property
    def lr(self) -> float:
        return max(float(options.get("lr", 0.0)) for _, options in self.groups)

    def with_lr(self, lr: float) -> "OptimizerSpec":
        """Every group's rate scaled so the largest becomes `lr` (the groups keep their proportions)."""
        peak = self.lr or 1.0
        return replace(self, groups=tuple((p, {**o, "lr": float(o.get("lr", peak)) * lr / peak}) for p, o in self.groups))

    def with_options(self, **options) -> "OptimizerSpec":
        return replace(self, groups=tuple((p, {**o, **options}) for p, o in self.groups))

    def with_class(self, cls: type, **options) -> "OptimizerSpec":
        """Another optimizer class, keeping the rate and the options the new class accepts."""
        accepted = set(inspect.signature(cls.__init__).parameters)
        return replace(self, cls=cls, groups=tuple(
            (p, {**{k: v for k, v in o.items() if k in accepted}, **options}) for p, o in self.groups))

    def snippet(self) -> str:
        """The constructor call a user would write (options that differ from the defaults)."""
        defaults = {k: v.default for k, v in inspect.signature(self.cls.__init__).parameters.items()
                    if v.default is not inspect.Parameter.empty}
        options = self.groups[0][1]
        shown = [f"{k}={_literal(v)}" for k, v in options.items()
                 if k in defaults and k != "params" and (k == "lr" or v != defaults[k]) and not _internal(k)]
        module = "torch.optim" if getattr(torch.optim, self.cls.__name__, None) is self.cls else self.cls.__module__
        note = "  # each param group's lr scaled in the same proportion" if len(self.groups) > 1 else ""
        return f"optimizer = {module}.{self.cls.__name__}(model.parameters(), {', '.join(shown)}){note}"


def _internal(option: str) -> bool:
    return option in ("foreach", "fused", "capturable", "differentiable", "maximize", "decoupled_weight_decay")


def _literal(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ")"
    return repr(value)


@dataclass
class Outcome:
    """One run of a Trial: its report, the trained (deployable) model and optimizer."""
    trial: "Trial"
    report: Report
    model: nn.Module
    optimizer: torch.optim.Optimizer
    seconds: float


@dataclass(frozen=True)
class Trial:
    model: nn.Module                   # at its initial state; only copies are trained
    optimizer: OptimizerSpec
    loss_fn: object
    train: object                      # as diagnose takes it (already repaired data)
    val: object | None
    steps: int | None
    batch_size: int | None
    seed: int
    inputs: nn.Module | None = None    # travels in front of the model (fitted on training data)
    outputs: nn.Module | None = None   # travels behind it (inverse target scaling)
    relabel: Callable | None = None    # targets as the repaired model answers them
    schedule: str | None = None        # "cosine": the rate decays to 0 over the run
    clip: float | None = None          # gradient-norm clipping threshold

    def replace(self, **changes) -> "Trial":
        return replace(self, **changes)

    def run(self) -> Outcome:
        from ..diagnosis import diagnose
        started = time.perf_counter()
        model = copy.deepcopy(self.model)
        optimizer = self.optimizer.build(model)
        handles = self._attach(optimizer, model)
        try:
            report = diagnose(model, self.train, loss_fn=self.loss_fn, optimizer=optimizer, val_data=self.val,
                              steps=self.steps, batch_size=self.batch_size, seed=self.seed)
        finally:
            for handle in handles:
                handle.remove()
        deployed = Repaired(model, self.inputs, self.outputs) if self.inputs or self.outputs else model
        return Outcome(self, report, deployed, optimizer, time.perf_counter() - started)

    def _attach(self, optimizer, model) -> list:
        """The schedule and clipping as optimizer hooks, so diagnose's own loop runs them."""
        handles = []
        if self.clip is not None:
            params = [p for p in model.parameters() if p.requires_grad]
            handles.append(optimizer.register_step_pre_hook(
                lambda *_: torch.nn.utils.clip_grad_norm_(params, self.clip)))
        if self.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, self.steps or 1))
            handles.append(optimizer.register_step_post_hook(lambda *_: scheduler.step()))
        return handles


# data ------------------------------------------------------------------------------------

def tensors(data) -> tuple[torch.Tensor, torch.Tensor] | None:
    """All rows of `data` as two tensors, or None when it does not yield (input, target) pairs."""
    data = check_data(data)
    if isinstance(data, tuple):
        return data
    return sample(data, max_rows=10 ** 9)


def like(original, X: torch.Tensor, y: torch.Tensor):
    """Repaired rows in the form the user gave: a DataLoader keeps its batch size and order."""
    if isinstance(original, DataLoader):
        keeps_order = isinstance(original.sampler, SequentialSampler)
        return DataLoader(TensorDataset(X, y), batch_size=original.batch_size, shuffle=not keeps_order,
                          generator=torch.Generator().manual_seed(0))
    return (X, y)


def finite_rows(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A row mask: True where both the input and the target are finite."""
    def ok(t):
        if not t.is_floating_point():
            return torch.ones(len(t), dtype=torch.bool)
        return torch.isfinite(t.reshape(len(t), -1)).all(1)
    return ok(X) & ok(y)


# judging a run ---------------------------------------------------------------------------

@torch.no_grad()
def measure(model: nn.Module, data, loss_fn, relabel: Callable | None = None) -> dict:
    """Loss (and accuracy for classification) of `model` on up to EVAL_ROWS finite rows of
    `data`, with the targets as `relabel` maps them; NaN where the loss cannot be computed."""
    rows = sample(data, max_rows=EVAL_ROWS) if data is not None else None
    if rows is None:
        return {}
    X, y = rows
    keep = finite_rows(X, y)
    X, y = X[keep], y[keep]
    if relabel is not None:
        y = relabel(y)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = torch.cat([model(X[i:i + 1024].to(device)) for i in range(0, len(X), 1024)]).cpu()
        loss = float(loss_fn(out, y))
    except Exception:  # a broken model or loss is measured as "no result", never a crash
        return {"loss": math.nan}
    finally:
        model.train(was_training)
    result = {"loss": loss if math.isfinite(loss) else math.nan}
    accuracy = _accuracy(out, y, loss_kind(loss_fn))
    if accuracy is not None:
        result["accuracy"] = accuracy
    return result


def _accuracy(out: torch.Tensor, y: torch.Tensor, kind: str) -> float | None:
    if not torch.isfinite(out).all():
        return 0.0
    if kind in ("cross_entropy", "nll") and not y.is_floating_point() and y.dim() == 1 and out.dim() == 2:
        return float((out.argmax(1) == y).double().mean())
    if kind in ("bce", "bce_logits") and bool(((y == 0) | (y == 1)).all()) and out.numel() == y.numel():
        threshold = 0.0 if kind == "bce_logits" else 0.5
        return float(((out.reshape(-1) > threshold).to(y.dtype) == y.reshape(-1)).double().mean())
    return None


def metrics(outcome: Outcome, train_data, val_data, loss_fn, relabel: Callable | None) -> dict:
    """Train and validation loss/accuracy of a run's deployable model on the user's own data."""
    result = {f"train_{k}": v for k, v in measure(outcome.model, train_data, loss_fn, relabel).items()}
    if val_data is not None:
        result.update({f"val_{k}": v for k, v in measure(outcome.model, val_data, loss_fn, relabel).items()})
    return result


LOSS_MARGIN = 0.02      # a loss 2% lower is better beyond run-to-run noise at a fixed seed
ACCURACY_MARGIN = 0.01  # one point of accuracy


def better(after: dict, before: dict) -> bool:
    """Measurably better on validation loss or accuracy (else on the training loss), and not
    worse on the other."""
    side = "val" if "val_loss" in after else "train"
    loss_a, loss_b = after.get(f"{side}_loss", math.nan), before.get(f"{side}_loss", math.nan)
    acc_a, acc_b = after.get(f"{side}_accuracy"), before.get(f"{side}_accuracy")
    if not math.isfinite(loss_a):
        return False
    if not math.isfinite(loss_b):
        return True
    lower = loss_a < loss_b - LOSS_MARGIN * abs(loss_b)
    not_higher = loss_a <= loss_b + LOSS_MARGIN * abs(loss_b)
    if acc_a is None or acc_b is None:
        return lower
    return (lower and acc_a >= acc_b - ACCURACY_MARGIN) or (acc_a >= acc_b + ACCURACY_MARGIN and not_higher)
