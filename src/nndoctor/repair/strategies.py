"""One repair strategy per finding code.

A strategy reads the current Trial and the finding and yields Attempts, best first: a
changed Trial, one sentence saying what changed, and the code the user should write. The
repair loop re-runs each attempt and keeps the first that is measurably better with its
finding gone. A strategy yields nothing when the fix needs an edit of the user's source
(a functional activation, an op inside forward): those get a code fix only (`CODE_FIXES`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ..findings import REGISTRY, Finding
from ..preflight.losses import loss_kind
from .restarts import reinitialize, restarts
from .trial import Affine, Trial, finite_rows, like, tensors


@dataclass
class Attempt:
    trial: Trial
    description: str
    snippet: str


class Context:
    """What strategies share within one repair: range tests run once per trial."""

    def __init__(self, restarts_runs: int = 5):
        self.restarts_runs = restarts_runs
        self.ranges: list = []   # (trial, LRRange), for the report's plot

    def lr_range(self, trial: Trial):
        for seen, result in self.ranges:
            if seen is trial:
                return result
        from .lr_finder import find_lr
        model = copy.deepcopy(trial.model)
        result = find_lr(model, trial.train, loss_fn=trial.loss_fn, optimizer=trial.optimizer.build(model),
                         batch_size=trial.batch_size, seed=trial.seed)
        self.ranges.append((trial, result))
        return result


Strategy = Callable[[Trial, Finding, Context], Iterator[Attempt]]
STRATEGIES: dict[str, Strategy] = {}


def strategy(*codes: str):
    def register(fn: Strategy) -> Strategy:
        for code in codes:
            STRATEGIES[code] = fn
        return fn
    return register


# learning rate -----------------------------------------------------------------------------

def _with_lr(trial: Trial, lr: float, why: str) -> Attempt:
    changed = trial.replace(optimizer=trial.optimizer.with_lr(lr))
    return Attempt(changed, f"Learning rate {trial.optimizer.lr:.3g} -> {lr:.3g} ({why}).", changed.optimizer.snippet())


def _lower_lr(trial: Trial, ctx: Context) -> Iterator[Attempt]:
    current = trial.optimizer.lr
    found = ctx.lr_range(trial)
    if found.suggestion and found.suggestion < current / 1.5:
        yield _with_lr(trial, found.suggestion, f"the LR range test's {found.rule} pick; "
                                                f"range {found.low:.2g} to {found.high:.2g}")
    yield _with_lr(trial, current / 10, "a tenth of the rate")


@strategy("lr.too_high", "grad.clipped_always")
def lower_lr(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    yield from _lower_lr(trial, ctx)


@strategy("lr.too_low")
def raise_lr(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    current = trial.optimizer.lr
    found = ctx.lr_range(trial)
    if found.suggestion and found.suggestion > current * 1.5:
        yield _with_lr(trial, found.suggestion, f"the LR range test's {found.rule} pick; "
                                                f"range {found.low:.2g} to {found.high:.2g}")
    yield _with_lr(trial, current * 10, "ten times the rate")


# initialization and activations ----------------------------------------------------------

RELU_LIKE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.ReLU6, nn.PReLU, nn.SELU, nn.Mish)
SQUASHING = (nn.Tanh, nn.Sigmoid)
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _activation(model: nn.Module) -> str:
    """'tanh', 'sigmoid' or 'relu': the activation most of the model's modules use (ReLU when
    none is a module: F.relu is the common functional choice)."""
    counts = {"relu": 0, "tanh": 0, "sigmoid": 0}
    for m in model.modules():
        if isinstance(m, RELU_LIKE):
            counts["relu"] += 1
        elif isinstance(m, nn.Tanh):
            counts["tanh"] += 1
        elif isinstance(m, nn.Sigmoid):
            counts["sigmoid"] += 1
    return max(counts, key=lambda k: (counts[k], k == "relu"))


def matched_init(model: nn.Module, activation: str) -> nn.Module:
    """A copy with He init for ReLU-like nets, Xavier (with the activation's gain) for tanh or
    sigmoid nets; biases zero. Recurrent and other layers get their default reset."""
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        for m in fresh.modules():
            if isinstance(m, WEIGHTED):
                if activation == "relu":
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                else:
                    nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain(activation))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.RNNBase, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.Embedding)):
                m.reset_parameters()
    return fresh


INIT_SNIPPET = {
    "relu": "for m in model.modules():\n    if isinstance(m, (nn.Linear, nn.Conv2d)):\n"
            "        nn.init.kaiming_normal_(m.weight, nonlinearity=\"relu\")  # He init\n        nn.init.zeros_(m.bias)",
    "tanh": "for m in model.modules():\n    if isinstance(m, (nn.Linear, nn.Conv2d)):\n"
            "        nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain(\"tanh\"))\n        nn.init.zeros_(m.bias)",
    "sigmoid": "for m in model.modules():\n    if isinstance(m, (nn.Linear, nn.Conv2d)):\n"
               "        nn.init.xavier_uniform_(m.weight)  # Xavier/Glorot\n        nn.init.zeros_(m.bias)",
}


def _reinit(trial: Trial, activation: str | None = None, seed: int | None = None) -> Attempt:
    activation = activation or _activation(trial.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(trial.seed if seed is None else seed)
        model = matched_init(trial.model, activation)
    name = "He (Kaiming)" if activation == "relu" else "Xavier/Glorot"
    return Attempt(trial.replace(model=model), f"{name} initialization for a {activation} network, biases zero.",
                   INIT_SNIPPET[activation])


@strategy("init.symmetric", "init.scale_mismatch", "loss.init_mismatch")
def reinit(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    yield _reinit(trial)


def swap_modules(model: nn.Module, match: Callable[[nn.Module], bool], make: Callable[[nn.Module], nn.Module]):
    """A copy with every submodule that `match`es replaced by `make(old)`; (copy, count)."""
    fresh = copy.deepcopy(model)
    count = 0
    for parent in list(fresh.modules()):
        for name, child in list(parent.named_children()):
            if match(child):
                setattr(parent, name, make(child))
                count += 1
    return fresh, count


@strategy("units.dead")
def revive_units(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    leaky, count = swap_modules(trial.model, lambda m: type(m) is nn.ReLU, lambda m: nn.LeakyReLU(0.01))
    if count:
        yield Attempt(trial.replace(model=leaky), f"{count} ReLU module(s) replaced by LeakyReLU(0.01): a unit "
                      "below zero still passes a gradient.", "nn.LeakyReLU(0.01)  # instead of each nn.ReLU()")
    yield _reinit(trial, "relu")
    yield from _lower_lr(trial, ctx)


@strategy("grad.vanishing", "units.saturated")
def unsquash(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    relu, count = swap_modules(trial.model, lambda m: isinstance(m, SQUASHING) and not _is_last(trial.model, m),
                               lambda m: nn.ReLU())
    if count:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(trial.seed)
            relu = matched_init(relu, "relu")
        yield Attempt(trial.replace(model=relu), f"{count} sigmoid/tanh module(s) replaced by ReLU, with He init "
                      "to match: ReLU's slope is 1 where it is active, so the gradient keeps its size through depth.",
                      "nn.ReLU()  # instead of each hidden nn.Sigmoid()/nn.Tanh()\n" + INIT_SNIPPET["relu"])
    gated, cells = swap_modules(trial.model, lambda m: type(m) is nn.RNN, _as_lstm)
    if cells:
        yield Attempt(trial.replace(model=gated), f"{cells} vanilla RNN layer(s) replaced by an LSTM of the same "
                      "size: its additive cell state carries the gradient across time steps.",
                      "self.rnn = nn.LSTM(input_size, hidden_size, batch_first=True)  # instead of nn.RNN")
    if finding.code == "units.saturated":
        yield _reinit(trial)


def _is_last(model: nn.Module, module: nn.Module) -> bool:
    leaves = [m for m in model.modules() if not list(m.children())]
    return bool(leaves) and leaves[-1] is module


FORGET_BIAS = 3.0  # Jozefowicz et al. (2015) recommend >= 1; long delays need the cell to remember from step 0


def _as_lstm(rnn: nn.RNN) -> nn.LSTM:
    """An LSTM of the same shape whose forget gates start open: it remembers by default."""
    lstm = nn.LSTM(rnn.input_size, rnn.hidden_size, num_layers=rnn.num_layers, bias=rnn.bias,
                   batch_first=rnn.batch_first, dropout=rnn.dropout, bidirectional=rnn.bidirectional)
    if rnn.bias:
        with torch.no_grad():
            for name, value in lstm.named_parameters():
                if name.startswith("bias_ih"):
                    value[rnn.hidden_size:2 * rnn.hidden_size].fill_(FORGET_BIAS)  # gates: input, forget, cell, output
    return lstm


@strategy("grad.exploding")
def tame_gradients(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    yield _reinit(trial)
    yield from _lower_lr(trial, ctx)
    clipped = trial.replace(clip=1.0)
    yield Attempt(clipped, "Gradient norm clipped at 1.0 (a last resort: it hides, not removes, the cause).",
                  "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)  # between backward() and step()")


@strategy("layers.slow_bottom")
def even_rates(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    rates = [float(o.get("lr", 0.0)) for _, o in trial.optimizer.groups]
    if len(rates) > 1 and min(rates) < max(rates) / 100:
        changed = trial.replace(optimizer=trial.optimizer.with_options(lr=max(rates)))
        yield Attempt(changed, f"Every parameter group at lr={max(rates):.3g} (the bottom group had {min(rates):.3g}).",
                      changed.optimizer.snippet())


# the loss over time ------------------------------------------------------------------------

@strategy("loss.oscillation")
def steady(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    yield from _lower_lr(trial, ctx)
    if trial.optimizer.cls is torch.optim.SGD and not trial.optimizer.groups[0][1].get("momentum"):
        changed = trial.replace(optimizer=trial.optimizer.with_options(momentum=0.9))
        yield Attempt(changed, "Momentum 0.9 added to SGD: it averages the zig-zag out.", changed.optimizer.snippet())
    if trial.optimizer.cls is not torch.optim.Adam:
        changed = trial.replace(optimizer=trial.optimizer.with_class(torch.optim.Adam, lr=1e-3))
        yield Attempt(changed, "Adam at lr=1e-3: per-parameter step sizes.", changed.optimizer.snippet())


@strategy("loss.fluctuation")
def decay(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    yield Attempt(trial.replace(schedule="cosine"),
                  f"Cosine decay of the learning rate to 0 over the {trial.steps} steps: late steps average the noise out.",
                  f"scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max={trial.steps})\n"
                  "# ... and after each optimizer.step():\nscheduler.step()")


# fit and regularization --------------------------------------------------------------------

@strategy("fit.overfitting")
def regularize(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    spec = trial.optimizer
    if spec.cls in (torch.optim.Adam, torch.optim.AdamW):
        changed = trial.replace(optimizer=spec.with_class(torch.optim.AdamW, weight_decay=0.1))
        yield Attempt(changed, "Decoupled weight decay 0.1 (AdamW) to keep the weights small.", changed.optimizer.snippet())
    else:
        changed = trial.replace(optimizer=spec.with_options(weight_decay=5e-3))
        yield Attempt(changed, "Weight decay 5e-3.", changed.optimizer.snippet())
    dropped, count = swap_modules(trial.model, lambda m: isinstance(m, RELU_LIKE + SQUASHING) and not _is_last(trial.model, m),
                                  lambda m: nn.Sequential(m, nn.Dropout(0.5)))
    if count and not any(isinstance(m, nn.Dropout) for m in trial.model.modules()):
        yield Attempt(trial.replace(model=dropped), f"Dropout 0.5 after each of the {count} hidden activation(s).",
                      "nn.Dropout(0.5)  # after each hidden activation")
    best = finding.evidence.get("best_step")
    if isinstance(best, int) and trial.steps and 0 < best < trial.steps:
        yield Attempt(trial.replace(steps=best), f"Early stopping: {best} steps instead of {trial.steps}, where the "
                      "validation loss was lowest.",
                      "if val_loss < best: best, best_state = val_loss, copy.deepcopy(model.state_dict())\n"
                      "# ... after training (or when it has not improved for a while):\nmodel.load_state_dict(best_state)")


@strategy("reg.too_strong")
def loosen(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    strong = [m for m in trial.model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0.2]
    if strong:
        lighter, count = swap_modules(trial.model, lambda m: isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0.2,
                                      lambda m: type(m)(0.1))
        yield Attempt(trial.replace(model=lighter), f"Dropout lowered from {max(m.p for m in strong):g} to 0.1 "
                      f"({count} layer(s)).", "nn.Dropout(0.1)")
    decay_now = max(float(o.get("weight_decay", 0.0)) for _, o in trial.optimizer.groups)
    if decay_now > 0:
        changed = trial.replace(optimizer=trial.optimizer.with_options(weight_decay=decay_now / 100))
        yield Attempt(changed, f"Weight decay {decay_now:g} -> {decay_now / 100:g}.", changed.optimizer.snippet())


@strategy("batch.too_large")
def smaller_batch(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    size = trial.batch_size or 64
    if size > 32 and trial.steps:
        smaller = max(32, size // 4)
        steps = trial.steps * size // smaller  # the same number of samples: the same compute
        yield Attempt(trial.replace(batch_size=smaller, steps=steps),
                      f"Batch size {size} -> {smaller} and {trial.steps} -> {steps} steps: the same samples, "
                      "more updates.", f"DataLoader(dataset, batch_size={smaller}, shuffle=True)")


@strategy("optimum.local")
def restart(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    seed = finding.evidence.get("best_seed")
    if seed is None:
        model = copy.deepcopy(trial.model)
        seed = restarts(model, trial.train, loss_fn=trial.loss_fn, optimizer=trial.optimizer.build(model),
                        steps=trial.steps or 200, batch_size=trial.batch_size, seed=trial.seed,
                        runs=ctx.restarts_runs).best_seed
    if seed == trial.seed:
        return
    yield Attempt(trial.replace(model=reinitialize(trial.model, seed)),
                  f"Restarted from the initial weights of seed {seed}, the best of the restarts.",
                  f"torch.manual_seed({seed})  # before building the model: the best of several restarts")


# data --------------------------------------------------------------------------------------

def _rows(trial: Trial):
    """(train X, y, val X, y) as tensors, or None when the data cannot be materialized."""
    train = tensors(trial.train)
    val = tensors(trial.val) if trial.val is not None else None
    if train is None or (trial.val is not None and val is None):
        return None
    return (*train, *(val or (None, None)))


def _with_rows(trial: Trial, X, y, X_val, y_val, **changes) -> Trial:
    val = (X_val, y_val) if X_val is not None else None
    return trial.replace(train=like(trial.train, X, y), val=val, **changes)


def _then(first: Callable | None, second: Callable) -> Callable:
    return second if first is None else (lambda y: second(first(y)))


@strategy("data.not_normalized")
def standardize_inputs(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    rows = _rows(trial)
    if rows is None or not rows[0].is_floating_point():
        return
    X, y, X_val, y_val = rows
    dims = [0] if X.dim() <= 2 else [0, *range(2, X.dim())]   # per feature; per channel for images
    finite = torch.where(torch.isfinite(X), X, torch.nan)
    mean = finite.nanmean(dim=dims, keepdim=True)[0]
    std = (finite - mean).square().nanmean(dim=dims, keepdim=True)[0].sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    scaler = Affine(1 / std, -mean / std)
    inputs = scaler if trial.inputs is None else nn.Sequential(trial.inputs, scaler)
    with torch.no_grad():
        changed = _with_rows(trial, scaler(X), y, scaler(X_val) if X_val is not None else None, y_val, inputs=inputs)
    yield Attempt(changed, "Inputs standardized with the training split's mean and std; the scaler sits in front "
                  "of the model, so it takes raw inputs.",
                  f"mean, std = X_train.mean({'0' if X.dim() <= 2 else '(0, 2, 3)'}, keepdim=True), "
                  f"X_train.std({'0' if X.dim() <= 2 else '(0, 2, 3)'}, keepdim=True).clamp_min(1e-6)\n"
                  "X = (X - mean) / std  # the same mean/std for training, validation and prediction")


@strategy("data.target_scale")
def standardize_targets(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    rows = _rows(trial)
    if rows is None or not rows[1].is_floating_point():
        return
    X, y, X_val, y_val = rows
    finite = y[torch.isfinite(y)]
    mean, std = finite.mean(), finite.std().clamp_min(1e-12)
    back = Affine(std, mean)
    outputs = back if trial.outputs is None else nn.Sequential(back, trial.outputs)
    changed = _with_rows(trial, X, (y - mean) / std, X_val, (y_val - mean) / std if y_val is not None else None,
                         outputs=outputs)
    yield Attempt(changed, f"Targets standardized (mean {float(mean):.3g}, std {float(std):.3g}) for training; the "
                  "inverse sits behind the model, so it answers in the original units.",
                  "mean, std = y_train.mean(), y_train.std()\ny = (y - mean) / std  # train on this\n"
                  "prediction = model(x) * std + mean  # back in the original units")


@strategy("data.nonfinite")
def drop_nonfinite(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    rows = _rows(trial)
    if rows is None:
        return
    X, y, X_val, y_val = rows
    keep = finite_rows(X, y)
    val_keep = finite_rows(X_val, y_val) if X_val is not None else None
    dropped = int((~keep).sum())
    if not dropped and (val_keep is None or bool(val_keep.all())):
        return
    changed = _with_rows(trial, X[keep], y[keep], X_val[val_keep] if X_val is not None else None,
                         y_val[val_keep] if y_val is not None else None)
    yield Attempt(changed, f"{dropped} training row(s) with NaN/Inf dropped (of {len(X)}).",
                  "ok = torch.isfinite(X).flatten(1).all(1) & torch.isfinite(y).reshape(len(y), -1).all(1)\n"
                  "X, y = X[ok], y[ok]")


@strategy("data.unshuffled")
def shuffle(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    from torch.utils.data import DataLoader
    if not isinstance(trial.train, DataLoader):
        return
    size = trial.train.batch_size
    changed = trial.replace(train=trial.train.dataset, batch_size=size)
    yield Attempt(changed, f"Training batches shuffled every epoch (batch size {size} kept).",
                  f"DataLoader(dataset, batch_size={size}, shuffle=True)")


def _output(trial: Trial, X: torch.Tensor) -> torch.Tensor | None:
    probe = copy.deepcopy(trial.model).eval()
    try:
        with torch.no_grad():
            return probe(X[:8])
    except Exception:
        return None


@strategy("data.labels_out_of_range")
def relabel(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    rows = _rows(trial)
    if rows is None:
        return
    X, y, X_val, y_val = rows
    out = _output(trial, X)
    kind = loss_kind(trial.loss_fn)
    values = torch.unique(y if y_val is None else torch.cat([y.reshape(-1), y_val.reshape(-1)]))
    if kind in ("cross_entropy", "nll") and not y.is_floating_point() and out is not None and out.dim() == 2:
        if len(values) > out.shape[1]:  # more classes than outputs: no re-mapping fits, a wider head does
            yield from _widen_head(trial, X, y, X_val, y_val, values, out.shape[1])
            return
        def remap(t):
            return torch.searchsorted(values.to(t.device), t)
        text = ", ".join(f"{v}->{i}" for i, v in enumerate(values.tolist()[:4])) + (", ..." if len(values) > 4 else "")
        snippet = ("classes = torch.unique(y)\ny = torch.searchsorted(classes, y)  # labels 0..C-1; "
                   "class k of the output means label classes[k]")
    elif kind in ("bce", "bce_logits") and y.is_floating_point() and len(values) == 2:
        low, high = float(values[0]), float(values[1])
        def remap(t):
            return (t == high).to(t.dtype)
        text = f"{low:g}->0, {high:g}->1"
        snippet = f"y = (y == {high:g}).float()  # BCE targets must be 0/1"
    else:
        return
    changed = _with_rows(trial, X, remap(y), X_val, remap(y_val) if y_val is not None else None,
                         relabel=_then(trial.relabel, remap))
    yield Attempt(changed, f"Labels re-mapped to what the loss accepts ({text}); the model's answers refer to the "
                  "re-mapped labels.", snippet)


def _widen_head(trial: Trial, X, y, X_val, y_val, values: torch.Tensor, outputs: int) -> Iterator[Attempt]:
    """One output per class: the last Linear giving the `outputs` logits is widened (its trained
    rows kept, new rows initialised as nn.Linear does). Labels 0..K-1 stay as they are; labels
    with negative values are re-mapped to 0..K-1 first."""
    fresh = copy.deepcopy(trial.model)
    heads = [(n, m) for n, m in fresh.named_modules() if isinstance(m, nn.Linear) and m.out_features == outputs and n]
    if not heads:
        return
    path, head = heads[-1]
    negative = bool(values[0] < 0)
    width = len(values) if negative else int(values[-1]) + 1
    wider = nn.Linear(head.in_features, width, bias=head.bias is not None).to(head.weight.device, head.weight.dtype)
    with torch.no_grad():
        wider.weight[:outputs] = head.weight
        if head.bias is not None:
            wider.bias[:outputs] = head.bias
    parent = fresh.get_submodule(path.rsplit(".", 1)[0]) if "." in path else fresh
    setattr(parent, path.rsplit(".", 1)[-1], wider)
    probe = _output(trial.replace(model=fresh), X)
    if probe is None or probe.dim() != 2 or probe.shape[1] != width:
        return  # the model's forward does not pass the wider head through
    snippet = f"{_code_ref(path)} = nn.Linear({head.in_features}, {width})  # one output per class"
    if not negative:
        yield Attempt(trial.replace(model=fresh), f"The output layer `{path}` widened from {outputs} to {width} outputs, "
                      f"one per label 0..{width - 1}.", snippet)
        return
    def remap(t):
        return torch.searchsorted(values.to(t.device), t)
    changed = _with_rows(trial, X, remap(y), X_val, remap(y_val) if y_val is not None else None,
                         relabel=_then(trial.relabel, remap)).replace(model=fresh)
    yield Attempt(changed, f"Labels re-mapped to 0..{width - 1} and the output layer `{path}` widened from {outputs} to "
                  f"{width} outputs; the model's answers refer to the re-mapped labels.",
                  "classes = torch.unique(y)\ny = torch.searchsorted(classes, y)  # labels 0..C-1\n" + snippet)


@strategy("loss.shape_mismatch")
def reshape_targets(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    rows = _rows(trial)
    if rows is None:
        return
    X, y, X_val, y_val = rows
    out = _output(trial, X)
    if out is None or out.shape[1:] == y.shape[1:] or out[0].numel() != y[0].numel():
        return
    shape = tuple(out.shape[1:])
    def reshape(t):
        return t.reshape(len(t), *shape)
    changed = _with_rows(trial, X, reshape(y), X_val, reshape(y_val) if y_val is not None else None,
                         relabel=_then(trial.relabel, reshape))
    yield Attempt(changed, f"Targets reshaped from {tuple(y.shape[1:]) or '(N,)'} to the output's {shape} per row, so "
                  "the loss compares row with row instead of broadcasting.",
                  f"loss = loss_fn(model(x), y.view({', '.join(['-1', *map(str, shape)])}))")


# the model's output ------------------------------------------------------------------------

@strategy("output.activation_mismatch")
def remove_final_activation(trial: Trial, finding: Finding, ctx: Context) -> Iterator[Attempt]:
    path = finding.where if isinstance(finding.where, str) else None  # a module path, or "Net.forward()"
    if not path or path == "model" or loss_kind(trial.loss_fn) in ("bce", "nll"):
        return
    fresh = copy.deepcopy(trial.model)
    try:
        parent = fresh.get_submodule(path.rsplit(".", 1)[0]) if "." in path else fresh
        old = fresh.get_submodule(path)
    except AttributeError:
        return
    setattr(parent, path.rsplit(".", 1)[-1], nn.Identity())
    yield Attempt(trial.replace(model=fresh), f"The final `{path}` ({type(old).__name__}) removed: the loss gets raw "
                  "outputs, as it expects.", f"{_code_ref(path)} = nn.Identity()  # or delete it from the model")


def _code_ref(path: str) -> str:
    return "model" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in path.split("."))


# fixes that need the user's own code -------------------------------------------------------

CODE_FIXES = {
    "loop.missing_zero_grad": "optimizer.zero_grad()  # once per step, before loss.backward()",
    "loop.eval_mode": "model.train()  # before the training steps; model.eval() only around validation",
    "grad.zero": "# replace the non-differentiable op (round, sign, argmax, a comparison) in forward(),\n"
                 "# e.g. a straight-through estimator: x = x + (torch.round(x) - x).detach()",
    "grad.none": "# use the parameters in forward(), or freeze them on purpose:\n"
                 "# module.requires_grad_(False); remove .detach()/.data/torch.no_grad() on the loss path",
    "loss.nonfinite": "# guard the op named in the evidence, e.g. torch.log(x.clamp_min(1e-8)), torch.sqrt(x.clamp_min(0))",
}


def code_fix(finding: Finding) -> str:
    """The code the user should write for a finding no strategy can repair from outside."""
    return CODE_FIXES.get(finding.code) or "# " + (finding.fix or REGISTRY[finding.code].fix)

