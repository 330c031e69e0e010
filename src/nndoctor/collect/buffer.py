"""Device-side buffers: values stay where they were computed until a flush moves a whole
batch of steps to the CPU at once, so watching never forces a device sync per step."""
from __future__ import annotations

import numpy as np
import torch


class StepBuffer:
    """Rows of numbers per step, kept on the device, with a layout key per row.

    `key` names what each column is (e.g. the parameters that had a gradient); rows with the
    same key are stacked together at flush, so a layout change costs nothing special.
    """

    def __init__(self):
        self._rows: list[tuple[int, tuple, torch.Tensor]] = []

    def append(self, step: int, key: tuple, row: torch.Tensor | list[torch.Tensor]) -> None:
        """`row` is a tensor, or a list of 0-d tensors on one device, stacked only at flush
        (one stack per flush instead of one per step)."""
        self._rows.append((step, key, row.detach() if isinstance(row, torch.Tensor) and row.requires_grad else row))

    def __len__(self) -> int:
        return len(self._rows)

    def flush(self) -> list[tuple[tuple, np.ndarray, np.ndarray]]:
        """[(key, steps, values[rows, cols])], in order of first appearance; empties the buffer."""
        groups: dict[tuple, tuple[list[int], list[torch.Tensor]]] = {}
        for step, key, row in self._rows:
            steps, rows = groups.setdefault(key, ([], []))
            steps.append(step)
            if isinstance(row, torch.Tensor):
                rows.append(row)
            else:
                rows.extend(row)
        self._rows = []
        out = []
        for key, (steps, rows) in groups.items():
            if len({r.shape for r in rows}) > 1:  # one key's rows in several shapes: flattened one by one
                rows = [r.reshape(-1) for r in rows]
            values = torch.stack(rows).float().reshape(len(steps), -1)
            values = values.cpu().numpy().astype(np.float64)  # one transfer per layout
            out.append((key, np.asarray(steps), values))
        return out
