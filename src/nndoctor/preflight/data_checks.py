"""Checks of the data itself: values, scales, labels against the loss and the output width,
batch order and class balance. They run on a sample of at most a few thousand rows."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from ..findings import Finding
from .case import Case, class_labels
from .losses import BINARY, CLASSIFICATION, REGRESSION, class_weights, ignore_index

# "/255" is advice for 8-bit pixels: non-negative integers whose maximum is near 255 (a few
# thousand sampled pixels of an image set reach the top of the range). Integer counts or
# codes below it (ages, 0..16 digit intensities) get the general standardization advice.
PIXEL_MAX_NEAR = 224


def check_nonfinite(X: torch.Tensor, y: torch.Tensor, where: str) -> Finding | None:
    """Any NaN/Inf poisons every gradient it touches: one bad value is enough to report."""
    bad_x = nonfinite_rows(X)
    bad_y = nonfinite_rows(y)
    bad = bad_x | bad_y
    if not bad.any():
        return None
    count_x = int((~torch.isfinite(X)).sum()) if X.is_floating_point() else 0
    count_y = int((~torch.isfinite(y)).sum()) if y.is_floating_point() else 0
    first = int(bad.nonzero()[0])
    return Finding.make(
        "data.nonfinite",
        f"{count_x + count_y} NaN/Inf values in {where} ({count_x} in the inputs, {count_y} in the "
        f"targets) spread over {int(bad.sum())} of {len(bad)} rows, the first at row {first}.",
        evidence={"inputs_nonfinite": count_x, "targets_nonfinite": count_y, "rows_affected": int(bad.sum()),
                  "rows": len(bad), "first_row": first},
        where=where,
        fix="Drop the rows (`keep = torch.isfinite(X).flatten(1).all(1) & torch.isfinite(y).reshape(len(y), -1).all(1); "
            "X, y = X[keep], y[keep]`) or impute them, and find where the NaN/Inf come from (a division by zero, a log of 0, a failed parse).")


def nonfinite_rows(t: torch.Tensor) -> torch.Tensor:
    if not t.is_floating_point():
        return torch.zeros(len(t), dtype=torch.bool)
    return ~torch.isfinite(t).reshape(len(t), -1).all(1)


def feature_stats(c: Case) -> dict | None:
    """Per-feature mean and std of float inputs: columns of a table, channels of an image,
    the last axis of a sequence. None for integer inputs (token ids, raw bytes the model converts)."""
    X = c.X
    if X is None or not X.is_floating_point() or len(X) < 2:
        return None
    X = X.reshape(len(X), 1) if X.dim() == 1 else X
    first = c.trace.first_parametric if c.trace is not None else None
    channels_first = X.dim() >= 4 or (X.dim() == 3 and first is not None and isinstance(first.module, nn.Conv1d))
    dim = 1 if channels_first or X.dim() == 2 else -1
    flat = X.movedim(dim, -1).reshape(-1, X.shape[dim]).double()
    return {"mean": flat.mean(0), "std": flat.std(0, unbiased=False), "min": flat.min(0).values,
            "max": flat.max(0).values, "axis": "channel" if channels_first else "feature"}


def check_not_normalized(c: Case) -> Finding | None:
    """Default inits assume inputs of unit scale; far larger or smaller inputs, or features whose
    scales differ by orders of magnitude, make the first layer's signal and gradients lopsided."""
    stats = feature_stats(c)
    if stats is None:
        return None
    first = c.trace.first_parametric if c.trace is not None else None
    if first is not None and isinstance(first.module, nn.modules.batchnorm._BatchNorm):
        c.notes.append(f"Inputs are not checked for normalization: the first layer `{first.name}` is a BatchNorm that normalizes them.")
        return None
    mean, std = stats["mean"], stats["std"]
    varying = std > 1e-12 * float(std.max().clamp_min(1e-300))
    if varying.sum() == 0:
        return None
    mean, std = mean[varying], std[varying]
    # The first layer sees all features at once: at a default init its pre-activation scale is
    # the features' quadratic mean, so one feature in the hundreds (a price, a year) swamps a
    # dozen standardized ones. The median feature tells whether the inputs as a whole are off.
    square = mean ** 2 + std ** 2
    rms = float(square.mean().sqrt())
    spread = float(std.quantile(0.9) / std.quantile(0.1))
    offset = float((mean.abs() / std).median())
    evidence = {"rms": rms, "median_feature_rms": float(square.sqrt().median()), "largest_feature_rms": float(square.max().sqrt()),
                "scale_ratio_p90_p10": spread, "median_abs_mean_over_std": offset,
                "min": float(stats["min"].min()), "max": float(stats["max"].max()),
                "features": int(len(stats["std"])), "axis": stats["axis"]}
    axis = stats["axis"]
    if rms > 5 or rms < 0.01:  # half an order of magnitude above (two below) the unit scale inits assume
        message = (f"Input {axis}s have an RMS of {rms:.3g} instead of about 1 (the largest {axis} "
                   f"{evidence['largest_feature_rms']:.3g}, the median one {evidence['median_feature_rms']:.3g}).")
    elif spread > 100:  # two orders of magnitude between typical large and small feature scales
        message = f"Input {axis} scales differ by {spread:.3g}x (std of the 90th vs the 10th percentile {axis})."
    elif offset > 10:  # features sit ten of their own stds away from zero: a near-constant offset
        message = f"Input {axis}s sit far from zero: the median |mean| is {offset:.3g}x their std."
    else:
        return None
    lo, hi = evidence["min"], evidence["max"]
    if lo >= 0 and PIXEL_MAX_NEAR <= hi <= 255 and bool((c.X == c.X.round()).all()):
        fix = "The inputs look like 8-bit pixels (0..255): scale them with `X = X / 255.0` (then optionally standardize per channel)."
    else:
        dims = "(0, 2, 3), keepdim=True" if axis == "channel" and c.X.dim() == 4 else "0"
        fix = (f"Standardize with statistics of the training split: `mean, std = X.mean({dims}), X.std({dims}).clamp_min(1e-8); "
               "X = (X - mean) / std` (and the same mean/std for validation and test data).")
    return Finding.make("data.not_normalized", message, evidence=evidence, where="train_data inputs", fix=fix)


def check_constant_feature(c: Case) -> Finding | None:
    """Constant features carry no information (info); near-constant ones are harmful, since
    standardizing divides by their ~0 std and blows them up (warning)."""
    stats = feature_stats(c)
    if stats is None or len(stats["std"]) < 2:
        return None
    std = stats["std"]
    constant = (stats["max"] == stats["min"]).nonzero().flatten().tolist()
    typical = float(std[std > 0].median()) if (std > 0).any() else 0.0
    tiny = ((std > 0) & (std < 1e-6 * typical)).nonzero().flatten().tolist()  # float32 noise level
    if not constant and not tiny:
        return None
    axis = stats["axis"]
    evidence = {"constant": constant[:50], "near_constant": tiny[:50], "near_constant_std": [float(std[i]) for i in tiny[:50]],
                "typical_std": typical, "features": len(std), "axis": axis}
    if tiny:
        return Finding.make(
            "data.constant_feature",
            f"{len(tiny)} input {axis}s vary by less than a millionth of the typical std ({typical:.3g}): "
            "standardizing them divides by ~0.",
            evidence=evidence, where=f"{axis}s {tiny[:10]}", severity="warning",
            fix=f"Drop them (`X = X[:, X.std(0) > {1e-6 * typical:.3g}]`) or guard the division: `X.std(0).clamp_min(1e-8)`.")
    return Finding.make(
        "data.constant_feature",
        f"{len(constant)} of {len(std)} input {axis}s are constant (e.g. {axis} {constant[0]}): they carry no information.",
        evidence=evidence, where=f"{axis}s {constant[:10]}",
        fix="Harmless as they are; drop them (`X = X[:, X.std(0) > 0]`) or guard the division when standardizing (`X.std(0).clamp_min(1e-8)`).")


def check_target_scale(c: Case) -> Finding | None:
    """An unscaled linear head starts with outputs of order 1; targets far beyond that make the
    first steps chase the scale with huge losses and gradients."""
    if c.kind not in REGRESSION or c.y is None or not c.y.is_floating_point() or len(c.y) < 2:
        return None
    if c.trace is not None and c.trace.final_activation() is not None:
        return None  # a bounded head is output.activation_mismatch's business
    y = c.y.double()
    mean, std = float(y.mean()), float(y.std())
    scale = max(abs(mean), std)
    if scale <= 10:  # ten times the unit scale of a default-init head's output
        return None
    return Finding.make(
        "data.target_scale",
        f"Regression targets have mean {mean:.3g} and std {std:.3g}, {scale:.3g}x the unit scale a default-init head starts from.",
        evidence={"mean": mean, "std": std, "min": float(y.min()), "max": float(y.max())},
        where="train_data targets",
        fix="Standardize the targets for training: `y_mean, y_std = y.mean(), y.std(); y = (y - y_mean) / y_std`, "
            "and invert at prediction time: `pred * y_std + y_mean`.")


def check_labels_out_of_range(c: Case, y: torch.Tensor | None = None, where: str = "train_data") -> Finding | None:
    """Class indices must lie in 0..C-1 for C outputs; BCE targets in [0, 1]. Anything else makes
    CrossEntropyLoss raise (CPU) or read garbage (GPU), and BCE fit a meaningless target."""
    y = c.y if y is None else y
    C = c.n_outputs
    if y is None or C is None or len(y) == 0:
        return None
    if c.kind in CLASSIFICATION and not y.is_floating_point():
        ignore = ignore_index(c.loss_fn)
        labels = y[y != ignore] if ignore is not None else y.flatten()
        if len(labels) == 0:
            return None
        lo, hi = int(labels.min()), int(labels.max())
        n_bad = int(((labels < 0) | (labels >= C)).sum())
        if not n_bad:
            return None
        if lo == 1 and hi == C:
            fix = "Shift the labels to start at 0: `y = y - 1` (labels 1..C become 0..C-1)."
        elif lo >= 0:
            layer = c.trace.layers[-1].module if c.trace is not None and c.trace.layers else None
            width = f"`nn.Linear({layer.in_features}, {hi + 1})`" if isinstance(layer, nn.Linear) else f"{hi + 1} outputs"
            fix = (f"Make the output layer (`{c.head}`) as wide as the number of classes, {width}, "
                   f"or re-map the labels to 0..{C - 1}: `classes, y = torch.unique(y, return_inverse=True)`.")
        else:
            fix = f"Re-map the labels to 0..{C - 1}: `classes, y = torch.unique(y, return_inverse=True)`."
        return Finding.make(
            "data.labels_out_of_range",
            f"Labels in {where} run from {lo} to {hi} but the model has {C} outputs, so only 0..{C - 1} are valid "
            f"({n_bad} labels out of range).",
            evidence={"label_min": lo, "label_max": hi, "n_outputs": C, "out_of_range": n_bad, "loss": c.kind},
            where=f"{where} targets", fix=fix)
    if c.kind == "cross_entropy" and y.is_floating_point() and y.dim() == 2 and y.shape[1] == C:
        return _check_class_probabilities(c, y, where)
    if c.kind in BINARY:
        yf = y.double()
        lo, hi = float(yf.min()), float(yf.max())
        if lo >= 0 and hi <= 1:
            return None
        values = torch.unique(yf)
        fix = ("Map the targets to 0/1: " + ("`y = (y + 1) / 2` (labels -1/1)." if len(values) == 2 and lo == -1 and hi == 1
                                             else f"`y = (y == {hi:g}).float()`." if len(values) == 2
                                             else "scale them into [0, 1], or use a regression loss for these targets."))
        return Finding.make(
            "data.labels_out_of_range",
            f"Targets in {where} run from {lo:g} to {hi:g}, but {type(c.loss_fn).__name__} needs targets in [0, 1].",
            evidence={"target_min": lo, "target_max": hi, "distinct_values": len(values), "loss": c.kind},
            where=f"{where} targets", fix=fix)
    return None


def _check_class_probabilities(c: Case, y: torch.Tensor, where: str) -> Finding | None:
    """Float (N, C) targets are class probabilities for CrossEntropyLoss: each row in [0, 1] and
    summing to 1. Scaled one-hot rows or raw scores multiply the loss and its gradient by their sum."""
    yf = y.double()
    sums = yf.sum(1)
    bad = (yf < 0).any(1) | (yf > 1).any(1) | ((sums - 1).abs() > 1e-3)
    n_bad = int(bad.sum())
    if not n_bad:
        return None
    lo, hi = float(yf.min()), float(yf.max())
    return Finding.make(
        "data.labels_out_of_range",
        f"CrossEntropyLoss reads float targets in {where} as class probabilities, but {n_bad} of {len(y)} rows are not "
        f"(values {lo:g} to {hi:g}, row sums {float(sums.min()):g} to {float(sums.max()):g}; each row must lie in [0, 1] and sum to 1).",
        evidence={"target_min": lo, "target_max": hi, "row_sum_min": float(sums.min()), "row_sum_max": float(sums.max()),
                  "bad_rows": n_bad, "loss": c.kind},
        where=f"{where} targets",
        fix="Pass class indices (`y.argmax(1)`), or normalize the rows: `y = y / y.sum(1, keepdim=True)`.")


def check_unshuffled(c: Case) -> Finding | None:
    """A DataLoader with a SequentialSampler over label-sorted data gives batches of one or two
    classes: each step pulls the model toward those classes only. (X, y) tensors and Datasets
    are batched by nndoctor with shuffling, so only a user's DataLoader can be unshuffled."""
    loader = c.data
    if not (isinstance(loader, DataLoader) and isinstance(loader.sampler, SequentialSampler)
            and type(loader.batch_sampler) is BatchSampler and c.y is not None):
        return None
    whole = class_labels(c.y, c.kind)
    B = loader.batch_size or 1
    if whole is None or B < 2:
        return None
    freq = torch.bincount(whole).double() / len(whole)
    expected = float((1 - (1 - freq[freq > 0]) ** B).sum())  # classes a random batch of B rows holds
    if expected < 2:
        return None
    labels = _first_labels(loader.dataset, min(len(loader.dataset), 8 * B, 2048), c.kind)
    if labels is None or len(labels) < 2 * B:
        return None
    batches = labels[: len(labels) // B * B].view(-1, B)
    seen = sum(len(torch.unique(b)) for b in batches) / len(batches)
    if seen >= 0.5 * expected:  # shuffled batches hold about `expected` classes; half of it is far below
        return None
    return Finding.make(
        "data.unshuffled",
        f"The DataLoader reads the data in order: its batches hold {seen:.2g} classes on average where shuffled batches "
        f"of {B} would hold {expected:.2g}.",
        evidence={"classes_per_batch": seen, "expected_if_shuffled": expected, "batch_size": B,
                  "batches_read": len(batches), "classes": int((freq > 0).sum())},
        where="train_data (SequentialSampler)",
        fix=f"Shuffle every epoch: `DataLoader(dataset, batch_size={B}, shuffle=True)`.")


def _first_labels(dataset, n: int, kind: str) -> torch.Tensor | None:
    """Labels of the first n rows in sampler order, read without iterating the loader (no workers, no RNG)."""
    try:
        if isinstance(dataset, TensorDataset):
            y = dataset.tensors[-1][:n]
        else:
            y = torch.stack([torch.as_tensor(dataset[i][1]) for i in range(n)])
    except Exception:
        return None
    return class_labels(y, kind)


def check_class_imbalance(c: Case) -> Finding | None:
    """Beyond a 10:1 ratio between the largest and the smallest class, accuracy is misleading and
    the minority's share of the gradient too small to learn it well."""
    if c.y is None:
        return None
    labels = class_labels(c.y, c.kind)
    if labels is None or len(labels) < 100:
        return None
    counts = torch.bincount(labels)
    present = counts[counts > 0]
    if len(present) < 2:
        return None
    ratio = float(present.max() / present.min())
    weights = class_weights(c.loss_fn, len(counts))
    if weights is not None:  # what the gradient sees: each class's rows times its weight in the loss
        weighted = (counts.double() * weights)[counts > 0]
        if float(weighted.max() / weighted.min().clamp(min=1e-30)) < 10:
            return None
    if ratio < 10:
        return None
    major, minor = int(counts.argmax()), int(torch.where(counts > 0, counts, counts.max() + 1).argmin())
    if c.kind in BINARY:
        fix = f"Weight the positives: `nn.BCEWithLogitsLoss(pos_weight=torch.tensor({float(counts[0] / counts[1]):.3g}))`, or resample."
    else:
        fix = ("Weight the loss by inverse class frequency: `counts = torch.bincount(y); "
               "loss_fn = nn.CrossEntropyLoss(weight=len(y) / (len(counts) * counts.float()))`, or resample; track balanced accuracy.")
    share = float(counts[major]) / len(labels)
    return Finding.make(
        "data.class_imbalance",
        f"Class {major} makes up {share:.0%} of the labels, {ratio:.3g}x as many rows as class {minor}.",
        evidence={"counts": counts.tolist()[:100], "majority": major, "minority": minor, "ratio": ratio, "rows": len(labels)},
        where="train_data targets", fix=fix)
