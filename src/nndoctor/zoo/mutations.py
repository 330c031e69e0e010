"""Mutation operators (DeepCrime style): each returns a function Recipe -> Recipe that
injects one fault (or one change) into a setup, so a scenario is a base plus a few of them.

The generic operators change one factory's options or append an edit; the named ones
below them are the faults people actually write, built from the generic ones.
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .bases import FunctionalMLP
from .data import Split
from .loops import train_loop
from .recipe import Recipe

Mutation = Callable[[Recipe], Recipe]
# Options are layered with functools.partial: partial(partial(f, lr=1), lr=8) calls f(lr=8).


def apply(recipe: Recipe, *mutations: Mutation) -> Recipe:
    for mutate in mutations:
        recipe = mutate(recipe)
    return recipe


# generic operators ---------------------------------------------------------------------

def optimizer(cls, **options) -> Mutation:
    """Swap the optimizer."""
    return lambda r: replace(r, optimizer=partial(cls, **options))


def optim(**options) -> Mutation:
    """Change optimizer options (lr, momentum, weight_decay...)."""
    return lambda r: replace(r, optimizer=partial(r.optimizer, **options))


def lr(value: float) -> Mutation:
    return optim(lr=value)


def arch(**options) -> Mutation:
    """Change the model builder's options (depth, width, act, dropout...)."""
    return lambda r: replace(r, model=partial(r.model, **options))


def model(factory: Callable[[], nn.Module]) -> Mutation:
    """Swap the model builder."""
    return lambda r: replace(r, model=factory)


def data(**options) -> Mutation:
    """Change the data loader's options (e.g. standardize_inputs=False)."""
    return lambda r: replace(r, data=partial(r.data, **options))


def steps(n: int) -> Mutation:
    return lambda r: replace(r, steps=n)


def batch(size: int) -> Mutation:
    return lambda r: replace(r, batch_size=size)


def loop(**switches) -> Mutation:
    """Train with the user's own loop (`train_loop` with these switches)."""
    return lambda r: replace(r, loop=partial(train_loop, **switches))


def edit_data(edit: Callable[[Split], Split]) -> Mutation:
    return lambda r: replace(r, data_edits=r.data_edits + (edit,))


def edit_model(edit: Callable[[nn.Module], nn.Module]) -> Mutation:
    return lambda r: replace(r, model_edits=r.model_edits + (edit,))


def unshuffled() -> Mutation:
    """Feed the data through a DataLoader with shuffle=False."""
    return lambda r: replace(r, shuffle=False)


# faults in the data ----------------------------------------------------------------------

def _both(split: Split, fx=None, fy=None) -> Split:
    """Apply the same change to the train and validation parts."""
    fx, fy = fx or (lambda t: t), fy or (lambda t: t)
    return split.replace(X=fx(split.X), y=fy(split.y), X_val=fx(split.X_val), y_val=fy(split.y_val))


def raw_inputs() -> Mutation:
    """Skip input standardization."""
    return data(standardize_inputs=False)


def raw_targets() -> Mutation:
    """Skip target standardization (regression)."""
    return data(standardize_targets=False)


def scale_inputs(factor: float) -> Mutation:
    return edit_data(lambda s: _both(s, fx=lambda X: X * factor))


def affine_targets(scale: float, offset: float) -> Mutation:
    return edit_data(lambda s: _both(s, fy=lambda y: y * scale + offset))


def shift_labels(by: int = 1) -> Mutation:
    """Class labels 1..C instead of 0..C-1 (1-based label files)."""
    return edit_data(lambda s: _both(s, fy=lambda y: y + by))


def signed_labels() -> Mutation:
    """Binary targets as -1/+1 (an SVM habit) instead of 0/1."""
    return edit_data(lambda s: _both(s, fy=lambda y: 2 * y - 1))


def flat_targets() -> Mutation:
    """Regression targets of shape (N,) against a model output of shape (N, 1)."""
    return edit_data(lambda s: _both(s, fy=lambda y: y.reshape(-1)))


def nan_rows(fraction: float = 0.02, *, in_targets: bool = False) -> Mutation:
    """Put NaN into a fixed share of the training rows (a failed parse, a 0/0)."""
    def edit(split: Split) -> Split:
        n = len(split.X)
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(3))[:max(1, int(n * fraction))]
        if in_targets:
            y = split.y.clone()
            y[rows] = float("nan")
            return split.replace(y=y)
        X = split.X.clone()
        X[rows, 0] = float("nan")
        return split.replace(X=X)
    return edit_data(edit)


def sort_by_label() -> Mutation:
    """Training rows ordered by class and fed in that order, every epoch."""
    def edit(split: Split) -> Split:
        order = torch.argsort(split.y, stable=True)
        return split.replace(X=split.X[order], y=split.y[order])
    return lambda r: unshuffled()(edit_data(edit)(r))


def subset(n: int) -> Mutation:
    """Keep only `n` training rows (a fixed random choice)."""
    def edit(split: Split) -> Split:
        rows = torch.randperm(len(split.X), generator=torch.Generator().manual_seed(5))[:n]
        return split.replace(X=split.X[rows], y=split.y[rows])
    return edit_data(edit)


def imbalance(majority: int, keep: float) -> Mutation:
    """Keep every row of class `majority` and only a share `keep` of the other classes'
    rows, in train and validation alike (the data as collected)."""
    def thin(X, y, seed):
        draw = torch.rand(len(y), generator=torch.Generator().manual_seed(seed))
        rows = (y.reshape(-1) == majority) | (draw < keep)
        return X[rows], y[rows]
    def edit(split: Split) -> Split:
        X, y = thin(split.X, split.y, 1)
        X_val, y_val = thin(split.X_val, split.y_val, 2)
        return Split(X, y, X_val, y_val)
    return edit_data(edit)


def shuffle_labels() -> Mutation:
    """Targets permuted against the inputs (a misaligned join), in train and validation."""
    def permute(y, seed):
        return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]
    return edit_data(lambda s: s.replace(y=permute(s.y, 1), y_val=permute(s.y_val, 2)))


def standardize_train_only() -> Mutation:
    """Raw inputs standardized in the training split only (the validation split keeps its
    raw units): preprocessing applied to one split."""
    def edit(split: Split) -> Split:
        mean, std = split.X.mean(0), split.X.std(0).clamp_min(1e-6)
        return split.replace(X=(split.X - mean) / std)
    return lambda r: edit_data(edit)(raw_inputs()(r))


# faults in the optimizer -----------------------------------------------------------------

def bottom_lr(value: float, layers: int = 1) -> Mutation:
    """Give the first `layers` weight layers (weight and bias each) their own learning
    rate, as when a "backbone" gets a tiny rate by mistake."""
    def mutate(r: Recipe) -> Recipe:
        base = r.optimizer

        def make(params):
            params = list(params)
            return base([{"params": params[:2 * layers], "lr": value}, {"params": params[2 * layers:]}])
        return replace(r, optimizer=make)
    return mutate


# faults in the model ---------------------------------------------------------------------

def freeze(matching: str) -> Mutation:
    """`requires_grad_(False)` on every parameter whose name contains `matching`."""
    def edit(model: nn.Module) -> nn.Module:
        for name, p in model.named_parameters():
            if matching in name:
                p.requires_grad_(False)
        return model
    return edit_model(edit)


def _weighted(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def init_normal(std: float) -> Mutation:
    """Every weight drawn from N(0, std^2), biases zero, whatever the layer's width."""
    def edit(model: nn.Module) -> nn.Module:
        for layer in _weighted(model):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        return model
    return edit_model(edit)


def init_constant(value: float) -> Mutation:
    """Every weight and bias set to the same constant (zero is the classic)."""
    def edit(model: nn.Module) -> nn.Module:
        for layer in _weighted(model):
            nn.init.constant_(layer.weight, value)
            nn.init.constant_(layer.bias, value)
        return model
    return edit_model(edit)


def hidden_bias(value: float, layers: int | None = None) -> Mutation:
    """Set the bias of the first `layers` weight layers (default: all but the output
    layer) to `value`; very negative, and the ReLUs after them start dead."""
    def edit(model: nn.Module) -> nn.Module:
        hidden = _weighted(model)[:-1]
        with torch.no_grad():
            for layer in hidden[:layers]:
                layer.bias.fill_(value)
        return model
    return edit_model(edit)


def scale_output(factor: float) -> Mutation:
    """Multiply the last layer's weights: logits start `factor` times too large."""
    def edit(model: nn.Module) -> nn.Module:
        with torch.no_grad():
            _weighted(model)[-1].weight.mul_(factor)
        return model
    return edit_model(edit)


def output_bias(value: float) -> Mutation:
    """Start the last layer's bias at `value` (a confident guess before seeing any data)."""
    def edit(model: nn.Module) -> nn.Module:
        with torch.no_grad():
            _weighted(model)[-1].bias.fill_(value)
        return model
    return edit_model(edit)


def insert(index: int, make: Callable[[], nn.Module]) -> Mutation:
    """Insert a module into an nn.Sequential at `index` (index -1 appends)."""
    def edit(model: nn.Sequential) -> nn.Sequential:
        layers = list(model)
        layers.insert(len(layers) if index == -1 else index, make())
        return nn.Sequential(*layers)
    return edit_model(edit)


def append(make: Callable[[], nn.Module]) -> Mutation:
    return insert(-1, make)


class Round(nn.Module):
    """Rounds activations (quantization without a straight-through estimator): the
    derivative of round is 0 everywhere, so everything below gets zero gradient."""

    def forward(self, x):
        return torch.round(x)


class Sign(nn.Module):
    """A binary activation, sign(x): derivative 0 everywhere."""

    def forward(self, x):
        return torch.sign(x)


class Log(nn.Module):
    """A log of its input (here: of ReLU outputs, which are often exactly 0); log(0) is -inf."""

    def forward(self, x):
        return torch.log(x)


class Sqrt(nn.Module):
    """A square root of a learned quantity that can be negative: sqrt(<0) is NaN."""

    def forward(self, x):
        return torch.sqrt(x)


class Detach(nn.Module):
    """x.detach(), as in feature-extraction code: the graph ends here."""

    def forward(self, x):
        return x.detach()


class SkipsALayer(FunctionalMLP):
    """Defines fc2 in __init__ but its forward never calls it."""

    def forward(self, x):
        return self.out(F.relu(self.fc1(x)))


# faults in how the output and the loss are built (tracecodes) -------------------------------

def loss_fn(factory: Callable[[], object]) -> Mutation:
    """Swap the loss."""
    return lambda r: replace(r, loss=factory)


def hand_written_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy as the formula reads: -sum(onehot * log(softmax)). log(0) = -inf as soon
    as one probability underflows (F.cross_entropy computes the same via log_softmax)."""
    return -(F.one_hot(y, logits.shape[1]) * torch.log(F.softmax(logits, dim=1))).sum(1).mean()


class LogSoftmaxMLP(FunctionalMLP):
    """Ends with F.log_softmax(z, dim=dim), for NLLLoss: dim=1 normalizes each row over the
    classes; dim=0 normalizes each class column over the batch (the bug)."""

    def __init__(self, *args, dim: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.dim = dim

    def forward(self, x):
        return F.log_softmax(super().forward(x), dim=self.dim)
