"""A plain PyTorch training loop, the one the own-loop scenarios run (with a fault switched
on), and `fit`, which trains any Setup without nndoctor (for tests and baselines)."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator

import torch
from torch.utils.data import DataLoader


def batches(data, batch_size: int | None, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless minibatches of (X, y), reshuffled each epoch by a private generator (the
    global RNG is left alone); a DataLoader is replayed as given."""
    if isinstance(data, DataLoader):
        while True:
            yield from data
    X, y = data
    size = batch_size or 64
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(X), generator=generator)
        for start in range(0, len(X), size):
            idx = order[start:start + size]
            yield X[idx], y[idx]


@torch.no_grad()
def evaluate(model, loss_fn, data) -> torch.Tensor:
    """Loss on the whole of `data` (small sets: one batch), in eval mode; the mode is restored."""
    was_training = model.training
    model.eval()
    X, y = data
    loss = loss_fn(model(X), y)
    model.train(was_training)
    return loss


def train_loop(setup, doctor, *, seed: int, zero_grad: bool = True, train_mode: bool = True,
               clip_norm: float | None = None, cosine: bool = False, val_every: int = 25) -> None:
    """Train `setup` for `setup.steps` steps, logging the loss each step and the validation
    loss every `val_every` steps. The switches reproduce loop faults (`zero_grad=False`,
    `train_mode=False`, a tight `clip_norm`) and one good practice (`cosine` decay)."""
    model, optimizer, loss_fn = setup.model, setup.optimizer, setup.loss_fn
    model.train(train_mode)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, setup.steps) if cosine else None
    for step, (x, y) in zip(range(setup.steps), batches(setup.train_data, setup.batch_size, seed)):
        if zero_grad:
            optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        doctor.log(loss=loss.detach())
        if setup.val_data is not None and (step + 1) % val_every == 0:
            doctor.log(val_loss=evaluate(model, loss_fn, setup.val_data))


class Recorder:
    """Stands in for the doctor in a plain run: keeps every logged value as a float."""

    def __init__(self):
        self.logs: dict[str, list[float]] = defaultdict(list)

    def log(self, **values) -> None:
        for name, value in values.items():
            self.logs[name].append(float(value))


def fit(setup, seed: int = 0) -> dict[str, list[float]]:
    """Train a Setup in plain PyTorch (its own loop if it has one) and return the logged
    traces, e.g. {"loss": [...], "val_loss": [...]}."""
    recorder = Recorder()
    if setup.loop is not None:
        setup.loop(setup, recorder)
    else:
        train_loop(setup, recorder, seed=seed)
    return dict(recorder.logs)
