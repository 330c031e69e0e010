"""What kind of loss the user gave, and running it without letting it raise."""
from __future__ import annotations

import copy
import math

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..collect.case import Replay

CLASSIFICATION = {"cross_entropy", "nll"}
BINARY = {"bce", "bce_logits"}
REGRESSION = {"mse", "l1", "huber"}

_MODULES = [(nn.CrossEntropyLoss, "cross_entropy"), (nn.NLLLoss, "nll"), (nn.BCELoss, "bce"),
            (nn.BCEWithLogitsLoss, "bce_logits"), (nn.MSELoss, "mse"), (nn.L1Loss, "l1"),
            (nn.SmoothL1Loss, "huber"), (nn.HuberLoss, "huber")]
_FUNCTIONS = {F.cross_entropy: "cross_entropy", F.nll_loss: "nll", F.binary_cross_entropy: "bce",
              F.binary_cross_entropy_with_logits: "bce_logits", F.mse_loss: "mse", F.l1_loss: "l1",
              F.smooth_l1_loss: "huber", F.huber_loss: "huber"}


def loss_kind(loss_fn) -> str:
    """'cross_entropy', 'nll', 'bce', 'bce_logits', 'mse', 'l1', 'huber' or 'unknown'. A loss
    replayed from a watched script's ops has the kind of the known loss inside it."""
    if isinstance(loss_fn, Replay):
        return loss_kind(loss_fn.loss) if loss_fn.loss is not None else "unknown"
    for cls, kind in _MODULES:
        if isinstance(loss_fn, cls):
            return kind
    return _FUNCTIONS.get(loss_fn, "unknown")


def default_loss(y: torch.Tensor) -> tuple[nn.Module, str]:
    """The loss a user would most likely pair with these targets when none is given."""
    if not y.is_floating_point():
        return nn.CrossEntropyLoss(), "cross_entropy"
    return nn.MSELoss(), "mse"


def run_loss(loss_fn, out: torch.Tensor, y: torch.Tensor):
    """(loss tensor or None, the exception or None). Its warnings (a broadcast) are findings, not noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = loss_fn(out, y)
            error = None
        except Exception as exc:  # a broken setup is a finding, never a crash
            value, error = None, exc
    if value is not None and (not isinstance(value, torch.Tensor) or value.numel() != 1):
        value, error = None, ValueError("the loss did not return a scalar tensor")
    return value, error


def loss_floor(loss_fn, classes: int | None, targets: torch.Tensor | None = None) -> float:
    """The lowest value the loss can reach on fitted data: 0, except where the targets keep an
    entropy the loss cannot remove — cross-entropy with label smoothing eps (eps/C stays on every
    class) and binary cross-entropy on soft targets in (0, 1) (a VAE's grey pixels): the mean
    binary entropy of the targets."""
    kind = loss_kind(loss_fn)
    if kind in BINARY and targets is not None and targets.is_floating_point() and targets.numel():
        p = targets.detach().double().clamp(1e-12, 1 - 1e-12)
        if bool(((p >= 0) & (p <= 1)).all()):
            return float(-(p * p.log() + (1 - p) * (1 - p).log()).mean())
    eps = float(getattr(loss_fn, "label_smoothing", 0.0) or 0.0)
    if not eps or not classes or classes < 2 or loss_kind(loss_fn) != "cross_entropy":
        return 0.0
    top, rest = 1 - eps + eps / classes, eps / classes
    return float(-(top * math.log(top) + (classes - 1) * rest * math.log(rest)))


def ignore_index(loss_fn) -> int | None:
    return getattr(loss_fn, "ignore_index", -100 if loss_kind(loss_fn) in CLASSIFICATION else None)


def class_weights(loss_fn, classes: int) -> torch.Tensor | None:
    """The weight the loss gives each class (`weight` of CrossEntropyLoss/NLLLoss, `pos_weight`
    of a single-output BCEWithLogitsLoss), or None when it weighs every class alike."""
    kind = loss_kind(loss_fn)
    if kind in CLASSIFICATION:
        weight = getattr(loss_fn, "weight", None)
        if weight is None or weight.numel() < classes:
            return None
        weight = weight.detach().double().cpu()[:classes]
    elif kind == "bce_logits":
        pos = getattr(loss_fn, "pos_weight", None)
        if pos is None or pos.numel() != 1 or classes != 2:
            return None
        weight = torch.tensor([1.0, float(pos)], dtype=torch.float64)
    else:
        return None
    return None if bool((weight == weight[0]).all()) else weight


def unweighted(loss_fn):
    """The same loss with its class weights removed: a plain mean over rows, whose value at init
    does not hang on the few minority rows of one batch."""
    if not isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss, nn.BCEWithLogitsLoss)):
        return loss_fn
    plain = copy.deepcopy(loss_fn)
    for name in ("weight", "pos_weight"):
        if getattr(plain, name, None) is not None:
            setattr(plain, name, None)
    return plain
