"""Checks of the model and the loss, from the structure and the one batch traced through a copy."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..findings import Finding
from .case import Case
from .losses import BINARY, CLASSIFICATION, REGRESSION, run_loss, unweighted
from .structure import WEIGHT_LAYERS, Event, code_ref

RELU_LIKE = {"relu", "leaky_relu", "relu6", "elu", "gelu", "silu", "mish", "prelu", "rrelu", "celu", "hardswish"}
NORM_OPS = {"batch_norm", "layer_norm", "group_norm", "instance_norm"}
# the values each final activation can produce: targets outside them are unreachable
RANGES = {"relu": (0, math.inf), "relu6": (0, 6), "softplus": (0, math.inf), "sigmoid": (0, 1),
          "hardsigmoid": (0, 1), "softmax": (0, 1), "tanh": (-1, 1), "hardtanh": (-1, 1),
          "elu": (-1, math.inf), "selu": (-1.7581, math.inf), "logsigmoid": (-math.inf, 0),
          "log_softmax": (-math.inf, 0)}
SQUASHING = {"sigmoid", "softmax", "tanh", "hardtanh", "hardsigmoid"}


def _where(c: Case, event: Event) -> tuple[str, str]:
    """(where, how to name it in a sentence) for a module or a functional call."""
    if event.kind == "module":
        return event.name, f"the final `{event.name}` ({type(event.module).__name__}, `{code_ref(event.name)}` in code)"
    forward = f"{type(c.model).__name__}.forward()"
    return forward, f"the `{event.op}` call at the end of `{forward}`"


def check_output_activation(c: Case) -> Finding | None:
    """The last activation must produce what the loss expects: logits for CrossEntropyLoss and
    BCEWithLogitsLoss, probabilities for BCELoss, log-probabilities for NLLLoss, and for
    regression a range that holds the targets."""
    if c.trace is None or c.out is None:
        return None
    act, out, kind = c.trace.final_activation(), c.out, c.kind
    op = act.op if act else None
    where, named = _where(c, act) if act else ("model", "the model's output")
    evidence = {"final_activation": op, "loss": kind, "output_min": float(out.min()), "output_max": float(out.max())}
    if kind == "cross_entropy" and (op in SQUASHING or (op is None and _looks_like_probabilities(out))):
        return Finding.make(
            "output.activation_mismatch",
            f"`nn.CrossEntropyLoss` applies log-softmax itself, but {named} already squashes the outputs into "
            f"[{evidence['output_min']:.2g}, {evidence['output_max']:.2g}], so the loss can barely move.",
            evidence=evidence, where=where,
            fix=f"`nn.CrossEntropyLoss` expects raw logits: remove {named} (apply softmax only when you need probabilities at inference).")
    if kind == "cross_entropy" and op == "log_softmax":
        return Finding.make(
            "output.activation_mismatch",
            f"{named[0].upper() + named[1:]} is redundant before `nn.CrossEntropyLoss`, which applies log-softmax itself "
            "(harmless: log-softmax of log-probabilities changes nothing).",
            evidence=evidence, where=where, severity="info",
            fix=f"Remove {named}, or keep it and use `nn.NLLLoss()`.")
    if kind == "bce_logits" and op in SQUASHING:
        return Finding.make(
            "output.activation_mismatch",
            f"`nn.BCEWithLogitsLoss` applies a sigmoid itself, but {named} already squashes the outputs into "
            f"[{evidence['output_min']:.2g}, {evidence['output_max']:.2g}].",
            evidence=evidence, where=where,
            fix=f"`nn.BCEWithLogitsLoss` expects raw logits: remove {named}.")
    if kind == "bce" and op not in ("sigmoid", "softmax", "hardsigmoid") and not (0 <= float(out.min()) and float(out.max()) <= 1):
        return Finding.make(
            "output.activation_mismatch",
            f"`nn.BCELoss` needs probabilities in [0, 1] but the outputs range over "
            f"[{evidence['output_min']:.3g}, {evidence['output_max']:.3g}] with no sigmoid at the end.",
            evidence=evidence, where=where,
            fix="Use `nn.BCEWithLogitsLoss()` on the raw outputs (numerically safer than adding `nn.Sigmoid()` at the end).")
    if kind == "nll" and not _looks_like_log_probabilities(out) and not c.has("output.softmax_wrong_dim"):
        told = f"{named} gives probabilities, not log-probabilities" if op == "softmax" else "the outputs are not log-probabilities"
        return Finding.make(
            "output.activation_mismatch",
            f"`nn.NLLLoss` expects log-probabilities but {told} (log-sum-exp {float(out.logsumexp(1).mean()):.3g} instead of 0).",
            evidence=evidence, where=where,
            fix="End the model with `nn.LogSoftmax(dim=1)` instead, or drop the final activation and use `nn.CrossEntropyLoss()`.")
    if kind in REGRESSION and op in RANGES and c.y is not None and c.y.is_floating_point():
        lo, hi = RANGES[op]
        outside = float(((c.y < lo) | (c.y > hi)).double().mean())
        if outside > 0.01:  # more than 1% of the targets can never be reached (and get no gradient there)
            return Finding.make(
                "output.activation_mismatch",
                f"{named[0].upper() + named[1:]} limits the outputs to [{lo:g}, {hi:g}] but {outside:.0%} of the regression "
                f"targets lie outside it (they range over [{float(c.y.min()):.3g}, {float(c.y.max()):.3g}]).",
                evidence={**evidence, "target_min": float(c.y.min()), "target_max": float(c.y.max()), "outside_fraction": outside},
                where=where, fix=f"Remove {named}: a regression head should be linear.")
    return None


def _looks_like_probabilities(out: torch.Tensor) -> bool:
    """Softmax applied somewhere we could not see: non-negative rows that sum to 1."""
    return out.dim() >= 2 and out.shape[1] > 1 and bool((out >= 0).all()) and \
        bool(torch.allclose(out.sum(1), torch.ones(()), atol=1e-4))


def _looks_like_log_probabilities(out: torch.Tensor) -> bool:
    return out.dim() >= 2 and bool((out <= 1e-6).all()) and bool((out.logsumexp(1).abs() < 1e-3).all())


def check_loss_shapes(c: Case) -> Finding | None:
    """Elementwise losses (MSE, L1, BCE) broadcast mismatched shapes: (N, 1) against (N,) compares
    every output with every target, an N x N loss that trains toward the mean."""
    if c.out is None or c.yb is None or c.kind not in REGRESSION | BINARY or c.out.shape == c.yb.shape:
        return None
    out, y = tuple(c.out.shape), tuple(c.yb.shape)
    try:
        broadcast = tuple(torch.broadcast_shapes(out, y))
    except RuntimeError:
        broadcast = None
    how = f"the loss raises ({c.loss_error})" if c.loss_error is not None or broadcast is None \
        else f"they broadcast to {broadcast} without an error"
    if out == y + (1,):
        fix = "Squeeze the output: `loss_fn(model(x).squeeze(-1), y)` (or give the targets the output's shape, `y.view(-1, 1)`)."
    elif y == out + (1,):
        fix = "Squeeze the targets: `y = y.squeeze(-1)`."
    else:
        fix = "Make the output and the target the same shape (e.g. `y.view_as(output)`, or change the output layer's width)."
    return Finding.make(
        "loss.shape_mismatch",
        f"The output has shape {out} and the target {y}: {how}.",
        evidence={"output_shape": list(out), "target_shape": list(y), "broadcast_shape": list(broadcast) if broadcast else None},
        where="loss_fn", fix=fix)


def check_loss_error(c: Case) -> Finding | None:
    """The loss raised on the first batch: name the cause instead of crashing."""
    err = c.loss_error
    if err is None or c.has("data.labels_out_of_range", "output.activation_mismatch", "loss.shape_mismatch"):
        return None
    text = f"{type(err).__name__}: {err}".strip()[:300]
    shapes = {"output_shape": list(c.out.shape), "target_shape": list(c.yb.shape),
              "output_dtype": str(c.out.dtype), "target_dtype": str(c.yb.dtype), "error": text}
    if isinstance(err, IndexError) or "out of bounds" in str(err):
        return Finding.make("data.labels_out_of_range", f"The loss raised on the labels: {text}.", evidence=shapes,
                            where="train_data targets")
    if "between 0 and 1" in str(err):
        code = "data.labels_out_of_range" if "target" in str(err) else "output.activation_mismatch"
        return Finding.make(code, f"The loss raised: {text}.", evidence=shapes, where="loss_fn")
    if "dtype" in str(err) and c.kind in CLASSIFICATION and c.yb.is_floating_point():
        fix = "Pass class indices as integers: `y = y.long()`."
    elif c.kind in CLASSIFICATION:
        fix = ("CrossEntropyLoss/NLLLoss take outputs (N, C) and integer targets (N,): "
               "reshape them, e.g. `loss_fn(out.view(-1, C), y.view(-1))`.")
    else:
        fix = None
    return Finding.make("loss.shape_mismatch",
                        f"The loss raised on output {tuple(c.out.shape)} ({c.out.dtype}) and target "
                        f"{tuple(c.yb.shape)} ({c.yb.dtype}): {text}.", evidence=shapes, where="loss_fn", fix=fix)


def check_symmetric(c: Case) -> Finding | None:
    """Units whose incoming weights are identical compute the same thing and get the same update:
    they never become different. The output layer is exempt: zero-initializing it
    is a sound practice, since the layers below already differ."""
    if c.trace is None:
        return None
    last = c.trace.layers[-1].module if c.trace.layers else None
    seen, stuck = set(), []
    for e in c.trace.modules:
        m = e.module
        if id(m) in seen or m is last or not isinstance(m, WEIGHT_LAYERS + (nn.RNNBase, nn.Embedding)):
            continue
        seen.add(id(m))
        spread = _row_spread(m)
        if spread is not None and spread < 1e-6:  # float32 rounding level; random rows differ by ~1
            stuck.append((e.name, m, spread))
    if not stuck:
        return None
    name, m, spread = stuck[0]
    w = next(p for n, p in m.named_parameters() if n.startswith("weight"))
    value = float(w.detach().flatten()[0])
    rows = w.shape[0]
    return Finding.make(
        "init.symmetric",
        f"All {rows} rows of `{name}` start identical (every weight {value:.3g}): its units compute the same "
        f"thing, get the same update and act as one unit" + ("." if len(stuck) == 1 else
                                                           "; so does 1 more layer." if len(stuck) == 2 else
                                                           f"; so do {len(stuck) - 1} more layers."),
        evidence={"layers": [n for n, _, _ in stuck], "row_spread": [s for _, _, s in stuck], "rows": rows, "value": value},
        where=[n for n, _, _ in stuck],
        fix="Use a random init: " + "; ".join(f"`{code_ref(n)}.reset_parameters()`" for n, _, _ in stuck[:4])
            + " (PyTorch's default)" + (", or `nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')` for layers before a ReLU."
                                         if any(isinstance(m, WEIGHT_LAYERS) for _, m, _ in stuck) else "."))


def _row_spread(m: nn.Module) -> float | None:
    """How much the units' incoming weights differ, relative to their size (0 = identical rows).
    Biases are left out: units with identical weights see one and the same projection of the
    input whatever their offsets, so the layer passes a single direction on."""
    mats = [p.detach().reshape(p.shape[0], -1).double() for n, p in m.named_parameters(recurse=False)
            if n.startswith("weight") and p.dim() >= 2 and p.shape[0] > 1]
    if not mats:
        return None
    spreads = [float((w - w.mean(0)).norm() / w.norm().clamp_min(1e-30)) if w.norm() > 0 else 0.0 for w in mats]
    return max(spreads)


GROWTH_LIMIT = 16.0  # the signal grown 16x (256x in variance) beyond the preserving scale by the last hidden layer


def check_init_scale(c: Case) -> Finding | None:
    """Measured, not assumed: on one batch, how much each Linear/Conv layer's weights scale the
    input-dependent signal, against what preserves it for the activation that follows (sqrt 2
    before ReLU-like units, as He init gives; 1 otherwise, as Xavier/LeCun give). PyTorch's
    default init gives about 0.4-0.6 of that, which is fine; a geometric mean beyond 4x either
    way (16x in variance, per layer) makes the signal explode or vanish within a few layers.
    Layers followed directly by a normalization are exempt: it resets the scale. So is the output
    layer (often zero-initialized on purpose); its scale shows in the loss at init."""
    if c.trace is None or len(c.trace.layers) < 2:
        return None
    rows = []
    for layer in c.trace.layers[:-1]:  # hidden layers: the output layer's scale is loss.init_mismatch's
        following = c.trace.next_op(layer.event)
        if following in NORM_OPS or layer.signal_in == 0 or (_row_spread(layer.module) or 0) < 1e-6:
            continue  # normalized right after, fed nothing, or symmetric (init.symmetric's business)
        target = math.sqrt(2) if following in RELU_LIKE else 1.0
        w = layer.module.weight.detach()
        fan_in = w[0].numel()
        rows.append({"layer": layer.name, "gain": layer.gain, "target_gain": target,
                     "ratio": layer.gain / target, "weight_std": float(w.std()),
                     "he_std": math.sqrt(2 / fan_in), "xavier_std": math.sqrt(2 / (fan_in + w.shape[0])),
                     "activation": following or None})
    if not rows:
        return None
    logs = [math.log(max(r["ratio"], 1e-30)) for r in rows]
    geo = math.exp(sum(logs) / len(rows))
    compounded = math.exp(sum(logs))
    # growth compounds into an explosion even when each layer is only a little too large; PyTorch's
    # default init errs the other way (0.4-0.6 per layer) and trains fine, so shrinking is judged per layer
    if 0.25 <= geo <= 4 and compounded <= GROWTH_LIMIT:
        return None
    total = c.trace.layers[-1].signal_out / max(c.trace.layers[0].signal_in, 1e-30)
    off = [r for r in rows if not 0.25 <= r["ratio"] <= 4] or rows
    relu = sum(r["activation"] in RELU_LIKE for r in rows) * 2 >= len(rows)
    init = "nn.init.kaiming_normal_(m.weight, nonlinearity='relu')" if relu else \
        "nn.init.xavier_normal_(m.weight, gain=nn.init.calculate_gain('tanh'))"
    worst = off[0]
    direction = "grows" if geo > 1 else "shrinks"
    return Finding.make(
        "init.scale_mismatch",
        f"At init the signal {direction} {max(geo, 1 / geo):.3g}x per layer beyond the variance-preserving scale "
        f"({total:.3g}x through {len(c.trace.layers)} layers): `{worst['layer']}` has weight std {worst['weight_std']:.3g} "
        f"where {'He' if relu else 'Xavier'} gives {worst['he_std' if relu else 'xavier_std']:.3g}.",
        evidence={"per_layer_ratio_geomean": geo, "compounded_ratio": compounded, "signal_change_total": total,
                  "layers": rows},
        where=[r["layer"] for r in off],
        fix=f"Re-initialize the weight layers for their activation: `for m in model.modules(): "
            f"if isinstance(m, (nn.Linear, nn.Conv2d)): {init}; nn.init.zeros_(m.bias)` "
            f"(or `m.reset_parameters()` for PyTorch's default).")


RECURRENT_RADIUS = 1.5  # the hidden state's growth per time step at init: 1.5^20 = 3e3 over 20 steps


def check_recurrent_scale(c: Case) -> Finding | None:
    """A vanilla RNN multiplies its hidden state by W_hh at every time step, so the spectral
    radius of W_hh compounds over the sequence: well above 1 the state explodes (ReLU) or pins
    tanh at ±1, from the first forward pass. PyTorch's default gives ~0.58, an orthogonal or
    identity init (IRNN) exactly 1; both train. Gated cells (LSTM/GRU) are left out: their gates
    decide the growth, not W_hh alone."""
    rows = []
    for name, module in c.model.named_modules():
        if type(module) is not nn.RNN:
            continue
        for layer in range(module.num_layers):
            w = getattr(module, f"weight_hh_l{layer}").detach().double().cpu()
            radius = float(torch.linalg.eigvals(w).abs().max())
            if radius > RECURRENT_RADIUS:
                rows.append({"weight": f"{name}.weight_hh_l{layer}", "spectral_radius": radius,
                             "nonlinearity": module.nonlinearity})
    if not rows:
        return None
    worst = max(rows, key=lambda r: r["spectral_radius"])
    effect = "explodes" if worst["nonlinearity"] == "relu" else "saturates tanh at ±1"
    return Finding.make(
        "init.scale_mismatch",
        f"`{worst['weight']}` has spectral radius {worst['spectral_radius']:.3g}: the hidden state is multiplied by "
        f"up to that much per time step, so it {effect} within a few steps (the default init gives ~0.6, an "
        f"orthogonal one 1).",
        evidence={"recurrent": rows}, where=[r["weight"] for r in rows],
        fix="Re-initialize the recurrent weights: `nn.init.orthogonal_(rnn.weight_hh_l0)` (each layer), or "
            "`rnn.reset_parameters()` for PyTorch's default; then clip gradients for long sequences.")


def check_init_loss(c: Case) -> Finding | None:
    """Karpathy's 'verify loss @ init': with small random outputs the loss starts at ln C for
    C-class cross-entropy (ln 2 per binary target) and at the target variance for MSE. Far above
    means confident wrong guesses (too large a last layer) or an output offset from the targets."""
    if c.loss0 is None or c.has("output.activation_mismatch", "data.labels_out_of_range", "loss.shape_mismatch",
                                "output.softmax_wrong_dim"):  # a softmax over the batch starts at ln N, not ln C
        return None
    if not math.isfinite(c.loss0):
        return None  # a NaN/Inf at init is loss.nonfinite's, with the module that produced it
    loss0 = c.loss0
    plain = unweighted(c.loss_fn)
    if plain is not c.loss_fn:  # class weights put a batch's few minority rows in charge of the mean
        value, _ = run_loss(plain, c.out, c.yb)
        loss0 = float(value) if value is not None and math.isfinite(float(value)) else loss0
    y = c.yb.double()
    if c.kind in CLASSIFICATION and c.n_outputs and c.n_outputs > 1:
        expected, label, limit = math.log(c.n_outputs), f"ln {c.n_outputs}, uniform guessing over {c.n_outputs} classes", 1.5
    elif c.kind in BINARY:
        expected, label, limit = math.log(2), "ln 2, a 50/50 guess", 1.5
    elif c.kind == "mse":
        expected, label, limit = float(y.var(unbiased=False)), "the target variance", 3.0
    elif c.kind in ("l1", "huber"):
        expected, label, limit = float((y - y.median()).abs().mean()), "the mean absolute deviation of the targets", math.sqrt(3)
    else:
        return None
    # limits: 1.5x ln C is logits with std ~1.5 at init; 3x the variance (sqrt 3 for L1) an output
    # error twice the target spread
    if expected <= 0 or loss0 <= limit * expected:
        return None
    ref = code_ref(c.head)
    if not c.trace.layers:
        fix = None  # no Linear/Conv head to name: the registry's general advice
    elif c.kind in REGRESSION:
        fix = (f"Start the head at the target mean: `with torch.no_grad(): {ref}.bias.fill_({float(y.mean()):.3g}); "
               f"{ref}.weight.mul_(0.1)` (or standardize the targets).")
    else:
        fix = f"Shrink the last layer so the first guesses are near uniform: `with torch.no_grad(): {ref}.weight.mul_(0.1); {ref}.bias.zero_()`."
    return Finding.make(
        "loss.init_mismatch",
        f"The loss at init is {loss0:.3g}, {loss0 / expected:.3g}x the {expected:.3g} expected ({label}).",
        evidence={"initial_loss": loss0, "expected": expected, "ratio": loss0 / expected,
                  "output_std": float(c.out.double().std()) if c.out.numel() > 1 else 0.0},
        where=c.head if c.trace.layers else "model", fix=fix)


def check_depth(c: Case) -> Finding | None:
    """Beyond ~10 weight layers, a plain stack (no normalization, no skip connection) attenuates
    signal and gradients geometrically and becomes hard to train (3-8 layers is the safe start)."""
    if c.trace is None:
        return None
    depth = len(c.trace.layers)
    if depth <= 10 or c.trace.norms or c.trace.residual_adds:
        return None
    hidden = [c.trace.next_op(l.event) for l in c.trace.layers[:-1]]
    activations = {op: hidden.count(op) for op in dict.fromkeys(hidden) if op}
    return Finding.make(
        "arch.too_deep",
        f"{depth} weight layers in a plain stack, with no normalization layer and no skip connection.",
        evidence={"depth": depth, "norm_layers": 0, "residual_adds": 0, "activations": activations},
        where=[l.name for l in c.trace.layers],
        fix="Start with 3-8 layers; to go deeper add `nn.BatchNorm1d(width)` (or `nn.LayerNorm(width)`) after each "
            "`nn.Linear`, and residual connections `x = x + block(x)`.")


def check_bottleneck(c: Case) -> Finding | None:
    """A hidden layer narrower than the number of outputs cannot carry what the output needs to
    tell apart (an autoencoder's code layer, targets = inputs, is narrow on purpose)."""
    if c.trace is None or not c.trace.layers or c.n_outputs is None or c.n_outputs < 2:
        return None
    if c.X is not None and c.y is not None and c.X.shape == c.y.shape:
        return None
    hidden = [(l.name, l.module, l.width) for l in c.trace.layers[:-1] if isinstance(l.module, nn.Linear)]
    hidden += [(e.name, e.module, e.module.hidden_size) for e in c.trace.modules if isinstance(e.module, nn.RNNBase)]
    narrow = [h for h in hidden if h[2] < c.n_outputs]
    if not narrow:
        return None
    name, module, width = min(narrow, key=lambda h: h[2])
    C, wide = c.n_outputs, max(4 * c.n_outputs, 64)
    if isinstance(module, nn.Linear):
        fix = f"Widen `{code_ref(name)}`: `nn.Linear({module.in_features}, {wide})`, and give the next layer `in_features={wide}`."
    else:
        fix = f"Widen `{code_ref(name)}`: `hidden_size={wide}`, and give the next layer `in_features={wide}`."
    return Finding.make(
        "arch.bottleneck",
        f"`{name}` narrows the signal to {width} units, fewer than the {C} outputs it must tell apart.",
        evidence={"layer": name, "width": width, "outputs": C, "hidden_widths": [h[2] for h in hidden]},
        where=name, fix=fix)
