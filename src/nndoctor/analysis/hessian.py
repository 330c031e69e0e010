"""Curvature of the loss at the current weights, from Hessian-vector products (double
backward) on a fixed batch; the Hessian itself is never formed.

- Top eigenvalue by power iteration (Pearlmutter's trick: Hv = d(g·v)/dθ). Plain gradient
  descent with step lr is stable along a direction of curvature λ only if λ < 2/lr
  (2(1+μ)/lr with heavy-ball momentum μ; Cohen et al. 2021, "edge of stability").
- Bulk: the mean eigenvalue tr(H)/P, with the trace from Hutchinson's estimator
  E[zᵀHz] over Rademacher z. The ratio top/bulk is how much steeper the steepest direction
  is than a typical one: with a step small enough for the steepest, the typical direction
  advances ratio/2 times slower. That is a ravine.

Parameters whose module does not support double backward (a custom autograd Function marked
`once_differentiable`, some fused kernels) are left out and named; the others are analysed.
"""
from __future__ import annotations

import math
import time

import torch

from .probe import LossProbe

POWER_ITERATIONS = 40   # upper bound; a well-separated top eigenvalue converges in ~10
TOLERANCE = 1e-3        # relative change of the Rayleigh quotient that stops the iteration
TRACE_SAMPLES = 24      # Rademacher probes for the trace (std error ~ 1/sqrt(24) of the spread)


class HessianVectorProduct:
    """v -> Hv for the parameters `names` of `probe`, reusing one graph of the gradient."""

    def __init__(self, probe: LossProbe, names: list[str]):
        self.names = names
        self.params = [probe.params[n] for n in names]
        loss = probe.loss()
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        self.grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params)]
        self.linear = not any(g.requires_grad for g in self.grads)  # loss linear in these: H = 0
        self.loss = float(loss.detach())

    def __call__(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.linear:
            return [torch.zeros_like(v) for v in vectors]
        pairs = [(g, v) for g, v in zip(self.grads, vectors) if g.requires_grad]
        out = torch.autograd.grad([g for g, _ in pairs], self.params, grad_outputs=[v for _, v in pairs],
                                  retain_graph=True, allow_unused=True)
        return [o.detach() if o is not None else torch.zeros_like(p) for o, p in zip(out, self.params)]


def supported(probe: LossProbe) -> tuple[list[str], list[str], str | None]:
    """(parameter names whose curvature can be computed, modules left out, the error seen).
    Tries all parameters at once; on failure, each module's own parameters alone."""
    names = probe.names
    try:
        _check(probe, names)
        return names, [], None
    except RuntimeError as exc:
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    by_module: dict[str, list[str]] = {}
    for n in names:
        by_module.setdefault(n.rsplit(".", 1)[0] if "." in n else "", []).append(n)
    kept, skipped = [], []
    for module, group in by_module.items():
        try:
            _check(probe, group)
            kept.extend(group)
        except RuntimeError:
            skipped.append(module or "(top level)")
    if kept:
        try:
            _check(probe, kept)
        except RuntimeError:
            kept = []
            skipped = list(by_module)
    return kept, skipped, error


def _check(probe: LossProbe, names: list[str]) -> None:
    hvp = HessianVectorProduct(probe, names)
    hvp([torch.ones_like(p) for p in hvp.params])


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def _normalize(v: list[torch.Tensor]) -> list[torch.Tensor]:
    norm = math.sqrt(_dot(v, v)) or 1.0
    return [x / norm for x in v]


def _late(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() > deadline


def top_eigenvalue(hvp: HessianVectorProduct, generator: torch.Generator, iterations: int = POWER_ITERATIONS,
                   tolerance: float = TOLERANCE, deadline: float | None = None) -> tuple[float, int, bool]:
    """(eigenvalue of largest magnitude, iterations used, converged), by power iteration;
    stops early (after at least 3 iterations) at `deadline`."""
    v = _normalize([torch.randn(p.shape, generator=generator).to(p) for p in hvp.params])
    value = 0.0
    for i in range(1, iterations + 1):
        hv = hvp(v)
        new = _dot(v, hv)  # Rayleigh quotient
        norm = math.sqrt(_dot(hv, hv))
        if norm == 0 or not math.isfinite(norm):
            return (0.0 if norm == 0 else float("nan")), i, norm == 0
        v = [x / norm for x in hv]
        if i > 1 and abs(new - value) <= tolerance * abs(new):
            return new, i, True
        if i >= 3 and _late(deadline):
            return new, i, False
        value = new
    return value, iterations, False


def trace(hvp: HessianVectorProduct, generator: torch.Generator, samples: int = TRACE_SAMPLES,
          deadline: float | None = None) -> tuple[float, float]:
    """(Hutchinson estimate of tr(H), its standard error); at least 4 probes, fewer than
    `samples` if `deadline` passes."""
    values = []
    for i in range(samples):
        if i >= 4 and _late(deadline):
            break
        z = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in hvp.params]
        values.append(_dot(z, hvp(z)))
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1))
    return mean, spread / math.sqrt(len(values))


def stability_limit(optimizer) -> tuple[float | None, float | None]:
    """(2/lr, the curvature above which the optimizer's plain steps diverge, or None where
    that limit is not a property of the raw Hessian: adaptive methods precondition it)."""
    if optimizer is None or not optimizer.param_groups:
        return None, None
    group = optimizer.param_groups[0]
    lr = float(group.get("lr", 0.0) or 0.0)
    if lr <= 0:
        return None, None
    two_over_lr = 2.0 / lr
    if isinstance(optimizer, torch.optim.SGD):
        momentum = float(group.get("momentum", 0.0) or 0.0)
        return two_over_lr, two_over_lr * (1.0 + momentum)
    return two_over_lr, None


def curvature(probe: LossProbe, optimizer=None, seed: int = 0, budget: float | None = None) -> tuple[dict, list[str]]:
    """The curvature evidence and notes on what was left out."""
    names, skipped, error = supported(probe)
    notes = []
    if skipped:
        notes.append(f"curvature: double backward unsupported in {', '.join(skipped)} ({error}); "
                     + ("those parameters left out" if names else "curvature not measured"))
    if not names:
        return {}, notes
    generator = torch.Generator().manual_seed(seed)
    began = time.perf_counter()
    hvp = HessianVectorProduct(probe, names)
    top, iterations, converged = top_eigenvalue(hvp, generator, deadline=budget and began + 0.6 * budget)
    tr, tr_error = trace(hvp, generator, deadline=budget and began + budget)
    count = sum(p.numel() for p in hvp.params)
    bulk = tr / count
    two_over_lr, limit = stability_limit(optimizer)
    result = {"top_eigenvalue": top, "power_iterations": iterations, "converged": converged,
              "trace": tr, "trace_stderr": tr_error,
              "parameters": count, "bulk": bulk, "loss": hvp.loss, "two_over_lr": two_over_lr,
              "stability_limit": limit, "optimizer": type(optimizer).__name__ if optimizer is not None else None,
              "skipped": skipped}
    # the ratio only means something when the bulk estimate is clearly positive
    if bulk > 0 and tr > 2 * tr_error and math.isfinite(top) and top > 0:
        result["top_over_bulk"] = top / bulk
    return result, notes
