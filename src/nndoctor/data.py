"""Accept the data forms of the contract: (X, y) tensors, a Dataset, or a DataLoader.

Validation says what is wrong and what to pass instead (scikit-learn's `check_array` style).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


def check_data(data, name: str = "train_data"):
    """Raise a clear TypeError unless `data` is (X, y), a Dataset or a DataLoader."""
    if isinstance(data, (DataLoader, Dataset)):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = (_as_tensor(v, f"{name}[{i}]") for i, v in enumerate(data))
        if len(X) != len(y):
            raise ValueError(f"{name}: X has {len(X)} rows but y has {len(y)}; they must match")
        return (X, y)
    raise TypeError(f"{name} must be an (X, y) pair of tensors, a torch Dataset or a DataLoader, "
                    f"not {type(data).__name__}")


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, not {type(value).__name__}")


def as_loader(data, batch_size: int | None, *, shuffle: bool = True, seed: int = 0) -> DataLoader:
    """A DataLoader over `data`; a DataLoader is used as given."""
    data = check_data(data)
    if isinstance(data, DataLoader):
        return data
    dataset = TensorDataset(*data) if isinstance(data, tuple) else data
    size = batch_size or min(64, max(1, len(dataset)))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=size, shuffle=shuffle, generator=generator)


def dataset_of(data) -> Dataset | None:
    data = check_data(data)
    if isinstance(data, DataLoader):
        return data.dataset
    if isinstance(data, tuple):
        return TensorDataset(*data)
    return data


def rows_of(data) -> int | None:
    """How many rows the data holds, or None for data without a length (an iterable)."""
    try:
        return len(dataset_of(data))
    except TypeError:
        return None


def sample(data, max_rows: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Up to `max_rows` (input, target) rows stacked into two tensors, or None if the data
    does not yield (input, target) pairs of tensors. Large data is sampled at random
    (with a private generator: the global RNG is not touched)."""
    data = check_data(data)
    if isinstance(data, tuple):
        X, y = data
        if len(X) > max_rows:
            idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:max_rows]
            return X[idx], y[idx]
        return X, y
    ds = dataset_of(data)
    try:
        n = len(ds)
    except TypeError:
        n = None
    if n is not None:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=g)[:max_rows].tolist() if n > max_rows else range(n)
        try:
            rows = [ds[i] for i in idx]
            return _stack(rows)
        except Exception:
            pass
    if isinstance(data, DataLoader):  # iterable datasets: read batches until enough rows
        xs, ys, count = [], [], 0
        for batch in data:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                return None
            xs.append(torch.as_tensor(batch[0])); ys.append(torch.as_tensor(batch[1]))
            count += len(xs[-1])
            if count >= max_rows:
                break
        return (torch.cat(xs)[:max_rows], torch.cat(ys)[:max_rows]) if xs else None
    return None


def _stack(rows) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not rows or not isinstance(rows[0], (tuple, list)) or len(rows[0]) < 2:
        return None
    X = torch.stack([torch.as_tensor(r[0]) for r in rows])
    y = torch.stack([torch.as_tensor(r[1]) for r in rows])
    return X, y
