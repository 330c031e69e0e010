"""Small, robust statistics on loss traces shared by the rules. Medians, not means, so
one noisy batch never decides a verdict."""
from __future__ import annotations

import numpy as np


def finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def smooth(values: np.ndarray, width: int | None = None) -> np.ndarray:
    """Running median (odd width, about a tenth of the trace, at least 3)."""
    n = len(values)
    width = width or max(3, n // 10)
    width = min(width | 1, n if n % 2 else n - 1)
    if width < 3:
        return values.copy()
    half = width // 2
    padded = np.pad(values, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    return np.median(windows, axis=1)


START = 5  # losses that define the start: few enough to be the start, enough to ignore one odd batch


def start_level(values: np.ndarray) -> float:
    """The loss at the start: the median of the first few finite values (stable as the run grows)."""
    v = finite(values)
    return float(np.median(v[:START])) if len(v) else float("nan")


def end_level(values: np.ndarray, share: float = 0.1) -> float:
    """The loss at the end: the median of the last `share` of finite values (at least 5)."""
    v = finite(values)
    return float(np.median(v[-max(5, int(len(v) * share)):])) if len(v) else float("nan")


def relative_drop(values: np.ndarray) -> float:
    """(start - end) / |start|: 1 means the loss fell to zero, 0 no progress, < 0 it rose."""
    s, e = start_level(values), end_level(values)
    return (s - e) / abs(s) if s else 0.0


def trend(values: np.ndarray) -> tuple[float, float]:
    """(slope per step relative to the mean level, R² of a straight-line fit)."""
    v = finite(values)
    if len(v) < 5:
        return 0.0, 0.0
    x = np.arange(len(v), dtype=np.float64)
    slope, intercept = np.polyfit(x, v, 1)
    fitted = slope * x + intercept
    total = ((v - v.mean()) ** 2).sum()
    r2 = 1 - ((v - fitted) ** 2).sum() / total if total > 0 else 0.0
    level = abs(v.mean()) or 1.0
    return float(slope / level), float(r2)


def tail(values: np.ndarray, share: float) -> np.ndarray:
    return values[int(len(values) * (1 - share)):]


def medians(arrays: list[np.ndarray]) -> list[float]:
    """`np.median` of each (non-empty) array, those of one length in one call: a verdict takes
    the medians of hundreds of layers' traces (the same numbers, a fraction of the time)."""
    out = [0.0] * len(arrays)
    by_length: dict[int, list[int]] = {}
    for i, a in enumerate(arrays):
        by_length.setdefault(len(a), []).append(i)
    for members in by_length.values():
        for i, m in zip(members, np.median(np.stack([arrays[i] for i in members]), axis=1).tolist()):
            out[i] = m
    return out


def still_falling(values: np.ndarray, share: float = 0.5, by: float = 0.02) -> bool:
    """A straight line through the last `share` of the trace falls by more than `by` of the
    level over that stretch: the run is still learning, not stuck or converged."""
    late = finite(tail(values, share))
    if len(late) < 5:
        return False
    slope, _ = trend(late)
    return slope * len(late) < -by


def steady_decline(values: np.ndarray, min_points: int = 20) -> bool:
    """The loss falls along a straight line, significantly (slope t < -3) and without slowing
    down (the second half falls at least half as fast as the first): slow, not converging."""
    v = finite(values)
    if len(v) < min_points:
        return False

    def slope_t(y):
        x = np.arange(len(y), dtype=np.float64)
        slope, intercept = np.polyfit(x, y, 1)
        resid = y - (slope * x + intercept)
        se = np.sqrt((resid ** 2).sum() / max(len(y) - 2, 1) / ((x - x.mean()) ** 2).sum())
        return slope, slope / se if se > 0 else -np.inf * (slope < 0)
    slope, t = slope_t(v)
    half = len(v) // 2
    first, _ = slope_t(v[:half])
    second, _ = slope_t(v[half:])
    return slope < 0 and t < -3 and second <= 0.5 * first
