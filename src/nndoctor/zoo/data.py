"""Offline datasets for the zoo: sklearn's bundled sets and small generated tasks.

Each loader returns a fresh `Split` (new tensors every call), so a mutation that edits the
data in place can never leak into another scenario. The raw arrays are loaded once and
cached; the train/validation split is fixed (it does not depend on the scenario's seed),
so seeds only change the model's initialization and the batch order.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

VAL_FRACTION = 0.25


@dataclass
class Split:
    """Train and validation tensors of one dataset."""
    X: torch.Tensor
    y: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X, self.y

    @property
    def val(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X_val, self.y_val

    def replace(self, **changes) -> "Split":
        return replace(self, **changes)


@lru_cache(maxsize=None)
def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets
    if name == "digits":
        bunch = datasets.load_digits()
    elif name == "breast_cancer":
        bunch = datasets.load_breast_cancer()
    elif name == "diabetes":
        bunch = datasets.load_diabetes(scaled=False)  # raw units: age in years, BMI, blood pressure...
    else:
        raise ValueError(f"unknown dataset {name!r}")
    return bunch.data.astype(np.float32), bunch.target


@lru_cache(maxsize=None)
def _val_mask(n: int) -> np.ndarray:
    """A fixed random choice of validation rows."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(12345)).numpy()
    mask = np.zeros(n, dtype=bool)
    mask[order[: int(n * VAL_FRACTION)]] = True
    return mask


def _split(X, y, y_dtype: torch.dtype, x_dtype: torch.dtype = torch.float32) -> Split:
    val = _val_mask(len(X))
    X, y = np.asarray(X), np.asarray(y)
    return Split(torch.tensor(X[~val], dtype=x_dtype), torch.tensor(y[~val], dtype=y_dtype),
                 torch.tensor(X[val], dtype=x_dtype), torch.tensor(y[val], dtype=y_dtype))


def standardize(split: Split, *, per_feature: bool = True) -> Split:
    """Z-score the inputs with statistics of the training split only (no leak from validation).

    Features that are constant on the training split (digits' blank corner pixels) keep a
    scale of 1 instead of dividing by zero."""
    if per_feature:
        mean, std = split.X.mean(0), split.X.std(0)
    else:
        mean, std = split.X.mean(), split.X.std()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return split.replace(X=(split.X - mean) / std, X_val=(split.X_val - mean) / std)


def standardize_target(split: Split) -> Split:
    mean, std = split.y.mean(), split.y.std()
    return split.replace(y=(split.y - mean) / std, y_val=(split.y_val - mean) / std)


def digits(*, images: bool = False, standardize_inputs: bool = True) -> Split:
    """8x8 handwritten digits, 10 classes; pixels 0..16. Flat (N, 64) or images (N, 1, 8, 8)."""
    X, y = _sklearn("digits")
    split = _split(X, y, torch.long)
    if images:
        split = split.replace(X=split.X.view(-1, 1, 8, 8), X_val=split.X_val.view(-1, 1, 8, 8))
    # images share one scale across pixels, as image pipelines do
    return standardize(split, per_feature=not images) if standardize_inputs else split


def breast_cancer(*, standardize_inputs: bool = True) -> Split:
    """30 tumour measurements (scales from 1e-3 to 4e3), binary target as (N, 1) floats for BCE."""
    X, y = _sklearn("breast_cancer")
    split = _split(X, y.reshape(-1, 1), torch.float32)
    return standardize(split) if standardize_inputs else split


def diabetes(*, standardize_inputs: bool = True, standardize_targets: bool = True) -> Split:
    """10 clinical features in raw units; target (N, 1) is disease progression, 25..346."""
    X, y = _sklearn("diabetes")
    split = _split(X, y.reshape(-1, 1), torch.float32)
    if standardize_inputs:
        split = standardize(split)
    return standardize_target(split) if standardize_targets else split


@lru_cache(maxsize=None)
def _rings() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_circles
    return make_circles(n_samples=1200, noise=0.08, factor=0.5, random_state=0)


def rings() -> Split:
    """Two concentric rings in 2-D: the simplest task no linear model can solve."""
    X, y = _rings()
    return standardize(_split(X, y, torch.long))


@lru_cache(maxsize=None)
def _xor(n: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(13)
    corners = torch.randint(0, 2, (n, 2), generator=g)
    X = (corners * 2 - 1).float() + noise * torch.randn(n, 2, generator=g)
    return X, (corners[:, 0] != corners[:, 1]).long()


def xor(*, noise: float = 0.15) -> Split:
    """Four Gaussian blobs at (+-1, +-1); the label is the XOR of the signs. A net with a
    handful of hidden units has bad basins here: some initializations solve it, others end
    with one pair of blobs misclassified (Hamey 1998; Sprinkhuizen-Kuyper & Boers 1999)."""
    X, y = _xor(1000, noise)
    return _split(X, y, torch.long)


@lru_cache(maxsize=None)
def _early_majority(n: int, length: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    signs = torch.randint(0, 2, (n, length), generator=g).float() * 2 - 1
    marker = torch.zeros(n, length)
    marker[:, :window] = 1.0
    return torch.stack([signs, marker], dim=-1), (signs[:, :window].sum(1) > 0).long()


def early_majority(*, length: int = 40, window: int = 15) -> Split:
    """Sequences of +-1 (channel 0) with a marker channel set on the first `window` steps;
    the label is the sign of the sum over that window. The answer lies 25+ steps back, so
    the task needs memory across time: a gated cell learns it, a vanilla RNN's gradient
    vanishes on the way back."""
    X, y = _early_majority(2000, length, window)
    return _split(X, y, torch.long)


@lru_cache(maxsize=None)
def _pointer(n: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    tokens = torch.randint(0, length, (n, length), generator=g)
    where = torch.randint(1, length, (n,), generator=g)
    tokens[:, 0] = where
    return tokens, tokens[torch.arange(n), where]


def pointer(*, length: int = 10) -> Split:
    """Token sequences whose first token names a position; the label is the token found
    there (vocabulary = classes = `length`). Solving it needs attention to a
    content-chosen position, the job a transformer layer does."""
    tokens, y = _pointer(3000, length)
    return _split(tokens, y, torch.long, x_dtype=torch.long)



# sequences with padding (tracecodes: data.padding_in_loss) --------------------------------

PAD = 0  # the pad token and the pad tag


@lru_cache(maxsize=None)
def _tagging(n: int, length: int, vocab: int, tags: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(13)
    tokens = torch.randint(1, vocab, (n, length), generator=g)
    back = torch.cat([torch.zeros(n, 3, dtype=torch.long), tokens[:, :-3]], 1)
    labels = (tokens + back) % tags + 1
    lengths = torch.randint(2, length // 2, (n,), generator=g)
    padding = torch.arange(length)[None, :] >= lengths[:, None]
    tokens[padding] = PAD
    labels[padding] = PAD
    return tokens, labels


def tagging(*, length: int = 24, vocab: int = 12, tags: int = 4) -> Split:
    """Token sequences of 2..11 tokens right-padded with 0 to `length` (73% padding); each
    real token's tag (1..`tags`) depends on the token 3 steps back, padding's tag is 0. A
    tagger must carry context, and the loss must ignore the padding."""
    tokens, labels = _tagging(2000, length, vocab, tags)
    return _split(tokens, labels, torch.long, x_dtype=torch.long)
