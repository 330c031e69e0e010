"""The pre-flight checkup: data, model structure, loss and one batch, before any training.

`checkup()` returns a Report; `run_checks()` gives `diagnose()` the same findings, notes and
meta to merge. Every finding has `step=None`.

Hands off: the user's model is only read and deep-copied; its parameters, buffers and the
train/eval mode of every submodule are left as found; the global torch, numpy and Python RNG
states, the grad mode and torch's thread count are restored (the checkup runs seeded, so it is
deterministic, and on one thread: its probes are tiny).

Cost, independent of the data's size: a random sample of at most 2048 rows (fewer for large
rows: at most 4M values, at least 64 rows; a Dataset is indexed that many times, an iterable
one read batch by batch) for the data checks (the NaN/Inf count of (X, y) tensors covers all
rows), one traced forward pass on 64 rows, the loss's autograd graph on 64 and 32 rows (two more
forward passes; one backward when a zero-derivative op is in it), the gradient noise scale when
the batch size is 20 or more (16 backward passes on 8 rows and 4 on 128, within 0.5 s), at most
200 Adam steps on 16 rows (overfit test) and
2 x 40 full-batch steps on 256 rows plus two held-out passes (no-signal test); each fit stops
at a 5 s budget (no verdict then, a note says so). Measured on 2 busy cores: 0.1-0.45 s for an
MLP on the digits data, about 1 s for a small CNN, GRU or transformer on it.
"""
from __future__ import annotations

import copy
import math
import random
import time
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ..data import check_data, rows_of, sample
from ..findings import Finding, Report
from ..names import module_types, name_modules
from ..sandbox import foreign_hooks_silenced, modes_kept
from . import data_checks as dc
from . import graph_checks as gc
from . import model_checks as mc
from .batch_checks import check_batch_too_large
from .case import Case
from .keywords import examine_keywords
from .losses import BINARY, CLASSIFICATION, default_loss, loss_kind, run_loss
from .overfit import OutOfTime, check_no_signal, check_overfit_batch
from .structure import probe_copy, trace

__all__ = ["checkup", "run_checks", "examine_captured", "describe_targets"]

MAX_ROWS = 2048   # rows sampled for the data checks: percentiles and class counts are stable well before
MAX_VALUES = 4_000_000  # ... unless the rows are large (images): then as many rows as fit 16 MB of float32, at least 64
TRACE_ROWS = 64   # rows traced through the model: enough for per-unit spread and a loss estimate
LARGE_MODEL = 2_000_000  # parameters: above this, a watcher skips the learning probes (each costs seconds there)
HUGE_MODEL = 100_000_000  # ... and above this the whole examination: its copy would double the model's memory
LOADER_SECONDS = 1.0  # a watcher samples the loader's dataset for the data checks only if that is this quick


def checkup(model, train_data, loss_fn=None, val_data=None, batch_size=None) -> Report:
    """The pre-flight examination alone (api.md §4): seconds, no training of the user's model."""
    findings, notes, meta = run_checks(model, train_data, loss_fn, val_data, batch_size)
    return Report(findings=findings, meta=meta, notes=notes)


def examine_captured(captured):
    """(findings, notes, meta) of the checkup on the first training step a watcher captured
    (`collect.case.Captured`): the same checks as `checkup()`, on its loss and on the dataset
    of the DataLoader the batch came from (`loader_rows`), else on the batch. The learning
    probes are skipped on large models (a note says so), so that the first step of a watched
    run is not held up for seconds. A model called with keyword inputs and no loss outside it
    (Hugging Face style) gets the checks its call allows (`keywords`)."""
    x, y = captured.x, captured.target
    if (x is None or y is None) and captured.error is None \
            and any(isinstance(v, torch.Tensor) for v in captured.keywords.values()):
        with hands_off(captured.model):
            return examine_keywords(captured)
    if x is None or y is None or len(x) != len(y):
        why = ("the model takes other inputs than one tensor" if x is None else
               "no loss on the model's output was found" if y is None else "the target has another row count")
        return [], [f"The pre-flight checks did not run at the first step: {why}.", *captured.notes], {}
    size = sum(p.numel() for p in captured.model.parameters())
    if size > HUGE_MODEL:
        return [], [f"The pre-flight checks did not run at the first step: the model has {size:,} parameters and "
                    "its copy would double their memory; run nndoctor.checkup() on a smaller configuration."], {}
    loss_fn, summed = per_row_mean(captured.loss_fn)
    captured.data, why = loader_rows(captured.data, x, y)
    data = captured.data if captured.data is not None else (x, y)
    findings, notes, meta = run_checks(captured.model, data, loss_fn, probes=size <= LARGE_MODEL,
                                       batch_size=getattr(captured.data, "batch_size", None))
    if why:
        notes.append(f"The data checks read the first batch only: {why}.")
    if summed:
        notes.append(f"The script's {type(loss_fn).__name__} sums over elements: the first-step checks judged "
                     "its mean, whose level at init has a known reference (a sum's grows with the batch and the output size).")
    if size > LARGE_MODEL:
        notes.append(f"The overfit and no-signal tests were skipped at the first step: the model has {size:,} "
                     f"parameters (more than {LARGE_MODEL:,}); run nndoctor.checkup() for them.")
    meta["checkup"]["at"] = "first training step"
    return findings, notes + captured.notes, meta


def loader_rows(loader, x: torch.Tensor, y: torch.Tensor) -> tuple:
    """(the loader, None) when its dataset's rows are the (input, target) rows the first batch
    was collated from and reading the checks' sample of them is quick; else (None, why not).
    The data checks then see what diagnose() sees of its train_data (every class, the order,
    the NaN rows the first batch missed); a custom collate_fn or an iterable dataset would
    make the rows something else than the batch, or read the user's stream."""
    if loader is None:
        return None, None
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return None, "the DataLoader reads an iterable dataset"
    if loader.collate_fn is not torch.utils.data.default_collate:
        return None, "the DataLoader collates its rows with its own collate_fn"
    started = time.perf_counter()
    try:
        first = sample(loader, 8)
    except Exception as exc:
        return None, f"its dataset's rows could not be read ({type(exc).__name__})"
    if first is None or any(a.shape[1:] != b.shape[1:] or a.dtype != b.dtype for a, b in zip(first, (x, y))):
        return None, "its dataset's rows are not the batch's (input, target) rows"
    rows = min(len(loader.dataset), MAX_ROWS)
    if (time.perf_counter() - started) / len(first[0]) * rows > LOADER_SECONDS:
        return None, f"reading {rows} rows of its dataset would take over {LOADER_SECONDS:g} s"
    return loader, None


def per_row_mean(loss_fn):
    """(the loss to judge, whether it was summed). A known loss module with reduction='sum' (a VAE's
    reconstruction term) is judged as its mean: the init-loss reference (ln C, ln 2, the target
    variance) and the overfit test's baseline hold per element, never for a sum."""
    if isinstance(loss_fn, nn.modules.loss._Loss) and getattr(loss_fn, "reduction", "mean") == "sum":
        mean = copy.copy(loss_fn)
        mean.reduction = "mean"
        return mean, True
    return loss_fn, False


def describe_targets(train_data, loss_fn) -> dict | None:
    """The labels' shape and the loss of a predictor that ignores its input (the baseline)."""
    rows = sample(train_data, max_rows=4096)
    if rows is None or not isinstance(rows[1], torch.Tensor):
        return None
    y, kind = rows[1], loss_kind(loss_fn)
    try:
        if not y.is_floating_point() and y.dim() == 1 and y.numel() and int(y.min()) >= 0:
            counts = torch.bincount(y.long()).double()
            prior = counts / counts.sum()
            info = {"kind": "classes", "classes": int(counts.numel()), "top_share": float(prior.max())}
            if kind in CLASSIFICATION:
                nz = prior[prior > 0]
                info["baseline"] = float(-(nz * nz.log()).sum())
            return info
        if y.is_floating_point() and y.numel() > 1:
            y = y.double()
            info = {"kind": "values", "std": float(y.std())}
            if kind == "mse":
                info["baseline"] = float(((y - y.mean(0)) ** 2).mean())
            elif kind == "l1":
                info["baseline"] = float((y - y.median()).abs().mean())
            elif kind in BINARY and 0 <= float(y.min()) and float(y.max()) <= 1:
                p = float(y.mean().clamp(1e-6, 1 - 1e-6))
                info["baseline"] = -(p * math.log(p) + (1 - p) * math.log(1 - p))
            return info
    except (RuntimeError, ValueError):
        return None
    return None


def run_checks(model, train_data, loss_fn=None, val_data=None, batch_size=None, probes: bool = True):
    """(findings, notes, meta) of the checkup; raises TypeError/ValueError only for arguments
    that are not a model, data or loss at all. `probes=False` skips the two learning fits."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be an nn.Module or a callable(output, target), not {type(loss_fn).__name__}")
    train_data = check_data(train_data, "train_data")
    val_data = check_data(val_data, "val_data") if val_data is not None else None
    start = time.perf_counter()
    with hands_off(model):
        case = _examine(Case(model=model, data=train_data, loss_fn=loss_fn, batch_size=batch_size,
                             rows=rows_of(train_data)), val_data, probes)
    meta = {"checkup": {"seconds": round(time.perf_counter() - start, 3), "model": type(model).__name__,
                        "loss": case.kind, "rows_examined": 0 if case.X is None else len(case.X),
                        "layers_traced": 0 if case.trace is None else len(case.trace.layers),
                        "batch_size": batch_size, **case.meta},
            "model": type(model).__name__, "module_types": module_types(model)}
    name_modules(case.findings, meta["module_types"])
    return case.findings, case.notes, meta


@contextmanager
def hands_off(model: nn.Module):
    """Leave the model's modes, the grad mode, the thread count and every global RNG exactly as
    found; global module and optimizer hooks (a logger's, nndoctor's own) do not see the probes."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    np_state, py_state = np.random.get_state(), random.getstate()
    # the probes are tiny: one thread is fastest, and immune to oversubscription (two threads
    # on a busy two-core machine ran the digits checkup 100x slower)
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=devices), modes_kept(model), foreign_hooks_silenced():
            torch.manual_seed(0)  # the checkup is deterministic whatever the caller's RNG position
            yield
    finally:
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _examine(c: Case, val_data, probes: bool = True) -> Case:
    pair = _sample(c.data, "train_data", c.notes)
    if pair is None:
        return c
    X, y = pair
    _add(c, dc.check_nonfinite, *(c.data if isinstance(c.data, tuple) else pair), "train_data")  # tensors: all rows, cheap
    keep = ~(dc.nonfinite_rows(X) | dc.nonfinite_rows(y))
    order = torch.randperm(int(keep.sum()), generator=torch.Generator().manual_seed(0))
    device = next(iter(c.model.parameters()), torch.empty(0)).device
    c.X, c.y = X[keep][order].to(device), y[keep][order].to(device)
    if len(c.X) < 2:
        c.notes.append("Fewer than 2 rows with finite values: the other checks were skipped.")
        return c
    if c.loss_fn is None:
        c.loss_fn, c.kind = default_loss(c.y)
        c.notes.append(f"No loss_fn given: {type(c.loss_fn).__name__} assumed from the targets' dtype.")
    else:
        c.kind = loss_kind(c.loss_fn)
        if c.kind == "unknown":
            c.notes.append(f"The loss {getattr(c.loss_fn, '__name__', type(c.loss_fn).__name__)} is not one nndoctor knows: "
                           "checks of labels, final activation and initial loss against it were skipped.")
    _trace(c)
    for check in (dc.check_labels_out_of_range, dc.check_not_normalized, dc.check_constant_feature,
                  dc.check_target_scale, dc.check_unshuffled, dc.check_class_imbalance):
        _add(c, check, c)
    if val_data is not None and (val := _sample(val_data, "val_data", c.notes)) is not None:
        _add(c, dc.check_nonfinite, *val, "val_data")
        _add(c, dc.check_labels_out_of_range, c, val[1], "val_data")
    if c.trace is None:
        return c
    c.graphs = _add(c, gc.loss_graphs, c)
    for check in (gc.check_padding_in_loss, gc.check_softmax_dim, mc.check_output_activation, gc.check_unstable_log,
                  mc.check_loss_shapes, mc.check_loss_error, mc.check_symmetric, mc.check_init_scale,
                  mc.check_recurrent_scale, mc.check_init_loss, mc.check_depth, mc.check_bottleneck,
                  gc.check_zero_gradient):
        _add(c, check, c)
    c.graphs = None  # the graphs hold the batch's activations: let them go
    if c.loss0 is None or not math.isfinite(c.loss0):
        c.notes.append("The loss could not be computed on the first batch: the overfit and no-signal tests were skipped.")
        return c
    _add(c, check_batch_too_large, c)
    if not probes:
        return c
    learned = _add(c, check_overfit_batch, c)
    if learned:
        _add(c, check_no_signal, c)
    return c


def _sample(data, name: str, notes: list[str]):
    """Sampled (inputs, targets), or None with a note saying why the checks that need them are skipped."""
    try:
        first = sample(data, 1)
        row = first[0][0].numel() if first is not None and isinstance(first[0], torch.Tensor) else 1
        pair = sample(data, max(64, min(MAX_ROWS, MAX_VALUES // max(row, 1))))
    except Exception as exc:  # a Dataset whose rows cannot be stacked
        pair, why = None, f"its rows could not be stacked ({type(exc).__name__}: {exc})"
    else:
        why = "it does not yield (input, target) pairs of tensors"
    if pair is None or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in pair) or len(pair[0]) != len(pair[1]):
        notes.append(f"{name}: {why}; the data, model and loss checks that need them were skipped.")
        return None
    return pair


def _trace(c: Case) -> None:
    """Run one batch through a copy; record the output and the loss at init."""
    c.xb, c.yb = c.X[:TRACE_ROWS], c.y[:TRACE_ROWS]
    try:
        c.probe = probe_copy(c.model)
        c.trace = trace(c.probe, c.xb)
    except Exception as exc:  # non-tensor inputs, a model that cannot be copied, a forward that fails
        c.notes.append(f"The model could not be run on a batch of the data ({type(exc).__name__}: {exc}); "
                       "the model and loss checks were skipped.")
        return
    c.notes.extend(c.trace.notes)
    if c.out is None:
        c.notes.append("The model's output holds no tensor; the model and loss checks were skipped.")
        c.trace = None
        return
    value, c.loss_error = run_loss(c.loss_fn, c.out, c.yb)
    c.loss0 = float(value) if value is not None else None


def _add(c: Case, check, *args):
    """Run one check; keep its finding. A check that fails is a note, never a crash of the checkup."""
    try:
        result = check(*args)
    except OutOfTime as exc:
        c.notes.append(f"{check.__name__} stopped at its time budget ({exc}): no verdict.")
        return None
    except Exception as exc:
        c.notes.append(f"The check {check.__name__} could not run ({type(exc).__name__}: {exc}).")
        return None
    if isinstance(result, tuple):
        finding, result = result
    else:
        finding = result
    if isinstance(finding, Finding):
        c.findings.append(finding)
    return result
