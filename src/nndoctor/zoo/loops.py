"""A plain PyTorch training loop, the one the own-loop scenarios run (with a fault switched
on), and `fit`, which trains any Setup without nndoctor (for tests and baselines)."""
from __future__ import annotations

from collections import defaultdict
from functools import partial
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


def evaluate(model, loss_fn, data, *, no_grad: bool = True, eval_mode: bool = True) -> torch.Tensor:
    """Loss on the whole of `data` (small sets: one batch), in eval mode without autograd; the
    mode is restored. `no_grad=False` / `eval_mode=False` are the two classic slips."""
    was_training = model.training
    if eval_mode:
        model.eval()
    X, y = data
    with torch.set_grad_enabled(not no_grad):
        loss = loss_fn(model(X), y)
    model.train(was_training)
    return loss


def train_loop(setup, doctor, *, seed: int, zero_grad: bool = True, train_mode: bool = True,
               clip_norm: float | None = None, cosine: bool = False, val_every: int = 25,
               schedule=None, keep_losses: bool = False, val_no_grad: bool = True,
               val_eval_mode: bool = True, val_on_train: bool = False) -> None:
    """Train `setup` for `setup.steps` steps, logging the loss each step and the validation
    loss every `val_every` steps. The switches reproduce loop faults (`zero_grad=False`,
    `train_mode=False`, a tight `clip_norm`, `schedule(optimizer)` stepped every batch,
    `keep_losses` (the loss tensors appended to a list), validation with autograd on
    (`val_no_grad=False`), in train mode (`val_eval_mode=False`) or on the training data
    (`val_on_train`)) and one good practice (`cosine` decay sized in steps)."""
    model, optimizer, loss_fn = setup.model, setup.optimizer, setup.loss_fn
    model.train(train_mode)
    if cosine:
        schedule = partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=setup.steps)
    scheduler = schedule(optimizer) if schedule is not None else None
    val_data = setup.train_data if val_on_train else setup.val_data
    kept = []
    for step, (x, y) in zip(range(setup.steps), batches(setup.train_data, setup.batch_size, seed)):
        if zero_grad:
            optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if keep_losses:
            kept.append(loss)  # the tensor, with its graph: `losses.append(loss)`
        doctor.log(loss=loss.detach())
        if val_data is not None and (step + 1) % val_every == 0:
            val_loss = evaluate(model, loss_fn, val_data, no_grad=val_no_grad, eval_mode=val_eval_mode)
            doctor.log(val_loss=val_loss.detach())


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
