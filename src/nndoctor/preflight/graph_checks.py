"""Checks of how the output and the loss are built, from the loss's autograd graph (graph.py):
a softmax over the batch, a log of a probability, padding counted in a sequence loss, and a
zero-derivative op (round, sign) that leaves parameters with an exactly-zero gradient.

The graph is taken from the probe copy on two batch sizes: an axis of a softmax whose size
follows the batch size is the batch axis, whatever the layout ((N, C), (N, T, C), (T, N, C)),
and an axis that merely happens to be as long as the batch is not mistaken for it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..findings import Finding
from .case import Case
from .graph import LossGraph, Normalizer, read
from .losses import run_loss

PADDING_SHARE = 0.05  # padding in 5% or more of the targets the loss counts (see docs/rules.md)


def loss_graphs(c: Case) -> list[LossGraph | None] | None:
    """The loss's graph on the traced batch and on its first half (None when the loss has no graph)."""
    if c.probe is None or c.xb is None or c.loss_error is not None:
        return None
    graphs = []
    for rows in (len(c.xb), len(c.xb) // 2):
        if rows < 2:
            graphs.append(None)
            continue
        with torch.enable_grad():
            out = c.probe(c.xb[:rows])
            out = out if isinstance(out, torch.Tensor) else next((t for t in out if isinstance(t, torch.Tensor)), None)
            value, _ = run_loss(c.loss_fn, out, c.yb[:rows]) if out is not None else (None, None)
        graphs.append(read(value) if isinstance(value, torch.Tensor) else None)
    if graphs[0] is None or not graphs[0].nodes:
        return None
    return graphs


def batch_axes(full: Normalizer, half: Normalizer | None, rows: int) -> set[int]:
    """Axes of the normalizer's result that follow the batch size (two passes), or, with one
    pass, the axis as long as the batch when exactly one is."""
    shape = tuple(full.result.shape)
    if half is not None and half.result is not None and half.op == full.op and half.result.dim() == len(shape):
        return {d for d, (a, b) in enumerate(zip(shape, half.result.shape)) if a != b}
    same = [d for d, n in enumerate(shape) if n == rows]
    return set(same) if len(same) == 1 else set()


def wrong_normalizers(full: LossGraph, half: LossGraph | None, rows: int) -> list[tuple[Normalizer, set[int]]]:
    """The softmax/log_softmax calls taken over a batch axis."""
    pairs = half.normalizers if half is not None and len(half.normalizers) == len(full.normalizers) else None
    wrong = []
    for i, n in enumerate(full.normalizers):
        if n.result is None or n.result.dim() == 0:
            continue
        axes = batch_axes(n, pairs[i] if pairs else None, rows)
        if n.dim % n.result.dim() in axes:
            wrong.append((n, axes))
    return wrong


def normalizer_evidence(n: Normalizer, axes: set[int]) -> dict:
    """Sums along the axis taken (1 by construction) against sums per row, which should be 1."""
    p = n.result.detach().double()
    p = p.exp() if n.op == "log_softmax" else p
    dim = n.dim % p.dim()
    evidence = {"op": n.op, "dim": n.dim, "shape": list(p.shape), "batch_axes": sorted(axes)}
    others = [d for d in range(p.dim()) if d not in axes]
    if others:
        per_row = p.sum(others[-1])  # over the axis meant: the last one that is not the batch's
        evidence.update(row_sum_min=float(per_row.min()), row_sum_max=float(per_row.max()),
                        class_axis=others[-1])
    evidence["sum_along_dim"] = float(p.sum(dim).mean())
    return evidence


def check_softmax_dim(c: Case) -> Finding | None:
    """A softmax/log_softmax over the batch axis couples the rows: each row's 'probabilities'
    depend on the other rows of the batch and do not sum to 1 per row."""
    graphs = c.graphs
    if not graphs:
        return None
    wrong = wrong_normalizers(*graphs, rows=len(c.xb))
    if not wrong:
        return None
    n, axes = wrong[0]
    evidence = normalizer_evidence(n, axes)
    rows = ("; the rows sum to " + f"{evidence['row_sum_min']:.3g}..{evidence['row_sum_max']:.3g} instead of 1"
            if "row_sum_min" in evidence else "")
    meant = evidence.get("class_axis", -1)
    return Finding.make(
        "output.softmax_wrong_dim",
        f"A `{n.op}(dim={n.dim})` on a {tuple(evidence['shape'])} tensor normalizes over the batch axis: each "
        f"column sums to 1 across the batch{rows}, so each row's scores depend on the other rows.",
        evidence=evidence, where=f"{type(c.model).__name__}.forward() or the loss",
        fix=f"Normalize over the class axis: `{n.op}(x, dim={-1 if meant in (-1, len(evidence['shape']) - 1) else meant})` "
            f"(`nn.{'Softmax' if n.op == 'softmax' else 'LogSoftmax'}(dim=...)` alike; never rely on the implicit dim).")


def check_unstable_log(c: Case) -> Finding | None:
    """log(softmax(x)) and log(sigmoid(x)) are -inf as soon as the probability underflows to 0
    (a logit gap beyond ~100 in float32, ~11 in float16); the fused forms never are."""
    graphs = c.graphs
    if not graphs or not graphs[0].unstable_logs:
        return None
    logs = graphs[0].unstable_logs
    hard = [u for u in logs if not u.pattern.startswith("BCELoss")]
    found = (hard or logs)[0]
    guarded = any(v in ("add", "clamp", "clampmin") for v in found.via)
    evidence = {"pattern": found.pattern, "via": found.via, "count": len(logs), "guarded_by_epsilon": guarded}
    if found.pattern.startswith("BCELoss"):
        return Finding.make(
            "loss.unstable_log",
            "`nn.BCELoss` is applied to a sigmoid output: its log is clamped at -100, so a confident wrong answer "
            "gets a flat, vanishing gradient instead of a large one.",
            evidence=evidence, where="loss_fn", severity="info",
            fix="Drop the final sigmoid and use `nn.BCEWithLogitsLoss()` on the logits (apply the sigmoid only for predictions).")
    source = "softmax" if "softmax" in found.pattern else "sigmoid"
    how = (" (an epsilon added before the log keeps it finite but caps the loss, and the gradient vanishes for "
           "confident wrong answers)") if guarded else ""
    fused = "`F.log_softmax(x, dim=-1)` with `F.nll_loss`, or `F.cross_entropy` on the logits" if source == "softmax" \
        else "`F.logsigmoid(x)`, or `F.binary_cross_entropy_with_logits` / `nn.BCEWithLogitsLoss` on the logits"
    return Finding.make(
        "loss.unstable_log",
        f"The loss takes `{found.pattern}`{' through ' + ', '.join(found.via) if found.via else ''}: once a "
        f"probability underflows to 0 (a logit gap beyond ~100 in float32) the log is -inf and the gradient NaN{how}.",
        evidence=evidence, where=f"{type(c.model).__name__}.forward() or the loss",
        fix=f"Use the fused, stable form: {fused}.")


def padding_share(labels: torch.Tensor, ignore_index: int | None, *, attention_mask: torch.Tensor | None = None,
                  pad_id: int | None = None, eos_id: int | None = None) -> tuple[float, int] | None:
    """(share of the counted targets that are padding, number counted). Padding is where the
    attention mask is 0, else where the label is the pad id; when the pad id is also the
    end-of-sequence id, the first pad of a run may be a real end of sequence, so only the
    ones after it count."""
    counted = labels != ignore_index if ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
    if attention_mask is not None and attention_mask.shape == labels.shape:
        padding = attention_mask == 0
    elif pad_id is not None:
        padding = labels == pad_id
        if eos_id is not None and eos_id == pad_id and labels.dim() >= 2:
            after = torch.zeros_like(padding)
            after[..., 1:] = padding[..., 1:] & padding[..., :-1]
            padding = after
    else:
        return None
    n = int(counted.sum())
    return (float((counted & padding).sum()) / n, n) if n else None


def padding_finding(share: float, counted: int, ignore_index: int | None, how: str, where: str) -> Finding | None:
    if share < PADDING_SHARE:
        return None
    return Finding.make(
        "data.padding_in_loss",
        f"{share:.0%} of the {counted} targets the loss counts are padding ({how}): the model is trained to "
        f"predict padding and the loss is diluted by it.",
        evidence={"padding_share": share, "targets_counted": counted, "ignore_index": ignore_index, "padding_by": how},
        where=where)


def check_padding_in_loss(c: Case) -> Finding | None:
    """With an `nn.Embedding(padding_idx=p)` in the model, the pad id is known: targets equal to
    p that the loss does not ignore are padding counted in the loss."""
    graphs = c.graphs
    pads = {m.padding_idx for m in c.model.modules() if isinstance(m, nn.Embedding) and m.padding_idx is not None}
    if not graphs or len(pads) != 1 or not graphs[0].targets:
        return None
    pad = pads.pop()
    target, ignore = graphs[0].targets[0]
    if ignore == pad:
        return None
    found = padding_share(target, ignore, pad_id=pad)
    if found is None:
        return None
    return padding_finding(*found, ignore, f"the pad id {pad} of the model's `nn.Embedding(padding_idx={pad})`",
                           "loss_fn")


def check_zero_gradient(c: Case) -> Finding | None:
    """An op with a zero derivative (round, sign, floor) between parameters and the loss: one
    backward on the probe copy shows which parameters get an exactly-zero gradient although the
    loss is not at zero. At the very end of the model that is every parameter, and training
    cannot even start (the run's own rule needs some other gradient to compare with)."""
    graphs = c.graphs
    if not graphs or not graphs[0].flat_ops or graphs[0].loss is None:
        return None
    loss = graphs[0].loss
    named = [(n, p) for n, p in c.probe.named_parameters() if p.requires_grad]
    value = float(loss.detach())
    if not named or not math.isfinite(value) or value == 0:
        return None
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, retain_graph=True)
    zero = [n for (n, _), g in zip(named, grads) if g is not None and not bool(g.ne(0).any())]
    if not zero:
        return None
    ops = "`, `".join(sorted(set(graphs[0].flat_ops)))
    every = len(zero) == sum(g is not None for g in grads)
    who = "Every parameter gets" if every else f"{len(zero)} parameter(s) (e.g. `{zero[0]}`) get"
    return Finding.make(
        "grad.zero",
        f"{who} an exactly-zero gradient on the first batch while the loss is {value:.3g}: `{ops}` between "
        f"them and the loss has a zero derivative" + (", so nothing can learn." if every else "."),
        evidence={"parameters": zero[:20], "count": len(zero), "ops": sorted(set(graphs[0].flat_ops)),
                  "all_parameters": every},
        where=zero[:20])
