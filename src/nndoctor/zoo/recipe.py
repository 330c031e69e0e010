"""Setup (what a scenario hands to the doctor), Scenario, and Recipe (how a Setup is built).

A Recipe keeps every part of a training setup as a factory (data, model, loss, optimizer,
loop) plus lists of edits applied after the data is loaded and after the model is
initialized. A mutation operator returns a changed Recipe, so a fault is one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .data import Split


@dataclass
class Setup:
    model: nn.Module
    train_data: object            # (X, y) tensors, a Dataset or a DataLoader
    loss_fn: object
    optimizer: torch.optim.Optimizer
    val_data: object = None
    steps: int = 200
    batch_size: int | None = 32
    loop: Callable | None = None  # loop(setup, doctor): trains the model itself, logging to doctor


@dataclass(frozen=True)
class Scenario:
    name: str                     # e.g. "mlp-digits/lr=8"
    description: str              # one sentence: what is wrong (or "healthy: ...")
    expected: tuple[str, ...]     # finding codes; expected[0] is the root cause; () for healthy
    build: Callable[[int], Setup] # seed -> a fresh Setup
    tags: frozenset[str]

    @property
    def healthy(self) -> bool:
        return not self.expected


@dataclass(frozen=True)
class Recipe:
    """A healthy or mutated training setup, as factories."""
    family: str                                   # "mlp", "cnn", "rnn" or "transformer"
    data: Callable[[], Split]
    model: Callable[[], nn.Module]
    loss: Callable[[], object]
    optimizer: Callable[..., torch.optim.Optimizer]  # called with the model's parameters
    steps: int = 200
    batch_size: int | None = 32
    shuffle: bool = True                          # False: a DataLoader that keeps the data's order
    loop: Callable | None = None                  # loop(setup, doctor, *, seed) for own-loop faults
    data_edits: tuple[Callable[[Split], Split], ...] = ()
    model_edits: tuple[Callable[[nn.Module], nn.Module], ...] = ()

    def build(self, seed: int = 0) -> Setup:
        split = self.data()
        for edit in self.data_edits:
            split = edit(split)
        torch.manual_seed(seed)  # the model's init (and any random edit of it) follows the seed
        model = self.model()
        for edit in self.model_edits:
            model = edit(model)
        train = split.train
        if not self.shuffle:
            train = DataLoader(TensorDataset(*train), batch_size=self.batch_size, shuffle=False)
        return Setup(model=model, train_data=train, loss_fn=self.loss(),
                     optimizer=self.optimizer(model.parameters()), val_data=split.val,
                     steps=self.steps, batch_size=self.batch_size,
                     loop=partial(self.loop, seed=seed) if self.loop else None)
