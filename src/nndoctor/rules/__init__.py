"""Rules: one small function per pitfall, registered by its finding code.

A rule reads the evidence of a `Run` and returns a `Finding` (or None when the evidence is
absent or too weak). Each rule states its threshold and why, next to the number. `judge`
runs them all, never lets one broken rule stop the others, and folds each symptom under
its root cause (CAUSES).

To add a rule: write one function in the file of its area with `@rule("area.name")`, add a
sick and a healthy case to the tests; nothing else changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..findings import Finding
from ..history import History, Series
from .curves import finite

RULES: dict[str, Callable[["Run"], Finding | None]] = {}

# symptom -> root causes that explain it, most specific first
CAUSES = {
    "loss.nonfinite": ("data.nonfinite", "loss.unstable_log", "lr.too_high", "grad.exploding", "init.scale_mismatch"),
    "grad.exploding": ("lr.too_high", "init.scale_mismatch", "arch.too_deep", "loop.missing_zero_grad"),
    "loss.oscillation": ("lr.too_high", "data.unshuffled", "loop.missing_zero_grad"),
    "units.dead": ("lr.too_high", "init.scale_mismatch", "data.not_normalized"),
    "units.saturated": ("data.not_normalized", "init.scale_mismatch", "lr.too_high", "arch.too_deep"),
    "grad.vanishing": ("units.saturated", "init.scale_mismatch", "arch.too_deep"),
    "layers.slow_bottom": ("grad.vanishing", "units.saturated", "arch.too_deep", "init.scale_mismatch"),
    "output.collapsed": ("lr.too_high", "loss.nonfinite", "units.dead", "units.saturated", "data.class_imbalance",
                         "output.activation_mismatch", "init.symmetric", "grad.zero", "grad.vanishing",
                         "lr.too_low", "data.no_signal", "reg.too_strong"),
    "loss.plateau": ("init.symmetric", "grad.zero", "data.no_signal", "output.activation_mismatch",
                     "lr.too_low", "grad.vanishing", "units.dead", "units.saturated", "output.collapsed",
                     "reg.too_strong", "loop.eval_mode", "lr.schedule_too_fast", "params.frozen"),
    "fit.underfitting": ("data.no_signal", "data.labels_out_of_range", "output.softmax_wrong_dim", "output.activation_mismatch",
                         "init.symmetric", "grad.zero", "grad.none", "lr.too_high", "lr.too_low",
                         "grad.vanishing", "units.dead", "units.saturated", "layers.slow_bottom",
                         "reg.too_strong", "arch.bottleneck", "lr.schedule_too_fast", "params.frozen",
                         "loss.plateau", "output.collapsed"),
    "loss.fluctuation": ("data.unshuffled", "lr.too_high", "loop.missing_zero_grad", "units.dead", "grad.vanishing"),
    "grad.clipped_always": ("lr.too_high",),
    "lr.too_low": ("data.target_scale",),
    "lr.too_high": ("data.not_normalized", "data.target_scale", "init.scale_mismatch"),
    "curvature.ill_conditioned": ("data.not_normalized", "data.target_scale", "init.scale_mismatch",
                                  "loss.init_mismatch", "lr.too_high", "grad.vanishing",
                                  "units.dead", "units.saturated"),  # dead units flatten most directions
}

# finding -> findings that, when present, explain its evidence away. Tiny updates mean a rate
# too low only while gradients flow: dead or identical units, a non-differentiable op, or a
# rate so high it killed the network (updates ~0 after the blow-up) starve them instead; a
# schedule that ran out early makes them tiny at a rate that was right at the start.
CONTRADICTED_BY = {
    "lr.too_low": ("lr.too_high", "units.dead", "init.symmetric", "grad.zero", "lr.schedule_too_fast"),
    # a validation loss rising because the evaluation inputs are on another scale is no overfit
    "fit.overfitting": ("data.split_mismatch",),
}


def rule(code: str):
    def register(fn):
        RULES[code] = fn
        fn.code = code
        return fn
    return register


@dataclass
class Run:
    """Everything the rules may read about a run, as of `step`. A snapshot for one verdict:
    the history does not change while it is judged, so views of it are computed once (`memo`)."""
    history: History
    step: int
    final: bool = True
    planned_steps: int | None = None
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    params: list = field(default_factory=list)             # [(name, Parameter)] watched
    module_names: dict = field(default_factory=dict)       # module -> name
    kinds: dict = field(default_factory=dict)              # module name -> relu/saturating/weighted/recurrent
    origin: dict | None = None                             # where non-finite values started
    none_counts: dict = field(default_factory=dict)
    sampled: int = 0
    not_in_optimizer: list = field(default_factory=list)
    loop_steps: int = 0
    eval_steps: int = 0
    forwards: object = None                                # collect.forwards.ForwardCollector: evaluations, graphs, inputs
    targets: dict | None = None
    order: list = field(default_factory=list)              # module names in execution order
    extra: dict = field(default_factory=dict)              # evidence added by diagnose (e.g. dropout probe)
    shapes: dict = field(default_factory=dict)             # param name -> whole shape, where only a shard is watched (FSDP1)
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def memo(self, key: str, compute: Callable):
        """`compute()`, once per Run: several rules ask the same view of hundreds of series."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    # ---- convenient views ------------------------------------------------------------
    def loss(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.history.get("loss")
        return s.trace() if s is not None else (np.zeros(0, int), np.zeros(0))

    def series(self, name: str) -> Series | None:
        s = self.history.get(name)
        return s if s is not None and len(s) else None

    def module_of(self, param_name: str) -> str:
        return param_name.rsplit(".", 1)[0] if "." in param_name else param_name

    def weight_layers(self) -> list[str]:
        """Weight-matrix parameters (ndim >= 2, not embeddings), from input to output in the
        order their modules run (registration order as a fallback)."""
        return list(self.memo("weight_layers", self._weight_layers))

    def _weight_layers(self) -> list[str]:
        embeddings = {n for m, n in self.module_names.items() if isinstance(m, nn.Embedding)}
        names = [n for n, p in self.params if len(self.shapes.get(n, p.shape)) >= 2 and self.module_of(n) not in embeddings
                 and self.series("grad_norm/" + n) is not None]
        position = {n: i for i, n in reversed(list(enumerate(self.order)))}
        return sorted(names, key=lambda n: position.get(self.module_of(n), len(position)))

    def numel(self, param_name: str) -> int:
        if param_name in self.shapes:
            return math.prod(self.shapes[param_name])
        return self.memo("numels", lambda: {n: p.numel() for n, p in reversed(self.params)}).get(param_name, 1)

    @property
    def baseline(self) -> float | None:
        """The loss of a predictor that ignores its input (the label prior), when known."""
        return (self.targets or {}).get("baseline")

    @property
    def scale(self) -> float | None:
        """The loss scale of this problem: the baseline when known, else the loss at the start.
        Changes smaller than a few percent of it are immaterial however large in relative terms."""
        if self.baseline:
            return self.baseline
        from .curves import start_level
        _, values = self.loss()
        level = start_level(values) if len(values) else float("nan")
        return level if np.isfinite(level) and level > 0 else None

    def loss_is_poor(self, values: np.ndarray) -> bool:
        """The loss ends far from where a learning model would be: within half of the
        input-independent baseline when that is known, otherwise less than halved."""
        from .curves import end_level, relative_drop
        if self.baseline:
            level = end_level(values)
            val = self.series("val_loss")
            if val is not None and len(val) >= 3:  # small noisy batches hide a fit that held-out data shows
                held_out = end_level(val.trace()[1])
                level = min(level, held_out) if np.isfinite(held_out) else level
            return level >= 0.5 * self.baseline
        return relative_drop(values) < 0.5

    def weight_norm_ratios(self) -> dict[str, float]:
        """Latest / first norm of each weight matrix, where sampled (below 1: it shrank)."""
        return dict(self.memo("weight_norm_ratios", self._weight_norm_ratios))

    def _weight_norm_ratios(self) -> dict[str, float]:
        ratios = {}
        for name in self.weight_layers():
            s = self.series("weight_norm/" + name)
            w = finite(s.trace()[1]) if s is not None else []
            if len(w) >= 3 and w[0] > 0:
                ratios[name] = float(w[-1] / w[0])
        return ratios

    @property
    def progress(self) -> float:
        """Fraction of the planned run seen so far (1.0 when unknown and final)."""
        if self.planned_steps:
            return min(1.0, self.step / self.planned_steps)
        return 1.0 if self.final else 0.0


def judge(run: Run) -> tuple[list[Finding], list[str]]:
    """Run every rule; fold symptoms under their causes. Returns (findings, notes)."""
    from . import curvature, fit, gradients, learning_rate, loop, loss, output, units  # noqa: F401  (registers)
    findings, notes = [], []
    for code, fn in RULES.items():
        try:
            found = fn(run)
        except Exception as exc:  # one broken rule must not silence the others
            notes.append(f"rule {code} skipped: {type(exc).__name__}: {exc}")
            continue
        if found is not None:
            findings.append(found)
    findings = withdraw_contradicted(findings, notes)
    fold(findings)
    return findings, notes


SATURATING = ("sigmoid", "tanh", "hardtanh", "softsign", "hardsigmoid", "logsigmoid")


def attribute_depth(findings: list[Finding], notes: list[str]) -> list[Finding]:
    """A deep plain stack of sigmoid/tanh layers whose gradient is seen vanishing: the activation
    is the root (each one passes back at most 1/4 (sigmoid) of the gradient; ReLU and a matching
    init train the same depth), so report grad.vanishing with the depth as its evidence rather
    than arch.too_deep. A deep ReLU stack stays arch.too_deep: depth itself is its problem."""
    deep = next((f for f in findings if f.code == "arch.too_deep"), None)
    vanishing = next((f for f in findings if f.code == "grad.vanishing" and f.is_problem), None)
    if deep is None or vanishing is None:
        return findings
    activations = deep.evidence.get("activations") or {}
    saturating = sum(n for op, n in activations.items() if op in SATURATING)
    if not activations or saturating < 0.5 * sum(activations.values()):
        return findings
    vanishing.evidence = {**vanishing.evidence, "plain_depth": deep.evidence.get("depth"), "activations": activations}
    vanishing.message += (f" The network is a plain stack of {deep.evidence.get('depth')} weight layers with "
                          f"{saturating} saturating activations and no normalization or skip connection.")
    vanishing.cause = None
    notes.append("arch.too_deep folded into grad.vanishing: the gradient vanishes through the saturating "
                 "activations of the plain stack")
    for f in findings:
        if f.cause == "arch.too_deep":  # what depth explained, the vanishing gradient now explains
            f.cause = "grad.vanishing"
    return [f for f in findings if f is not deep]


def withdraw_contradicted(findings: list[Finding], notes: list[str]) -> list[Finding]:
    """Drop findings whose evidence another present finding explains (CONTRADICTED_BY), and say so."""
    present = {f.code for f in findings if f.is_problem}
    kept = []
    for f in findings:
        by = [c for c in CONTRADICTED_BY.get(f.code, ()) if c in present]
        if by:
            notes.append(withdrawal_note(f, by))
        else:
            kept.append(f)
    return kept


def withdrawal_note(f: Finding, by: list[str]) -> str:
    """Why `f` was withdrawn, without restating its claim as if it held: the observation
    (the message up to its conclusion after the last colon) and what explains it."""
    observed = f.message.rsplit(": ", 1)[0].rstrip(".") if ": " in f.message else None
    seen = f" what was seen ({observed[:1].lower() + observed[1:]})" if observed else " its evidence"
    return (f"{f.code} withdrawn:{seen} is explained by {', '.join(by)}, so it is no sign of "
            f"\"{f.title.lower()}\"")


def fold(findings: list[Finding]) -> None:
    """Mark each symptom with the first of its known causes that is present."""
    present = {f.code for f in findings if f.is_problem}
    for f in findings:
        causes = [c for c in CAUSES.get(f.code, ()) if c in present and c != f.code]
        if causes and f.cause is None:
            f.cause = causes[0]
