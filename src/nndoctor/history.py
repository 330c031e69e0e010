"""The bounded record of a run.

Every trace is a `Series`: the first `HEAD` points exactly (the start of training is the
reference for most rules), the last `RECENT` points exactly, and everything in between as
bucket summaries (first step, last step, mean, min, max, count). When there are more than
`BUCKETS` buckets, neighbours are merged pairwise, so bucket width doubles as the run
grows. A series therefore holds at most HEAD + RECENT + BUCKETS·(6 numbers) values —
about 3,700 numbers, ~30 KB — whether the run is 10³ or 10⁶ steps long. Spikes survive
summarization through the bucket min/max.
"""
from __future__ import annotations

import numpy as np

HEAD = 64
RECENT = 1024
BUCKETS = 256


class Series:
    """A bounded time series of (step, value) pairs."""

    __slots__ = ("head_steps", "head_values", "steps", "values", "buckets", "count", "_chunk")

    def __init__(self):
        self.head_steps: list[int] = []
        self.head_values: list[float] = []
        self.steps: list[int] = []      # recent, exact
        self.values: list[float] = []
        self.buckets: list[list[float]] = []  # [first_step, last_step, mean, min, max, count]
        self.count = 0
        self._chunk = RECENT // 8

    def add(self, step: int, value: float) -> None:
        self.count += 1
        if len(self.head_steps) < HEAD:
            self.head_steps.append(int(step))
            self.head_values.append(float(value))
            return
        self.steps.append(int(step))
        self.values.append(float(value))
        if len(self.steps) > RECENT + self._chunk:
            self._summarize_oldest()

    def extend(self, steps, values) -> None:
        """`add` for each pair, in bulk (a flush brings 50 points for each of hundreds of series)."""
        self.extend_lists(np.asarray(steps, dtype=np.int64).tolist(), np.asarray(values, dtype=np.float64).tolist())

    def extend_lists(self, steps: list[int], values: list[float]) -> None:
        """`extend` with the steps and values already Python ints and floats (kept as copies)."""
        self.count += len(steps)
        room = HEAD - len(self.head_steps)
        if room > 0:
            self.head_steps += steps[:room]
            self.head_values += values[:room]
            steps, values = steps[room:], values[room:]
        self.steps += steps
        self.values += values
        while len(self.steps) > RECENT + self._chunk:
            self._summarize_oldest()

    def _summarize_oldest(self) -> None:
        n = self._chunk
        vals = np.asarray(self.values[:n], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        mean = float(finite.mean()) if finite.size else float("nan")
        if finite.size == vals.size:
            lo, hi = float(finite.min()), float(finite.max())
        else:  # a NaN max marks the bucket as holding non-finite values (any_nonfinite reads it)
            lo, hi = (float(finite.min()) if finite.size else float("nan")), float("nan")
        self.buckets.append([self.steps[0], self.steps[n - 1], mean, lo, hi, n])
        del self.steps[:n], self.values[:n]
        if len(self.buckets) > BUCKETS:
            self.buckets = [_merge(a, b) for a, b in zip(self.buckets[0::2], self.buckets[1::2])] + (
                [self.buckets[-1]] if len(self.buckets) % 2 else [])

    # ---- views -------------------------------------------------------------------------
    def trace(self) -> tuple[np.ndarray, np.ndarray]:
        """All steps and values at the best resolution kept: head, bucket means, recent."""
        steps = self.head_steps + [int((b[0] + b[1]) // 2) for b in self.buckets] + self.steps
        values = self.head_values + [b[2] for b in self.buckets] + self.values
        return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)

    def last(self, n: int) -> np.ndarray:
        _, v = self.trace()
        return v[-n:]

    @property
    def latest(self) -> float | None:
        if self.values:
            return self.values[-1]
        return self.head_values[-1] if self.head_values else None

    @property
    def first_step(self) -> int | None:
        return self.head_steps[0] if self.head_steps else None

    @property
    def last_step(self) -> int | None:
        if self.steps:
            return self.steps[-1]
        return self.head_steps[-1] if self.head_steps else None

    def any_nonfinite(self) -> bool:
        _, v = self.trace()
        return bool((~np.isfinite(v)).any()) or any(not np.isfinite(b[4]) for b in self.buckets)

    def downsample(self, points: int = 400) -> dict:
        """At most `points` (step, value) pairs for plots and the JSON report."""
        steps, values = self.trace()
        if len(steps) > points:
            idx = np.unique(np.linspace(0, len(steps) - 1, points).astype(int))
            steps, values = steps[idx], values[idx]
        return {"step": steps.tolist(), "value": values.tolist()}

    def __len__(self) -> int:
        return self.count


def _merge(a: list[float], b: list[float]) -> list[float]:
    n = a[5] + b[5]
    means = [m for m in (a[2], b[2]) if np.isfinite(m)]
    mean = float(np.mean(means)) if means else float("nan")
    return [a[0], b[1], mean, min(a[3], b[3]), max(a[4], b[4]) if np.isfinite(a[4]) and np.isfinite(b[4]) else float("nan"), n]


class History:
    """Named series, created on first use."""

    def __init__(self):
        self.series: dict[str, Series] = {}
        self._kinds: dict[str, list[str]] = {}  # "grad_norm/" -> its series' names, in order of creation

    def __getitem__(self, name: str) -> Series:
        s = self.series.get(name)
        if s is None:
            s = self.series[name] = Series()
            self._kinds.setdefault(name[:name.find("/") + 1], []).append(name)
        return s

    def get(self, name: str) -> Series | None:
        return self.series.get(name)

    def record(self, rows) -> None:
        """Extend each row's series by its (steps, values); consecutive rows of one layout share
        their steps, converted once."""
        last_steps, step_list = None, []
        for name, steps, values in rows:
            if steps is not last_steps:
                last_steps, step_list = steps, np.asarray(steps, dtype=np.int64).tolist()
            self[name].extend_lists(step_list, np.asarray(values, dtype=np.float64).tolist())

    def __contains__(self, name: str) -> bool:
        return name in self.series and len(self.series[name]) > 0

    def names(self, prefix: str) -> list[str]:
        if prefix.endswith("/") and prefix.count("/") == 1:  # a kind: no scan of thousands of series
            return list(self._kinds.get(prefix, ()))
        return [n for n in self.series if n.startswith(prefix)]

    def numbers_held(self) -> int:
        """How many numbers the history holds now (the memory bound is tested on this)."""
        return sum(len(s.head_values) + len(s.values) + 6 * len(s.buckets) for s in self.series.values())
