"""Findings, the code registry and the Report.

The registry below is the single source of truth for every finding code: its default
severity, a short title and the fix the report recommends. `docs/findings.md` is
generated from it (`python -m nndoctor.findings > docs/findings.md`).

Codes are listed in *precedence* order: a finding earlier in the list is closer to a root
cause than one later in it. The order follows how a fault propagates: bad data poisons
everything; a broken model or loss makes any optimiser fail; a wrong training loop makes
any learning rate fail; a wrong learning rate shows up as gradient pathologies; those show
up as dead or saturated units; all of them show up as loss symptoms; fit problems are
judged last because every earlier fault also spoils the fit.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class CodeInfo:
    code: str
    severity: str
    title: str
    fix: str


_CODES = [
    # data: checked before training, from the data itself
    CodeInfo("data.nonfinite", "error", "NaN or Inf in the data",
             "Drop or impute the rows with NaN/Inf and find where they come from (a division by zero, a log of 0, a failed parse)."),
    CodeInfo("data.labels_out_of_range", "error", "Labels outside what the loss accepts",
             "Re-map the labels to 0..C-1 (e.g. `y = y - 1` for labels 1..C) or make the output layer as wide as the number of classes."),
    CodeInfo("data.no_signal", "error", "Inputs carry no signal about the targets",
             "Check that inputs and labels are aligned (same order, same shuffling) and that the right columns are used."),
    CodeInfo("data.not_normalized", "warning", "Inputs are not normalized",
             "Standardize each input feature (subtract the mean, divide by the std), with statistics fitted on the training split."),
    CodeInfo("data.split_mismatch", "warning", "Training and evaluation inputs differ in scale or distribution",
             "Apply the same preprocessing (scaling, normalization, dtype conversion) to every split, with statistics fitted on the training split."),
    CodeInfo("data.target_scale", "warning", "Regression targets on a large scale",
             "Standardize the targets for training and invert the scaling at prediction time."),
    CodeInfo("data.unshuffled", "warning", "Batches are not shuffled",
             "Shuffle the training data every epoch (`DataLoader(..., shuffle=True)`)."),
    CodeInfo("data.class_imbalance", "warning", "One class dominates the labels",
             "Weight the loss by inverse class frequency or resample, and track a metric beyond accuracy."),
    CodeInfo("data.constant_feature", "info", "Constant input features",
             "Drop the constant features, or guard the division when standardizing."),
    # output and loss construction: read from the loss's autograd graph on one batch (preflight/graph_checks.py)
    CodeInfo("output.softmax_wrong_dim", "error", "Softmax over the batch dimension",
             "Normalize over the class dimension: `softmax(x, dim=-1)` / `log_softmax(x, dim=-1)`, `nn.Softmax(dim=-1)` (never the implicit dim)."),
    CodeInfo("data.padding_in_loss", "warning", "Padding counted in the loss",
             "Set the labels of padding positions to the loss's ignore index (-100: `labels[attention_mask == 0] = -100`), or pass `ignore_index=PAD` to the loss."),
    CodeInfo("loss.unstable_log", "warning", "A log of a softmax or sigmoid output",
             "Use the fused, stable form: `log_softmax` + `nll_loss` or `F.cross_entropy` on the logits; `logsigmoid` or `BCEWithLogitsLoss` for sigmoid outputs."),
    # model and loss: checked before training, from the structure and one batch
    CodeInfo("output.activation_mismatch", "error", "Final activation does not fit the loss",
             "Remove the final activation when the loss expects raw outputs (CrossEntropyLoss, BCEWithLogitsLoss, regression), or use the loss that expects it."),
    CodeInfo("loss.shape_mismatch", "error", "Output and target shapes broadcast silently",
             "Reshape one side so output and target have the same shape (e.g. `out.squeeze(-1)` or `y.view(-1, 1)`)."),
    CodeInfo("init.symmetric", "error", "Units start identical",
             "Initialize weights randomly: He (kaiming) for ReLU-like activations, Xavier/Glorot for tanh/sigmoid."),
    CodeInfo("init.scale_mismatch", "warning", "Weight scale does not preserve the signal",
             "Use the initialization that matches the activation: He for ReLU-like, Xavier/Glorot for tanh/sigmoid, LeCun for SELU."),
    CodeInfo("loss.init_mismatch", "warning", "Initial loss far from its expected value",
             "Scale down the last layer's weights and set its bias to the class prior (or the target mean for regression)."),
    CodeInfo("arch.too_deep", "warning", "A deep plain stack",
             "Start with 3-8 layers; add BatchNorm/LayerNorm and residual connections before going deeper."),
    CodeInfo("arch.bottleneck", "warning", "A hidden layer too narrow for the task",
             "Widen the layer to a few times the number of outputs (256-1024 units is a sane start)."),
    CodeInfo("run.failed", "error", "Training could not run",
             "Read the error in the evidence: the model or the loss raised on a real batch; run one batch by hand to see it."),
    # the user's training loop
    CodeInfo("loop.missing_zero_grad", "error", "Gradients are never zeroed",
             "Call `optimizer.zero_grad()` once per step, before `loss.backward()` (or accumulate on purpose and zero after each `step()`)."),
    CodeInfo("loop.eval_mode", "warning", "Training in eval mode",
             "Call `model.train()` before the training steps (and `model.eval()` only around validation)."),
    CodeInfo("loop.graph_retained", "warning", "Every step's autograd graph is kept alive",
             "Keep `loss.item()` (or `loss.detach()`) for logging instead of the loss tensor, and detach outputs you store; carry recurrent state across batches with `.detach()`."),
    CodeInfo("loop.eval_with_grad", "warning", "Evaluation runs with autograd on",
             "Wrap validation and inference in `with torch.no_grad():` (or `torch.inference_mode()`)."),
    CodeInfo("loop.eval_in_train_mode", "warning", "Evaluation runs in train mode",
             "Call `model.eval()` before validating and `model.train()` after it, so dropout is off and BatchNorm uses (and keeps) its running statistics."),
    CodeInfo("loop.eval_on_train_data", "warning", "The evaluation data is the training data",
             "Evaluate on a held-out split (e.g. `random_split` or `train_test_split` before training), never on the rows the model trains on."),
    CodeInfo("params.frozen", "warning", "Most parameters are frozen or outside the optimizer",
             "Unfreeze what should learn (`requires_grad_(True)`) and build the optimizer from every trainable parameter (`model.parameters()`), after any layer is replaced."),
    CodeInfo("grad.none", "warning", "Parameters never receive a gradient",
             "Use these parameters in the forward pass, remove them, or freeze them on purpose with `requires_grad_(False)`; look for a `.detach()`, `.data` or `torch.no_grad()` that cuts the graph."),
    CodeInfo("grad.zero", "error", "Gradients are exactly zero",
             "Replace the non-differentiable op (round, argmax, sign, a comparison, a hard clamp) with a differentiable one, or keep it out of the loss path."),
    # learning rate
    CodeInfo("lr.schedule_too_fast", "warning", "The learning-rate schedule decays far faster than the run",
             "Step the scheduler where it was sized to be stepped (once per epoch, after the epoch's batches), or size it in steps (e.g. `T_max=epochs * len(loader)`)."),
    CodeInfo("lr.too_high", "error", "Learning rate too high",
             "Lower the learning rate, about 10x (an LR range test finds the largest rate that does not diverge; use a tenth of it); add warm-up."),
    CodeInfo("lr.too_low", "warning", "Learning rate too low",
             "Raise the learning rate, about 10x, or run an LR range test (`nndoctor.find_lr`)."),
    # gradients
    CodeInfo("grad.exploding", "error", "Exploding gradients",
             "Lower the learning rate, use a variance-preserving init, add normalization; clip gradients only as a last resort."),
    CodeInfo("grad.vanishing", "warning", "Vanishing gradients",
             "Use ReLU-like activations with He init, add BatchNorm/LayerNorm or residual connections; for RNNs use a gated cell (LSTM/GRU)."),
    CodeInfo("grad.clipped_always", "warning", "Gradient clipping fires on most steps",
             "Lower the learning rate until clipping rarely fires; clipping should catch outliers, not every step."),
    # units and layers
    CodeInfo("units.dead", "warning", "Dead ReLU units",
             "Lower the learning rate, use He init and a small positive bias, or switch to LeakyReLU/ELU."),
    CodeInfo("units.saturated", "warning", "Saturated sigmoid/tanh units",
             "Normalize the inputs, use Xavier init, switch to ReLU-like activations or add BatchNorm."),
    CodeInfo("layers.slow_bottom", "warning", "Bottom layers learn far slower than the top",
             "Add normalization or residual connections, or give the bottom layers a larger learning rate."),
    # loss symptoms
    CodeInfo("loss.nonfinite", "error", "Loss became NaN/Inf",
             "Find the op that produced it (named in the evidence); lower the learning rate; check the data for NaN/Inf."),
    CodeInfo("output.collapsed", "warning", "The model answers the same for every input",
             "Check the init and learning rate (dead or saturated units), that inputs and labels are aligned, and weight the classes."),
    CodeInfo("loss.oscillation", "warning", "Loss oscillates without progress",
             "Lower the learning rate, add momentum (0.9), or use Adam."),
    CodeInfo("loss.plateau", "warning", "Loss stuck on a plateau",
             "Check the init and the learning rate, look for dead or saturated units; try a restart from another seed."),
    CodeInfo("loss.fluctuation", "warning", "Loss fluctuates around a flat mean late in training",
             "Decay the learning rate (step, cosine or 1/t schedule) for the last part of training, or grow the batch."),
    # curvature and batch (deep analysis)
    CodeInfo("curvature.ill_conditioned", "warning", "Ill-conditioned curvature (a ravine)",
             "Use momentum or Adam, and normalize inputs and activations."),
    CodeInfo("batch.too_large", "info", "Batch far larger than the gradient noise scale",
             "Use smaller batches (16-128 is a good start)."),
    # fit
    CodeInfo("reg.too_strong", "warning", "Regularization too strong to fit",
             "Lower dropout (at most 0.5, none on small nets) and weight decay, then add them back while watching validation."),
    CodeInfo("fit.underfitting", "warning", "The model cannot fit the training data",
             "Fix the optimization findings first; then add capacity or train longer."),
    CodeInfo("fit.overfitting", "warning", "Overfitting",
             "Stop early at the best validation step, add weight decay or dropout, augment or add data."),
    CodeInfo("optimum.local", "info", "Runs from different seeds end far apart",
             "Use random restarts and keep the best run; momentum or a wider network smooths the landscape."),
]

REGISTRY: dict[str, CodeInfo] = {c.code: c for c in _CODES}
PRECEDENCE: dict[str, int] = {c.code: i for i, c in enumerate(_CODES)}


def info(code: str) -> CodeInfo:
    """The registry entry for `code`; a KeyError names the unknown code."""
    try:
        return REGISTRY[code]
    except KeyError:
        raise KeyError(f"unknown finding code {code!r}") from None


def _clean(value: Any) -> Any:
    """Make evidence JSON-safe and stable: numpy scalars to Python, non-finite floats to strings."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalar
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return float(f"{value:.6g}")
        return str(value)  # "nan", "inf", "-inf"
    return str(value)


@dataclass
class Finding:
    code: str
    severity: str
    message: str
    fix: str
    evidence: dict = field(default_factory=dict)
    where: str | list[str] | None = None
    step: int | None = None
    cause: str | None = None  # the root-cause code this symptom is folded under

    def __post_init__(self):
        info(self.code)
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")
        self.evidence = _clean(self.evidence)

    @classmethod
    def make(cls, code: str, message: str, *, evidence: dict | None = None, where=None,
             step: int | None = None, severity: str | None = None, fix: str | None = None) -> "Finding":
        """A finding with the registry's severity and fix unless given."""
        entry = info(code)
        return cls(code=code, severity=severity or entry.severity, message=message,
                   fix=fix or entry.fix, evidence=evidence or {}, where=where, step=step)

    @property
    def title(self) -> str:
        return REGISTRY[self.code].title

    @property
    def is_problem(self) -> bool:
        return self.severity in ("error", "warning")


# Findings made before training rank by what they say about the setup: the pre-flight
# "cannot overfit one batch" test (fit.underfitting, step None) is evidence about the model
# itself, just below the init checks, not a verdict on a finished run.
PREFLIGHT_PRECEDENCE = {"fit.underfitting": PRECEDENCE["init.scale_mismatch"] + 0.5}


def rank(finding: Finding) -> tuple:
    """Sort key: problems before advice, then root causes before symptoms."""
    precedence = PRECEDENCE[finding.code]
    if finding.step is None:
        precedence = PREFLIGHT_PRECEDENCE.get(finding.code, precedence)
    return (finding.severity == "info", precedence, finding.step if finding.step is not None else -1)


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    meta: dict = field(default_factory=dict)       # what was examined: steps, model, data, timing
    notes: list[str] = field(default_factory=list)  # why a verdict could not be reached, what was skipped
    series: dict = field(default_factory=dict)      # downsampled traces for plots: name -> {"step": [...], "value": [...]}

    def __post_init__(self):
        self.findings = order(merge_repeats(self.findings))

    def has(self, code: str) -> bool:
        """True if a finding with this code is at warning or error."""
        return any(f.code == code and f.is_problem for f in self.findings)

    def get(self, code: str) -> Finding | None:
        return next((f for f in self.findings if f.code == code), None)

    @property
    def healthy(self) -> bool:
        return not any(f.is_problem for f in self.findings)

    @property
    def root(self) -> Finding | None:
        return next((f for f in self.findings if f.is_problem), None)

    def to_dict(self) -> dict:
        return {"nndoctor_report": 1, "findings": [asdict(f) for f in self.findings],
                "meta": _clean(self.meta), "notes": list(self.notes), "series": _clean(self.series)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        """A report from its dict form; a ReportFormatError names the first malformed field."""
        check_report(data)
        findings = []
        for i, f in enumerate(data["findings"]):
            try:
                findings.append(Finding(**f))
            except (KeyError, ValueError) as exc:  # an unknown code or severity
                raise ReportFormatError(f"findings[{i}]: {exc.args[0] if exc.args else exc}") from None
        return cls(findings=findings, meta=data.get("meta", {}), notes=data.get("notes", []),
                   series=data.get("series", {}))

    @classmethod
    def from_json(cls, text: str) -> "Report":
        try:
            data = json.loads(text)
        except RecursionError:
            raise ReportFormatError(f"nested deeper than {MAX_DEPTH} levels") from None
        return cls.from_dict(data)

    def save_json(self, path) -> None:
        from pathlib import Path
        Path(path).write_text(self.to_json())

    # The renderers (report/) import this module, never the other way round: the methods
    # below import them when called, so findings.py stays at the bottom of the import graph.
    def save_html(self, path) -> None:
        from .report.html import render_html
        from pathlib import Path
        Path(path).write_text(render_html(self), encoding="utf-8")

    def _repr_html_(self) -> str:
        """Jupyter's view: the page's content inline (scoped styles, no <html> wrapper)."""
        from .report.html import render_fragment
        return render_fragment(self)

    def __repr__(self) -> str:
        counts = [(sum(f.severity == s for f in self.findings), s) for s in SEVERITIES]
        said = ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for n, s in counts if n)
        root = self.root
        verdict = f"{said} — root {root.code}" if root else "healthy" + (f", {said}" if said else "")
        steps = self.meta.get("steps_trained", self.meta.get("steps"))
        return f"<Report: {verdict}" + (f"; {steps} steps" if steps is not None else "") + ">"

    def __str__(self) -> str:
        from .report.terminal import render_text
        return render_text(self)

    def __rich__(self):
        from .report.terminal import renderable
        return renderable(self)


# ---- loading a report back: its shape is checked before anything reads it ------------------
class ReportFormatError(ValueError):
    """A report (JSON) whose shape is not a report's; the message names the bad field."""


MAX_DEPTH = 64  # a real report nests about 8 levels (evidence -> also -> evidence -> ...)
FINDING_FIELDS = {"code": (str,), "severity": (str,), "message": (str,), "fix": (str,), "evidence": (dict,),
                  "where": (str, list, type(None)), "step": (int, type(None)), "cause": (str, type(None))}
REQUIRED_FIELDS = ("code", "severity", "message", "fix")
_KIND = {str: "a string", dict: "an object", list: "a list", int: "an integer", float: "a number",
         bool: "true/false", type(None): "null"}


def _expect(value, kinds: tuple, name: str) -> None:
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(_KIND[k] for k in kinds)
        raise ReportFormatError(f"{name} must be {wanted}, not {_KIND.get(type(value), type(value).__name__)}")


def _check_text_and_depth(data) -> None:
    """Every string is valid Unicode (JSON can spell a lone surrogate, which no terminal or file
    can write) and nothing nests deeper than MAX_DEPTH (the renderers recurse). Iterative, so a
    deep report cannot exhaust the stack here."""
    stack = [(data, "report", 0)]
    while stack:
        value, name, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ReportFormatError(f"{name} is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            items = list(value.items())
            for key, _ in items:
                _check_unicode(str(key), f"a key in {name}")
            stack.extend((v, f"{name}.{k}" if name != "report" else str(k), depth + 1) for k, v in items)
        elif isinstance(value, list):
            stack.extend((v, f"{name}[{i}]", depth + 1) for i, v in enumerate(value))
        elif isinstance(value, str):
            _check_unicode(value, name)


def _check_unicode(text: str, name: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ReportFormatError(f"{name} is not valid Unicode (a lone surrogate "
                                f"{text[exc.start]!r} at character {exc.start})") from None


def check_report(data) -> None:
    """Raise ReportFormatError naming the first field of `data` that a report cannot have."""
    if not isinstance(data, dict):
        raise ReportFormatError(f"a report is a JSON object, not {_KIND.get(type(data), type(data).__name__)}")
    if "findings" not in data:
        raise ReportFormatError("no 'findings' field")
    if data.get("nndoctor_report", 1) != 1:
        raise ReportFormatError(f"report format {data['nndoctor_report']!r} is not one this nndoctor reads (1)")
    _check_text_and_depth(data)
    _expect(data["findings"], (list,), "findings")
    for i, f in enumerate(data["findings"]):
        name = f"findings[{i}]"
        _expect(f, (dict,), name)
        unknown = sorted(set(f) - set(FINDING_FIELDS))
        if unknown:
            raise ReportFormatError(f"{name} has an unknown field {unknown[0]!r}")
        missing = [k for k in REQUIRED_FIELDS if k not in f]
        if missing:
            raise ReportFormatError(f"{name} has no {missing[0]!r} field")
        for key, kinds in FINDING_FIELDS.items():
            if key in f:
                _expect(f[key], kinds, f"{name}.{key}")
        for j, place in enumerate(f["where"] if isinstance(f.get("where"), list) else []):
            _expect(place, (str,), f"{name}.where[{j}]")
    _expect(data.get("meta", {}), (dict,), "meta")
    _expect(data.get("notes", []), (list,), "notes")
    for i, note in enumerate(data.get("notes", [])):
        _expect(note, (str,), f"notes[{i}]")
    _expect(data.get("series", {}), (dict,), "series")
    for key, s in data.get("series", {}).items():
        _expect(s, (dict,), f"series.{key}")
        for part in ("step", "value"):
            _expect(s.get(part, []), (list,), f"series.{key}.{part}")
        if len(s.get("step", [])) != len(s.get("value", [])):
            raise ReportFormatError(f"series.{key} has {len(s.get('step', []))} steps but "
                                    f"{len(s.get('value', []))} values")


def merge_repeats(findings: list[Finding]) -> list[Finding]:
    """One finding per code. The same code can be found twice (before training and while
    training, or on the training and validation data): the first in rank speaks for both,
    the others' messages and evidence travel in its evidence under "also"."""
    kept: dict[str, Finding] = {}
    for f in sorted(findings, key=rank):
        first = kept.setdefault(f.code, f)
        if first is f:
            continue
        also = {"message": f.message, "where": f.where, "step": f.step, "evidence": f.evidence}
        first.evidence = {**first.evidence, "also": first.evidence.get("also", []) + [_clean(also)]}
        if f.severity == "error":
            first.severity = "error"
        places = [w for x in (first.where, f.where) for w in ([x] if isinstance(x, str) else x or [])]
        first.where = list(dict.fromkeys(places)) if len(set(places)) > 1 else first.where
    return [f for f in findings if kept[f.code] is f]


def order(findings: list[Finding]) -> list[Finding]:
    """Root causes first, each followed (depth first) by the symptoms folded under it."""
    ranked = sorted(findings, key=rank)
    codes = {f.code for f in ranked}
    out: list[Finding] = []

    def visit(f: Finding) -> None:
        out.append(f)
        for g in ranked:
            if g.cause == f.code and not any(g is o for o in out):
                visit(g)

    for f in ranked:
        if (f.cause is None or f.cause not in codes) and not any(f is o for o in out):
            visit(f)
    out.extend(f for f in ranked if not any(f is o for o in out))  # a cause cycle: keep them all
    return out


def registry_markdown() -> str:
    """The findings table for the docs, generated from the registry."""
    lines = ["# Finding codes", "",
             "Generated from `nndoctor.findings` (`python -m nndoctor.findings`). Listed in precedence",
             "order: when several findings are present, the one higher in this table is reported first,",
             "as the more likely root cause.", "",
             "| code | default severity | title | fix |", "|---|---|---|---|"]
    lines += [f"| `{c.code}` | {c.severity} | {c.title} | {c.fix} |" for c in _CODES]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(registry_markdown(), end="")
