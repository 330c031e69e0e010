"""Deep analysis (opt-in): the loss surface and the gradient noise, measured after a run.

    report = nndoctor.diagnose(..., deep=True)                  # diagnose does it for you
    report = nndoctor.analysis.examine(report, model, (X, y), loss_fn, optimizer,
                                       initial=initial_weights)  # after your own loop

Cost, stated up front (one fixed batch of up to 512 training rows; each analysis stops at
about `BUDGET` seconds, with fewer iterations or a coarser grid; the model is never
changed: weights are substituted functionally, buffers copied, modes and RNG restored):
"""
from __future__ import annotations

import math
import time

import torch

from ..data import rows_of
from ..findings import Report
from ..history import History
from ..report.terminal import progress
from .hessian import curvature
from .landscape import line, plane
from .noise_scale import noise_scale
from .probe import LossProbe, analysis_mode, fixed_batch

ANALYSES = ("line", "plane", "curvature", "noise_scale")
COST = {"line": "29 forward passes",
        "plane": "441 forward passes (a 21 x 21 grid)",
        "curvature": "up to 64 Hessian-vector products (40 power iterations + 24 trace probes), ~3 passes each",
        "noise_scale": "72 forward-backward passes (32 batches of 8 rows, 4 of up to 128; at the initial and final weights)"}
ANALYSIS_CODES = ("curvature.ill_conditioned", "batch.too_large")
BUDGET = 3.0  # seconds per analysis: a slow model (a long LSTM) gets fewer iterations, a coarser grid
__doc__ += "".join(f"\n- {name}: {cost}" for name, cost in COST.items()) + "\n"


def initial_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable weights, to take before training for the line analysis."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def measure(model, train_data, loss_fn, optimizer=None, *, initial=None, analyses=ANALYSES,
            seed: int = 0, budget: float = BUDGET) -> tuple[dict, list[str]]:
    """Run the analyses on the model as it is now, each within about `budget` seconds.
    Returns (results by analysis, notes)."""
    results: dict = {"seconds": {}, "cost": {a: COST[a] for a in analyses}}
    notes: list[str] = []
    batch = fixed_batch(model, train_data, seed=seed)
    if batch is None:
        return {}, ["deep analysis skipped: the training data does not yield (input, target) tensors"]
    if not all(torch.isfinite(p.detach()).all() for p in model.parameters()):
        return {}, ["deep analysis skipped: the weights are no longer finite"]
    probe = LossProbe(model, batch[0], batch[1], loss_fn)
    results["rows"] = int(batch[0].shape[0])
    steps = {"line": lambda: line(probe, initial), "plane": lambda: plane(probe, seed=seed, budget=budget),
             "curvature": lambda: curvature(probe, optimizer, seed=seed, budget=budget),
             "noise_scale": lambda: _noise_scale(probe, initial, seed, budget)}
    with analysis_mode(model), progress("deep analysis: loss surface, curvature, noise", total=len(analyses)) as advance:
        for name in analyses:
            if name == "line" and initial is None:
                notes.append("landscape line skipped: no initial weights were given")
                continue
            began = time.perf_counter()
            try:
                out = steps[name]()
            except Exception as exc:  # an analysis the model does not support is skipped, named
                notes.append(f"{name} analysis skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                continue
            finally:
                results["seconds"][name] = round(time.perf_counter() - began, 3)
                advance()
            if isinstance(out, tuple):
                out, more = out
                notes.extend(more)
            if out:
                results[name] = out
    return results, notes


def _noise_scale(probe: LossProbe, initial, seed: int, budget: float) -> dict:
    """B_simple where it is smallest, early in training (the noise scale grows as the
    gradient shrinks): at the initial weights when known; the final one as evidence."""
    if initial is None:
        return dict(noise_scale(probe, seed=seed, budget=budget), at="final")
    final = noise_scale(probe, seed=seed, budget=budget / 2)
    start = noise_scale(probe, {n: initial[n] for n in probe.names}, seed=seed, budget=budget / 2)
    return dict(start, at="initial", final_b_simple=final.get("b_simple")) if start else {}


def examine(report: Report, model, train_data, loss_fn, optimizer=None, *, initial=None,
            batch_size: int | None = None, analyses=ANALYSES, seed: int = 0) -> Report:
    """`report` with the deep analyses added: their numbers in `meta["analysis"]` (for the
    plots), the findings they support (curvature.ill_conditioned, batch.too_large) and
    their evidence on lr.too_high / optimum.local. `initial`: the weights before training
    (`initial_weights(model)`), for the line; `batch_size`: the batch the run trained with."""
    from ..rules import RULES, Run, fold
    from ..rules import curvature as rules_curvature  # registers the analysis rules

    results, notes = measure(model, train_data, loss_fn, optimizer, initial=initial, analyses=analyses, seed=seed)
    if results.get("noise_scale"):  # the threshold travels with the numbers, for the report's plot
        results["noise_scale"]["factor"] = rules_curvature.NOISE_FACTOR
    batch_size = batch_size or report.meta.get("batch_size")
    run = Run(history=History(), step=int(report.meta.get("steps_trained", report.meta.get("steps", 0)) or 0),
              model=model, optimizer=optimizer,
              extra={**results, "batch_size": batch_size, "dataset_rows": rows_of(train_data)})
    findings = [f for f in report.findings if f.code not in ANALYSIS_CODES]
    for code in ANALYSIS_CODES:
        found = RULES[code](run)
        if found is not None:
            findings.append(found)
    _add_evidence(findings, results)
    fold(findings)
    meta = dict(report.meta, analysis=results)
    return Report(findings=findings, meta=meta, notes=list(report.notes) + notes, series=dict(report.series))


def _add_evidence(findings, results: dict) -> None:
    """The curvature behind a too-high learning rate; the line behind a local optimum."""
    c, path = results.get("curvature"), results.get("line")
    for f in findings:
        if f.code == "lr.too_high" and c and c.get("two_over_lr"):
            f.evidence = dict(f.evidence, hessian_top_eigenvalue=c["top_eigenvalue"], two_over_lr=c["two_over_lr"],
                              stability_limit=c.get("stability_limit"))
        if f.code == "optimum.local" and path and math.isfinite(path["barrier"]):
            f.evidence = dict(f.evidence, line_monotone=path["monotone"], line_barrier=path["barrier"])
