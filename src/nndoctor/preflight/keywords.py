"""The first-step checks of a model called with keyword inputs (Hugging Face style:
`model(input_ids=..., attention_mask=..., labels=...)` returning an output with `.loss` and
`.logits`). There is no one input tensor to trace and no loss function to replay, so only
what the captured call itself shows is judged: padding counted in the labels, the model's own
cross-entropy at init against ln(vocabulary), and the init checks that need only the parameters.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from ..findings import Finding
from ..names import module_types, name_modules
from .case import Case
from .graph_checks import padding_finding, padding_share
from .model_checks import check_recurrent_scale
from .structure import code_ref

IGNORE = -100        # the ignore index of every Hugging Face loss and collator
INIT_LOSS_LIMIT = 1.5  # as check_init_loss: 1.5x ln V is logits with std ~1.5 at init


def examine_keywords(captured) -> tuple[list[Finding], list[str], dict]:
    """(findings, notes, meta) of the checks a keyword call allows (run under `hands_off`)."""
    start = time.perf_counter()
    model, kw, result = captured.model, captured.keywords, captured.result or {}
    labels = kw.get("labels")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
        labels = None
    notes: list[str] = []
    found = [_padding(model, labels, kw),
             _init_loss(model, labels, kw, result, notes), check_recurrent_scale(Case(model=model, data=None))]
    findings = [f for f in found if f is not None]
    notes.append(f"The model was called with keyword inputs ({', '.join(sorted(kw))}): the first-step checks that "
                 "trace one input tensor through a copy (output activation, init scale and symmetry, depth, the "
                 "overfit and no-signal tests) were skipped.")
    meta = {"checkup": {"seconds": round(time.perf_counter() - start, 3), "model": type(model).__name__,
                        "loss": "the model's own", "at": "first training step", "inputs": sorted(kw)},
            "model": type(model).__name__, "module_types": module_types(model)}
    name_modules(findings, meta["module_types"])
    # the capture's notes say why no loss outside the model was found: moot when the model made its own
    return findings, notes + ([] if "loss" in result else captured.notes), meta


def _padding(model, labels, kw: dict) -> Finding | None:
    """How many of the labels the loss counts (not -100) are padding: where the attention mask
    of the labels' sequence is 0 (an encoder-decoder's is the decoder's), else where the label
    is the config's pad id. Token labels only: one label per sequence equal to the pad id is a class."""
    if labels is None or labels.dim() < 2:
        return None
    config = getattr(model, "config", None)
    mask = kw.get("decoder_attention_mask" if getattr(config, "is_encoder_decoder", False) else "attention_mask")
    mask = mask if isinstance(mask, torch.Tensor) else None
    pad, eos = getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)
    found = padding_share(labels, IGNORE, attention_mask=mask, pad_id=pad if isinstance(pad, int) else None,
                          eos_id=eos if isinstance(eos, int) else None)
    if found is None:
        return None
    how = "the attention mask is 0 there" if mask is not None and mask.shape == labels.shape \
        else f"label = the config's pad_token_id {pad}"
    return padding_finding(*found, IGNORE, how, "labels")


def _init_loss(model, labels, kw: dict, result: dict, notes: list[str]) -> Finding | None:
    """Karpathy's 'verify loss @ init' for a language model: its own cross-entropy over a
    vocabulary of V tokens starts at ln V. Judged only when the model's loss is that
    cross-entropy of its logits against the labels (a causal LM's shifted by one, or not;
    a mean, or a sum over the Trainer's `num_items_in_batch`): a label-smoothed or custom loss
    matches neither and is left alone."""
    loss, logits = result.get("loss"), result.get("logits")
    if labels is None or not isinstance(loss, torch.Tensor) or loss.numel() != 1 \
            or not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() < 2:
        notes.append("loss.init_mismatch was not judged at the first step: the call gave no labels, or its output "
                     "no `loss` and `logits`.")
        return None
    vocab, value = logits.shape[-1], float(loss)
    counted = labels[labels != IGNORE]
    if vocab < 2 or not counted.numel() or int(counted.min()) < 0 or int(counted.max()) >= vocab:
        notes.append(f"loss.init_mismatch was not judged at the first step: the labels are not token ids of the "
                     f"logits' {vocab} entries.")
        return None
    if not math.isfinite(value):
        return None  # a NaN/Inf at init is loss.nonfinite's
    mean = _own_cross_entropy(logits, labels, value, kw.get("num_items_in_batch"))
    if mean is None:
        notes.append("loss.init_mismatch was not judged at the first step: the model's loss is not the plain "
                     "cross-entropy of its logits against the labels (label smoothing or a loss of its own).")
        return None
    expected = math.log(vocab)
    if mean <= INIT_LOSS_LIMIT * expected:
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    where = next((n for n, m in model.named_modules() if m is head and n), "model")
    std = getattr(getattr(model, "config", None), "initializer_range", 0.02)
    fix = None if where == "model" else \
        (f"Start the output head small so the first guesses are near uniform, as the model's own init does "
         f"(the config's initializer_range): `with torch.no_grad(): torch.nn.init.normal_({code_ref(where)}.weight, "
         f"std={std:g})`.")
    return Finding.make(
        "loss.init_mismatch",
        f"The loss at init is {mean:.3g}, {mean / expected:.3g}x the {expected:.3g} expected (ln {vocab}, uniform "
        f"guessing over the {vocab} {'tokens of the vocabulary' if labels.dim() >= 2 else 'classes'}).",
        evidence={"initial_loss": mean, "expected": expected, "ratio": mean / expected, "vocabulary": vocab,
                  "tokens_counted": int(counted.numel()), "output_std": float(logits.double().std())},
        where=where, fix=fix)


def _own_cross_entropy(logits, labels, loss: float, items) -> float | None:
    """The mean cross-entropy per counted token, when the model's loss is it (or its sum over
    `items` tokens), shifted by one position (causal LM) or not; else None."""
    logits = logits.float()
    counts = [float(items)] if isinstance(items, (int, float)) or isinstance(items, torch.Tensor) and items.numel() == 1 else []
    pairs = [(logits, labels)]
    if labels.dim() >= 2 and logits.dim() == labels.dim() + 1:
        pairs.append((logits[..., :-1, :], labels[..., 1:]))
    for out, target in pairs:
        if out.shape[:-1] != target.shape:
            continue
        total = F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1), ignore_index=IGNORE,
                                reduction="sum")
        n = int((target != IGNORE).sum())
        if any(k > 0 and abs(float(total) / k - loss) <= 1e-4 * max(1.0, abs(loss)) for k in [n, *counts]):
            return float(total) / n
    return None
