"""`repair`: fix what a diagnosis names, and prove each fix by re-running.

The user's model is copied at its initial state and the optimizer rebuilt from its class
and hyperparameters; the copy is diagnosed; the root-cause finding's strategy is applied
(`strategies.py`, one function per code) and the setup re-run from the same initial weights
with the same steps and seed. A change is kept only if the re-run is measurably better
(validation loss or accuracy, else training loss, measured on the user's own data) and its
finding is gone; otherwise it is rolled back and reported as not repaired. This repeats
while problems remain and the budget of re-runs allows. Findings that only an edit of the
user's code can fix (loop.*, grad.zero, grad.none, ...) get the code to write, nothing else.

    fix = nndoctor.repair(model, (X, y), loss_fn=..., optimizer=..., val_data=(X_val, y_val))
    print(fix)                     # before -> after, each change with its code
    fix.model, fix.optimizer       # repaired copies; the user's objects are untouched

`find_lr` (lr_finder.py) is the LR range test; `restarts` (restarts.py) the random-restart
check behind `optimum.local`.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace

import torch

from ..findings import Finding, Report
from ..report.terminal import progress
from .lr_finder import LRRange, find_lr
from .restarts import Restarts, restarts, with_restarts
from .strategies import CODE_FIXES, STRATEGIES, Context, code_fix
from .trial import OptimizerSpec, Trial, better, metrics

BUDGET = 6   # re-runs per repair: a root cause, a fallback, and what the fixed run reveals next

__all__ = ["repair", "find_lr", "restarts", "Repair", "Change", "LRRange", "Restarts", "STRATEGIES"]


@dataclass
class Change:
    """One repair: the finding it is for, what changed, and the code to write."""
    code: str
    description: str
    snippet: str
    status: str = "repaired"   # "repaired"; "not repaired" (tried, rolled back); "code fix" (needs the user's code)
    evidence: dict = field(default_factory=dict)


@dataclass
class Repair:
    before: Report
    after: Report
    changes: list[Change]                 # kept: each proven by a re-run
    not_repaired: list[Change]            # rolled back, or only fixable in the user's code
    improved: bool
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    metrics: dict                         # {"before": {...}, "after": {...}}
    lr_range: LRRange | None = None
    seconds: float = 0.0

    def __str__(self) -> str:
        from io import StringIO
        from rich.console import Console
        buffer = StringIO()
        Console(file=buffer, width=110, color_system=None).print(self)
        return buffer.getvalue()

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        table = Table(title=f"nndoctor repair: {'improved' if self.improved else 'not improved'}", show_lines=True)
        for column in ("finding", "status", "what changed", "code to write"):
            table.add_column(column)
        for c in self.changes + self.not_repaired:
            colour = {"repaired": "green", "not repaired": "red"}.get(c.status, "yellow")
            table.add_row(c.code, f"[{colour}]{c.status}[/]", c.description, c.snippet)
        before, after = self.metrics.get("before", {}), self.metrics.get("after", {})
        numbers = ", ".join(f"{k} {_fmt(before.get(k))} -> {_fmt(after.get(k))}" for k in after)
        return Group(table, f"metrics: {numbers}", f"findings before: {_codes(self.before)}",
                     f"findings after:  {_codes(self.after)}")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def _codes(report: Report) -> str:
    return ", ".join(f.code for f in report.findings if f.is_problem) or "healthy"


def repair(model, train_data, loss_fn=None, optimizer=None, val_data=None, steps=None, batch_size=None, seed=0,
           *, budget: int = BUDGET, restarts_runs: int = 0, strategies: dict | None = None) -> Repair:
    """Diagnose a copy of the setup, repair what can be repaired from outside the user's code,
    and prove each change by a re-run. `restarts_runs` > 0 also checks for bad basins
    (`optimum.local`) with that many short runs; `strategies` adds or overrides a strategy
    per finding code (see strategies.py for the signature)."""
    with progress("repair: re-runs that prove each change", total=budget) as advance:
        return _repair(model, train_data, loss_fn, optimizer, val_data, steps, batch_size, seed, budget,
                       restarts_runs, strategies, advance)


def _repair(model, train_data, loss_fn, optimizer, val_data, steps, batch_size, seed, budget, restarts_runs,
            strategies, advance) -> Repair:
    from ..diagnosis import _check_arguments
    started = time.perf_counter()
    _check_arguments(model, train_data, loss_fn, optimizer, val_data)
    trial = Trial(model=copy.deepcopy(model), optimizer=OptimizerSpec.of(optimizer, model), loss_fn=loss_fn,
                  train=train_data, val=val_data, steps=steps, batch_size=batch_size, seed=seed)
    current = trial.run()
    trial = trial.replace(steps=int(current.report.meta.get("steps_planned") or steps or 0) or None)
    current = replace(current, trial=trial)
    if restarts_runs:
        current = replace(current, report=_with_restarts(current.report, trial, restarts_runs))
    first = current
    table = {**STRATEGIES, **(strategies or {})}
    ctx = Context(restarts_runs or 5)
    changes: list[Change] = []
    not_repaired: list[Change] = []
    handled: set[str] = set()
    rolled_back: set[str] = set()  # tried before another fix was kept: worth one more try after it
    retried: set[str] = set()
    runs = 0
    while runs < budget:
        finding = _next(current.report, handled)
        if finding is None:
            break
        handled.add(finding.code)
        strategy = table.get(finding.code)
        if strategy is None:
            not_repaired.append(_unrepairable(finding))
            continue
        kept, tried = None, []
        for attempt in strategy(current.trial, finding, ctx):
            outcome = attempt.trial.run()
            runs += 1
            advance()
            relabel = attempt.trial.relabel
            now = metrics(current, train_data, val_data, loss_fn, relabel)
            then = metrics(outcome, train_data, val_data, loss_fn, relabel)
            gone = not outcome.report.has(finding.code)
            if gone and better(then, now):
                kept = Change(finding.code, attempt.description, attempt.snippet,
                              evidence={"before": now, "after": then, "seconds": round(outcome.seconds, 3)})
                current = outcome
                break
            tried.append((attempt, "the finding remained" if not gone else "the re-run was not better", now, then))
            if runs >= budget:
                break
        not_repaired = [c for c in not_repaired if c.code != finding.code]  # a retry's verdict replaces the first
        if kept:
            changes.append(kept)
            again = rolled_back - retried
            handled -= again
            retried |= again
        elif tried:
            rolled_back.add(finding.code)
            attempt, why, now, then = tried[0]
            others = f"; {len(tried) - 1} more attempt(s) also rolled back" if len(tried) > 1 else ""
            not_repaired.append(Change(finding.code, f"Tried and rolled back, {why}{others}: {attempt.description}",
                                       attempt.snippet, status="not repaired",
                                       evidence={"before": now, "after": then}))
        else:
            not_repaired.append(_unrepairable(finding))
    listed = {c.code for c in changes + not_repaired}
    not_repaired += [Change(f.code, f"Not tried: the budget of {budget} re-runs was spent first ({f.fix})", code_fix(f),
                            status="not repaired") for f in current.report.findings
                     if f.is_problem and f.code not in listed and f.code not in handled]
    relabel = current.trial.relabel
    summary = {"before": metrics(first, train_data, val_data, loss_fn, relabel),
               "after": metrics(current, train_data, val_data, loss_fn, relabel)}
    improved = bool(changes) and better(summary["after"], summary["before"]) and \
        not any(current.report.has(c.code) for c in changes)
    lr_range = ctx.ranges[-1][1] if ctx.ranges else None
    if lr_range is not None:
        lr_range.attach(current.report)
    return Repair(before=first.report, after=current.report, changes=changes, not_repaired=not_repaired,
                  improved=improved, model=current.model, optimizer=current.optimizer, metrics=summary,
                  lr_range=lr_range, seconds=round(time.perf_counter() - started, 3))


def _unrepairable(finding: Finding) -> Change:
    """A finding no strategy can fix from outside: the code to write, or the registry's advice."""
    if finding.code in CODE_FIXES:
        return Change(finding.code, f"Needs a change in your code: {finding.fix}", code_fix(finding), status="code fix")
    return Change(finding.code, f"No automatic repair: {finding.fix}", code_fix(finding), status="not repaired")


def _next(report: Report, handled: set[str]) -> Finding | None:
    """The most root-cause problem not yet handled; a symptom waits until its cause is handled."""
    present = {f.code for f in report.findings if f.is_problem}
    for f in report.findings:
        if not f.is_problem or f.code in handled:
            continue
        if f.cause and f.cause in present and f.cause not in handled:
            continue
        return f
    return None


def _with_restarts(report: Report, trial: Trial, runs: int) -> Report:
    model = copy.deepcopy(trial.model)
    found = restarts(model, trial.train, loss_fn=trial.loss_fn, optimizer=trial.optimizer.build(model),
                     steps=trial.steps or 200, batch_size=trial.batch_size, seed=trial.seed, runs=runs)
    return with_restarts(report, found)
