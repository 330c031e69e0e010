"""`diagnose`: examine a setup before training, train it in place while watching, report.

A setup a user could plausibly write never makes it raise: NaN data, labels out of range,
shape mismatches and diverging runs all become findings. Only arguments that are not a
model, data, loss or optimizer at all raise a TypeError/ValueError.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from .analysis import examine, initial_weights
from .data import as_loader, check_data, sample
from .findings import Finding, Report
from .preflight import describe_targets, run_checks
from .preflight.crash import explain_crash
from .report.terminal import progress
from .rules import fold
from .sandbox import foreign_hooks_silenced, modes_kept, state_kept
from .watcher import Doctor

DEFAULT_EPOCHS = 5
MIN_STEPS, MAX_STEPS = 200, 1000
JUDGE_SHARE = 0.5  # a diagnosis is what the user asked for: judge at (nearly) every flush
VALIDATIONS = 10  # validation points per run: enough for fit.overfitting to see a turn
LEARNED = 0.7     # a final loss at 70% of the label-prior baseline: the model found signal in the inputs


def diagnose(model, train_data, loss_fn=None, optimizer=None, val_data=None, steps=None,
             batch_size=None, seed=0, deep=False) -> Report:
    """Check the data and model, train `model` in place with `optimizer` for `steps` steps
    while watching, and return the Report. See the contract in docs/api.md.
    `deep=True` adds the loss-surface and gradient-noise analyses after training
    (`nndoctor.analysis`, about a second for a small net)."""
    started = time.perf_counter()
    _check_arguments(model, train_data, loss_fn, optimizer, val_data)
    loader = as_loader(train_data, batch_size, shuffle=True, seed=seed)
    val_loader = as_loader(val_data, batch_size or 256, shuffle=False) if val_data is not None else None
    steps = int(steps) if steps else _default_steps(loader)
    pre_findings, notes, meta = run_checks(model, train_data, loss_fn, val_data, batch_size)
    targets = describe_targets(train_data, loss_fn)
    devices = [d for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    # the pre-flight examination above is the case this doctor reads (it ran on the whole data)
    doctor = Doctor(model, optimizer, sample_every=max(1, min(10, steps // 100)), flush_every=20,
                    planned_steps=steps, judge_share=JUDGE_SHARE, examine=False, live=False)
    doctor.targets, doctor.preflight = targets, pre_findings
    initial = initial_weights(model) if deep else None
    with torch.random.fork_rng(devices=devices), modes_kept(model):
        torch.manual_seed(seed)
        with doctor, progress(f"diagnose: training {type(model).__name__}", total=steps) as advance:
            trained, error, val_error = _train(model, loader, loss_fn, optimizer, doctor, steps, val_loader, advance)
        doctor.extra.update(dropout_probe(model, loader, loss_fn))
    doctor.preflight = reconcile(doctor.preflight, doctor._series(), targets, notes)
    report = doctor.report()
    findings = report.findings
    for exc in (error, val_error):
        failure = explain_crash(exc, trained, findings) if exc is not None else None
        if failure is not None and not any(f.code == failure.code for f in findings):
            findings.insert(0, failure)
    fold(findings)
    if error is not None:
        notes.append(f"stopped after {trained} of {steps} steps on an error: {type(error).__name__}: {error}"[:400])
    elif trained < steps:
        notes.append(f"stopped after {trained} of {steps} steps: the loss stayed non-finite")
    meta.update(report.meta, steps_planned=steps, steps_trained=trained, batch_size=loader.batch_size,
                seconds=round(time.perf_counter() - started, 3),
                call=f"nndoctor.diagnose({type(model).__name__}, optimizer={type(optimizer).__name__}, "
                     f"steps={steps}, batch_size={loader.batch_size}, seed={seed}" + (", deep=True)" if deep else ")"))
    report = Report(findings=findings, meta=meta, notes=notes + report.notes, series=report.series)
    if deep:
        report = examine(report, model, train_data, loss_fn, optimizer, initial=initial,
                         batch_size=loader.batch_size, seed=seed)
        report.meta["seconds"] = round(time.perf_counter() - started, 3)
    return report


def reconcile(pre_findings: list[Finding], series: dict, targets: dict | None, notes: list[str]) -> list[Finding]:
    """Let the run overrule a pre-flight suspicion it disproves. The no-signal test rests on a
    40-step fit; a model that learns slowly (a transformer, an RNN) can fail it on good data.
    If the full run then gets well below the label-prior baseline on held-out data (or on the
    training data when there is none), the inputs evidently carry signal."""
    baseline = (targets or {}).get("baseline")
    held_out = "val_loss" in series
    series = series.get("val_loss") or series.get("loss")
    if not baseline or not series or not any(f.code == "data.no_signal" for f in pre_findings):
        return pre_findings
    values = [v for v in series["value"] if isinstance(v, float) and math.isfinite(v)]
    # held-out data beating the baseline at any point proves signal; training data only at the end
    # (a net can memorize even shuffled labels on the way)
    reached = min(values if held_out else values[-3:], default=math.inf)
    if reached <= LEARNED * baseline:
        notes.append(f"data.no_signal withdrawn: the run reached a loss of {reached:.3g}, "
                     f"below the label-prior baseline {baseline:.3g}, so the inputs do carry signal")
        return [f for f in pre_findings if f.code != "data.no_signal"]
    return pre_findings


def _check_arguments(model, train_data, loss_fn, optimizer, val_data) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    check_data(train_data, "train_data")
    if val_data is not None:
        check_data(val_data, "val_data")
    if loss_fn is None or not callable(loss_fn):
        raise TypeError("loss_fn must be an nn.Module or a callable(output, target) -> scalar tensor, "
                        f"not {type(loss_fn).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError("optimizer must be a torch.optim.Optimizer over the model's parameters, "
                        f"not {type(optimizer).__name__}")
    own = {id(p) for p in model.parameters()}
    if not any(id(p) in own for g in optimizer.param_groups for p in g["params"]):
        raise ValueError("optimizer holds none of the model's parameters: build it from model.parameters()")


def _default_steps(loader) -> int:
    try:
        per_epoch = len(loader)
    except TypeError:
        return MIN_STEPS
    return max(MIN_STEPS, min(MAX_STEPS, DEFAULT_EPOCHS * per_epoch))


def _split(batch, device):
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError("each batch must be an (input, target) pair")
    x, y = batch[0], batch[1]
    move = (lambda t: t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t)
    return move(x), move(y)


def _train(model, loader, loss_fn, optimizer, doctor: Doctor, steps: int, val_loader, advance=lambda: None):
    """Train for `steps` steps (`advance()` after each, for the progress bar). Returns
    (steps trained, the exception if the setup crashed, the exception if validating on
    `val_loader` did: training goes on without validation then)."""
    device = next(model.parameters()).device
    val_every = max(1, steps // VALIDATIONS)
    if not model.training:  # handed over in eval mode; a submodule the user froze in eval stays so
        model.train()
    step, batches = 0, iter(loader)
    val_error = None
    while step < steps:
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        try:
            x, y = _split(batch, device)
            loss = loss_fn(model(x), y)
            if loss.dim() != 0:
                raise ValueError(f"the loss is not a scalar (shape {tuple(loss.shape)}); reduce it with .mean()")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        except Exception as exc:  # a broken setup is a finding, never a crash
            return step, exc, val_error
        doctor.log(loss=loss)
        step += 1
        advance()
        if val_loader is not None and step % val_every == 0:
            try:
                doctor.log(val_loss=evaluate(model, val_loader, loss_fn, device))
            except Exception as exc:  # broken validation data is a finding; training goes on without it
                val_error, val_loader = exc, None
        if step % doctor.flush_every == 0 and doctor.diverged():
            break
    return step, None, val_error


@torch.no_grad()
def evaluate(model, loader, loss_fn, device, max_batches: int = 8) -> float:
    """Mean loss over up to `max_batches` validation batches, in eval mode."""
    total, count = 0.0, 0
    with modes_kept(model):
        model.eval()
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            x, y = _split(batch, device)
            total += float(loss_fn(model(x), y))
            count += 1
    return total / count if count else float("nan")


def dropout_probe(model, loader, loss_fn) -> dict:
    """Loss on one batch with dropout on vs off: for reg.too_strong. Only the dropout modules
    switch; everything else runs in eval mode (BatchNorm on its running statistics, which
    stay as they are), with no gradient, the RNG forked and the user's hooks silenced."""
    dropouts = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if not dropouts:
        return {}
    device = next(model.parameters()).device
    try:
        x, y = _split(next(iter(loader)), device)
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                foreign_hooks_silenced(model), state_kept(model):
            model.eval()
            for _, m in dropouts:
                m.train()
            on = sum(float(loss_fn(model(x), y)) for _ in range(3)) / 3
            model.eval()
            off = float(loss_fn(model(x), y))
    except Exception:
        return {}
    if not (math.isfinite(on) and math.isfinite(off)):
        return {}
    return {"dropout_gap": {"train_mode": on, "eval_mode": off, "p": max(m.p for _, m in dropouts),
                            "modules": [n for n, _ in dropouts]}}
