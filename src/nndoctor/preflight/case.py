"""The setup under examination, shared by all checks: the sampled data, the traced batch,
the loss and what earlier checks found."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..findings import Finding
from .losses import BINARY, CLASSIFICATION
from .structure import Trace


@dataclass
class Case:
    model: nn.Module                      # the user's model: read, never run
    data: Any                             # train_data as given
    X: torch.Tensor | None = None         # sampled rows with finite values
    y: torch.Tensor | None = None
    loss_fn: Any = None
    kind: str = "unknown"                 # see losses.loss_kind
    probe: nn.Module | None = None        # the copy that batch ran through: probes copy it (lazy layers initialized)
    trace: Trace | None = None            # one batch through that copy
    xb: torch.Tensor | None = None        # that batch
    yb: torch.Tensor | None = None
    loss0: float | None = None            # loss at init on that batch
    loss_error: Exception | None = None   # what the loss raised on it
    batch_size: int | None = None         # the batch the run trains with, when told
    rows: int | None = None               # rows in the training data, when it has a length
    graphs: list | None = None           # the loss's autograd graph on that batch and on its half (graph_checks)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)   # numbers of the learning probes, for the report

    def has(self, *codes: str) -> bool:
        return any(f.code in codes for f in self.findings)

    @property
    def out(self) -> torch.Tensor | None:
        return self.trace.output if self.trace is not None else None

    @property
    def n_outputs(self) -> int | None:
        out = self.out
        if out is None:
            return None
        return out.shape[1] if out.dim() >= 2 else 1

    @property
    def head(self) -> str:
        """The last weight layer, as `name` (for fixes that touch the output layer)."""
        if self.trace is not None and self.trace.layers:
            return self.trace.layers[-1].name
        return "the last layer"


def class_labels(y: torch.Tensor, kind: str) -> torch.Tensor | None:
    """One class index per row when the targets are class labels (indices, 0/1 or one-hot), else None."""
    if kind not in CLASSIFICATION | BINARY | {"unknown"} or y.dim() > 2:
        return None
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if not y.is_floating_point():
        return y.long() if y.dim() == 1 and len(y) and y.min() >= 0 else None
    if kind not in BINARY or not bool(((y == 0) | (y == 1)).all()):
        return None
    if y.dim() == 1:
        return y.long()
    return y.argmax(1) if bool((y.sum(1) == 1).all()) else None  # one-hot; multi-label is not one class per row
