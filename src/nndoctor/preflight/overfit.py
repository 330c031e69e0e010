"""Can it learn at all? Two brief fits, each on a fresh deep copy (the user's model is never trained).

Both start from the copy that the structure trace ran (so lazy layers are initialized).

1. Overfit one small batch (Karpathy's recipe): 16 rows, up to 200 Adam steps. Any working
   model and loss drive the loss below a fifth of what the best constant guess scores. One that
   cannot is broken. Reported as `fit.underfitting` at severity `error` with `step=None` (it is
   the pre-training form of "cannot fit even the training set"); the evidence lists the other
   findings that explain it (`explained_by`) and the finding is folded under the first of them.
2. `data.no_signal`: only once (1) shows the model can learn and no model or loss finding could
   explain poor generalization instead (a saturated net generalizes badly from any data). Fit ~40 full-batch steps on up to
   256 rows with the real inputs and, from the same init, with the inputs zeroed; compare the best
   loss on up to 256 held-out rows along each fit. Real inputs that do no better than zeros carry no signal.
"""
from __future__ import annotations

import math
import time
import warnings
from copy import deepcopy

import torch
from torch import nn

from ..findings import Finding
from .case import Case, class_labels
from .losses import BINARY, loss_floor, run_loss
from .structure import first_tensor

LR = 3e-3             # Adam: fast enough for a few dozen steps, stable for MLPs, CNNs, RNNs, transformers
OVERFIT_ROWS, OVERFIT_STEPS = 16, 200
FITTED = 0.2          # overfit: at most a fifth of the constant guess's loss left (healthy nets reach it in ~20-40 steps)
SIGNAL_ROWS, SIGNAL_STEPS = 512, 40
SIGNAL_MIN_ROWS = 128  # half to fit, half held out: below 64 held-out rows a wide net's overconfidence hides real signal
TIME_BUDGET = 5.0     # seconds per fit
LINEAR_STEPS = 100    # L-BFGS iterations for the linear reference learner...
LINEAR_L2 = (1e-3, 1e-2, 1e-1)  # ...at three ridge penalties, the best held-out loss counts
EASIER = 0.8          # real labels fitted to 80% of the loss of permuted labels: they follow the inputs
# the explanations a failed overfit test looks for, most direct first
EXPLAINERS = ["data.nonfinite", "data.labels_out_of_range", "output.softmax_wrong_dim", "output.activation_mismatch",
              "loss.shape_mismatch", "grad.zero",
              "init.symmetric", "init.scale_mismatch", "arch.bottleneck", "arch.too_deep", "data.not_normalized",
              "data.target_scale", "loss.init_mismatch"]


def constant_guess(kind: str, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
    """The best input-independent output for this loss: the class prior (as logits, probabilities
    or log-probabilities), the target mean (MSE) or median (L1, Huber)."""
    if kind in ("cross_entropy", "nll") and not y.is_floating_point() and out.dim() >= 2:
        labels = y[(y >= 0) & (y < out.shape[1])]
        prior = torch.bincount(labels.flatten(), minlength=out.shape[1]).double() + 1e-3
        guess = (prior / prior.sum()).log().to(out.dtype)
        return guess.view(1, -1, *[1] * (out.dim() - 2)).expand_as(out)
    if y.shape != out.shape or not y.is_floating_point():
        return None
    if kind in BINARY:
        p = y.mean(0, keepdim=True).clamp(1e-3, 1 - 1e-3)
        return (p if kind == "bce" else (p / (1 - p)).log()).expand_as(out)
    if kind == "mse":
        return y.mean(0, keepdim=True).expand_as(out)
    if kind in ("l1", "huber"):
        return y.median(0, keepdim=True).values.expand_as(out)
    return None


class OutOfTime(Exception):
    """A probe hit its time budget (a large model): no verdict rather than a slow checkup."""


def fit(model, x, y, loss_fn, steps: int, stop_below: float = -math.inf, after_step=None) -> list[float]:
    """Train `model` (a copy) full-batch with Adam; the losses, stopping early below `stop_below`.
    `after_step(t, model)`, when given, is called after each update (e.g. to score held-out rows)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return []
    optimizer = torch.optim.Adam(params, lr=LR)
    losses = []
    deadline = time.perf_counter() + TIME_BUDGET
    for t in range(1, steps + 1):
        if time.perf_counter() > deadline:
            raise OutOfTime(f"{t - 1} of {steps} steps in {TIME_BUDGET:g} s")
        with warnings.catch_warnings():  # the loss's broadcast warning is already a finding
            warnings.simplefilter("ignore")
            loss = loss_fn(first_tensor(model(x)), y)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]) or losses[-1] < stop_below:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(t, model)
    return losses


def best_heldout(model, x, y, xv, yv, loss_fn, steps: int, every: int = 5) -> tuple[list[float], float | None]:
    """Fit on (x, y) and score (xv, yv) every `every` steps: (training losses, best held-out loss).
    The best point, not the last, so a small training split that overfits in the fit (a wide net
    on 30 rows) still shows what its inputs can tell about held-out targets."""
    scores = []

    def score(t, m):
        if t % every == 0 or t == steps:
            m.eval()
            with torch.no_grad():
                value, _ = run_loss(loss_fn, first_tensor(m(xv)), yv)
            m.train()
            scores.append(float(value) if value is not None else math.nan)

    losses = fit(model, x, y, loss_fn, steps, after_step=score)
    finite = [v for v in scores if math.isfinite(v)]
    return losses, (min(finite) if finite and len(finite) == len(scores) else None)


def _diverse_rows(c: Case, n: int) -> torch.Tensor:
    """n row indices covering as many classes as possible (round-robin), else the first n."""
    labels = class_labels(c.y, c.kind)
    if labels is None:
        return torch.arange(min(n, len(c.y)))
    by_class = [torch.nonzero(labels == k).flatten() for k in torch.unique(labels)]
    order = [idx[i] for i in range(max(len(b) for b in by_class)) for idx in by_class if i < len(idx)]
    return torch.stack(order[:n])


def check_overfit_batch(c: Case) -> tuple[Finding | None, bool]:
    """(finding, learned): can a copy of the model drive the loss on 16 rows to a tenth of a constant guess?"""
    rows = _diverse_rows(c, OVERFIT_ROWS)
    x, y = c.X[rows], c.y[rows]
    model = deepcopy(c.probe)
    with torch.no_grad():
        out = first_tensor(model(x))
        guess = constant_guess(c.kind, y, out)
        start, _ = run_loss(c.loss_fn, out, y)
    baseline = run_loss(c.loss_fn, guess, y)[0] if guess is not None else None
    reference = baseline if baseline is not None else start  # an unknown loss is judged against its own start
    if reference is None or not float(reference) > 1e-8:
        return None, False
    reference = float(reference)
    floor = loss_floor(c.loss_fn, out.shape[1] if out.dim() >= 2 else None, y)
    target = floor + FITTED * (reference - floor)
    losses = fit(model, x, y, c.loss_fn, OVERFIT_STEPS, stop_below=target)
    if not losses:
        c.notes.append("The overfit test was skipped: the model has no trainable parameters.")
        return None, False
    best = min((v for v in losses if math.isfinite(v)), default=math.inf)
    c.meta["overfit_batch"] = {"rows": len(rows), "steps": len(losses), "initial_loss": losses[0], "best_loss": best,
                               "constant_guess_loss": reference}
    if best < target:
        return None, True
    explained = [code for code in EXPLAINERS if c.has(code)]
    reason = f"explained by {', '.join(explained)}" if explained else (
        "no pre-flight check explains it (the run may: see what it is folded under); else look in forward() "
        "for a `.detach()`, `.data`, argmax or rounding that cuts the gradient")
    finding = Finding.make(
        "fit.underfitting",
        f"A copy of the model could not overfit one batch of {len(rows)} rows in {len(losses)} Adam steps "
        f"(loss {losses[0]:.3g} -> {best:.3g}, a constant guess scores {reference:.3g}); {reason}.",
        evidence={"rows": len(rows), "steps": len(losses), "lr": LR, "initial_loss": losses[0], "best_loss": best,
                  "constant_guess_loss": reference, "explained_by": explained},
        severity="error", where="model",
        fix=("Fix " + ", ".join(explained) + " first; a working setup overfits one small batch within a few dozen steps.")
        if explained else "Find what stops learning: check that every layer is used and the output is computed from the input "
                          "without a non-differentiable op; then add capacity.")
    finding.cause = explained[0] if explained else None
    return finding, False


def linear_probe(c: Case, x, y, xv, yv) -> float | None:
    """Held-out loss of a linear model on the flattened, standardized inputs (None when the
    outputs are not (N, K) or the inputs are not numbers)."""
    out = first_tensor(c.out) if c.out is not None else None
    if out is None or out.dim() != 2 or not isinstance(x, torch.Tensor) or x.dim() < 2:
        return None
    flat, flat_v = x.flatten(1).double(), xv.flatten(1).double()
    mean, std = flat.mean(0), flat.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant features: centred, not blown up
    flat, flat_v = ((flat - mean) / std).float(), ((flat_v - mean) / std).float()
    scores = [_ridge_heldout(flat, y, flat_v, yv, c.loss_fn, out.shape[1], l2) for l2 in LINEAR_L2]
    scores = [v for v in scores if v is not None]
    return min(scores) if scores else None


def _ridge_heldout(x, y, xv, yv, loss_fn, outputs: int, l2: float) -> float | None:
    """Held-out loss of a linear model fitted to convergence (L-BFGS) with an L2 penalty: a
    reference learner that, unlike a few gradient steps, neither underfits a weak signal nor
    drowns it in a hundred irrelevant features."""
    model = nn.Linear(x.shape[1], outputs)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=LINEAR_STEPS, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value, _ = run_loss(loss_fn, model(x), y)
        if value is None:
            raise ValueError("the loss cannot score a linear model's output")
        value = value + l2 * model.weight.pow(2).sum()
        value.backward()
        return value

    try:
        optimizer.step(closure)
    except ValueError:
        return None
    with torch.no_grad():
        value, _ = run_loss(loss_fn, model(xv), yv)
    return float(value) if value is not None and math.isfinite(float(value)) else None


def check_no_signal(c: Case) -> Finding | None:
    """Held-out loss after a brief fit on real inputs vs on zeroed inputs (same init, same steps)."""
    n = min(len(c.X), SIGNAL_ROWS)
    confounders = [f.code for f in c.findings if f.is_problem and not f.code.startswith("data.")]
    if confounders:
        c.notes.append(f"The no-signal test was skipped: {', '.join(confounders)} would confound it.")
        return None
    if n < SIGNAL_MIN_ROWS:
        c.notes.append(f"The no-signal test was skipped: {n} rows are too few to tell a weak signal from noise on "
                       f"held-out rows (it needs {SIGNAL_MIN_ROWS}).")
        return None
    half = n // 2
    x, y, xv, yv = c.X[:half], c.y[:half], c.X[half:n], c.y[half:n]
    held, trained = {}, {}  # held-out and final training loss per fit
    for name, inputs, held_in in (("real", x, xv), ("zeroed", torch.zeros_like(x), torch.zeros_like(xv))):
        losses, best = best_heldout(deepcopy(c.probe), inputs, y, held_in, yv, c.loss_fn, SIGNAL_STEPS)
        trained[name] = losses[-1] if losses else math.nan
        if best is None:
            return None
        held[name] = best
    real, zeroed = held["real"], held["zeroed"]
    c.meta["no_signal"] = {"heldout_loss_real": real, "heldout_loss_zeroed": zeroed, "train_loss_real": trained["real"]}
    if real < 0.95 * zeroed:  # real inputs explain at least 5% of the loss a blind guess leaves
        return None
    # Control: a model that learns slowly (a transformer, an RNN) may not generalize in a short
    # fit even on good data. If labels carry no signal, the real labels are no easier to fit than
    # a random permutation of them; if they are clearly easier, the inputs do explain them.
    model = deepcopy(c.probe)
    permuted = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    losses = fit(model, x, permuted, c.loss_fn, SIGNAL_STEPS)
    trained["permuted"] = losses[-1] if losses else math.nan
    c.meta["no_signal"]["train_loss_permuted_labels"] = trained["permuted"]
    if trained["real"] < EASIER * trained["permuted"]:
        c.notes.append("The no-signal test gave no verdict: held-out loss did not improve in its short fit, but the "
                       "real labels were easier to fit than shuffled ones, so the inputs do carry signal.")
        return None
    # Second control: a model that cannot use its inputs yet (a vanilla RNN over long sequences)
    # says nothing about the data. A linear model on the flattened inputs is a reference learner
    # that generalizes quickly; if it beats the blind guess on held-out rows, there is signal.
    linear = linear_probe(c, x, y, xv, yv)
    if linear is not None:
        c.meta["no_signal"]["heldout_loss_linear"] = linear
        if linear < 0.95 * zeroed:
            c.notes.append("The no-signal test gave no verdict: the model did not generalize in its short fit, but a "
                           "linear model on the same inputs did, so the inputs do carry signal.")
            return None
    return Finding.make(
        "data.no_signal",
        f"After {SIGNAL_STEPS} steps the held-out loss with real inputs ({real:.3g}) is no better than with zeroed "
        f"inputs ({zeroed:.3g}): the inputs tell the model nothing about the targets.",
        evidence={"heldout_loss_real": real, "heldout_loss_zeroed": zeroed, "train_rows": half, "heldout_rows": n - half,
                  "steps": SIGNAL_STEPS, "lr": LR},
        where="train_data")
