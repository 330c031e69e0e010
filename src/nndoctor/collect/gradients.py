"""Gradients, read at the optimizer step (after any GradScaler unscaling; steps a scaler
skips never reach the step hook, so they are never judged).

On sampled steps only (reading every gradient costs about one extra optimizer pass, ~5% of
a step on a CPU): one norm per parameter, computed on the device; which weight rows got an
exactly-zero gradient (a dead unit, however its activation was written); and which
parameters have no gradient at all. The small gradients are read in batches (batched.py):
the squares per row of a group of matrices give both their norms and their rows' test, so
a sampled step costs a few ops whatever the number of parameters.
"""
from __future__ import annotations

import torch

from .batched import Layouts, row_squares
from .buffer import StepBuffer

ROW_WINDOW = 8  # sampled steps per dead-row window: a row silent for all of them is dead


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded tensor (an FSDP2/DTensor parameter or gradient), else `t`.
    An op on a DTensor may run a collective; the collectors must never start one (a rank
    that is alone in it waits forever), so they read the local shard and the ranks' shares
    are combined in the exchange (integrations/distributed.py)."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def read_as_is(params) -> bool:
    """True when every parameter is a plain tensor, read without `local_tensor` (decided once:
    a DTensor or an FSDP1 flat-parameter view stays what it is for the whole run)."""
    return all(isinstance(p, torch.Tensor) and not callable(getattr(p, "to_local", None)) for p in params)


def norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-tensor L2 norms of local (not sharded) tensors as one float32 vector on the first
    tensor's device: one op for all (a sparse gradient's norm is that of its values)."""
    tensors = [t.coalesce().values() if t.is_sparse else t for t in tensors]
    device = tensors[0].device
    try:
        if len({t.device for t in tensors}) == 1:
            return torch.stack(torch._foreach_norm(tensors)).float()
    except (RuntimeError, TypeError):
        pass
    return torch.stack([t.norm().float().to(device) for t in tensors])


class GradientCollector:
    def __init__(self, params: list[tuple[str, torch.nn.Parameter]]):
        self.params = params
        self.norms = StepBuffer()
        self.dead_rows = StepBuffer()
        self.none_counts = {name: 0 for name, _ in params}
        self.sampled = 0
        self._tensors = [p for _, p in params]
        self._as_is = read_as_is(self._tensors)
        self._matrices = {i for i, p in enumerate(self._tensors) if p.dim() >= 2}
        self._layouts = Layouts()
        # this window's rows with a non-zero gradient, by members (parameter indices): (alive rows, rows
        # each, and for a group the member owning each row and the rows each as a tensor)
        self._alive: dict[tuple[int, ...], tuple[torch.Tensor, tuple[int, ...], tuple | None]] = {}
        self._window = 0
        self._order: dict[tuple, torch.Tensor] = {}  # a window's layout -> the permutation to parameter order

    def on_step(self, step: int) -> None:
        """Called on sampled steps."""
        grads = [p.grad for p in self._tensors]
        idx = tuple([i for i, g in enumerate(grads) if g is not None])
        with torch.no_grad():  # a gradient made with create_graph=True must not grow a graph here
            present = [grads[i] for i in idx] if self._as_is else [local_tensor(grads[i]) for i in idx]
            if idx:
                self._measure(step, idx, present)
            self.sampled += 1
            if len(idx) < len(grads):
                for i, g in enumerate(grads):
                    if g is None and local_tensor(self._tensors[i]).numel():  # a rank holding none of it cannot tell
                        self.none_counts[self.params[i][0]] += 1
            self._window += 1
            if self._window >= ROW_WINDOW and self._alive:
                self.dead_rows.append(step, *self._dead_shares())
                self._alive, self._window = {}, 0

    def _measure(self, step: int, idx: tuple[int, ...], grads: list[torch.Tensor]) -> None:
        """The norms of `grads` (of parameters `idx`), and which of their weight rows are alive."""
        layout = self._layouts.of(grads)
        sums = []
        for group, rows in enumerate(layout.concat(grads)):
            squares = row_squares(rows)
            sums.append(layout.sums_of_squares(group, squares))
            if layout.matrices[group]:
                segments = layout.owner(group, squares.device), layout.row_counts(group, squares.device)
                self._mark(tuple(idx[j] for j in layout.groups[group]), squares > 0, layout.rows[group], segments)
        alone = [grads[j] for j in layout.alone]
        for k, (j, g) in enumerate(zip(layout.alone, alone)):
            if idx[j] in self._matrices and not g.is_sparse and g.dim() >= 2 and g.numel():
                rows = torch.linalg.vector_norm(g.flatten(1), dim=1)  # fastest all-zero test per row
                self._mark((idx[j],), rows > 0, (g.shape[0],), None)
                alone[k] = rows  # its norm is theirs: a large gradient is read once
        self.norms.append(step, idx, layout.assemble([s.sqrt() for s in sums], norms(alone) if alone else None))

    def _mark(self, members: tuple[int, ...], alive: torch.Tensor, rows: tuple[int, ...], segments) -> None:
        seen = self._alive.get(members)
        if seen is None:
            self._alive[members] = (alive, rows, segments)
        else:
            seen[0].logical_or_(alive)

    def _dead_shares(self) -> tuple[tuple[int, ...], torch.Tensor]:
        """(parameters, share of each one's rows that no sampled step of the window gave a
        non-zero gradient), in parameter order."""
        columns = [i for members in self._alive for i in members]
        if len(columns) > len(set(columns)):  # the set with a gradient changed within the window
            self._alive = self._per_parameter()
            columns = [i for members in self._alive for i in members]
        device = next(iter(self._alive.values()))[0].device
        shares = []
        for members, (alive, _, segments) in self._alive.items():
            dead = (~alive).float()
            if segments is None:
                share = dead.mean().reshape(1)
            else:
                owner, rows = segments
                share = torch.zeros(len(members), dtype=torch.float32, device=dead.device).index_add_(0, owner, dead) / rows
            shares.append(share.to(device))
        row = torch.cat(shares) if len(shares) > 1 else shares[0]
        keys = tuple(sorted(columns))
        if keys != tuple(columns):
            layout = tuple(self._alive)
            order = self._order.get(layout)
            if order is None:  # once per layout (one copy to the device)
                order = self._order[layout] = torch.tensor(sorted(range(len(columns)), key=columns.__getitem__),
                                                           device=device)
            row = row[order]
        return keys, row

    def _per_parameter(self) -> dict[tuple[int, ...], tuple[torch.Tensor, tuple[int, ...], None]]:
        """The window's alive rows split by parameter, each one's groups OR-ed together."""
        alive: dict[tuple[int, ...], tuple[torch.Tensor, tuple[int, ...], None]] = {}
        for members, (rows_alive, rows, _) in self._alive.items():
            for i, part in zip(members, rows_alive.split(rows)):
                seen = alive.get((i,))
                alive[(i,)] = (part, (len(part),), None) if seen is None else (seen[0] | part, seen[1], None)
        return dict(sorted(alive.items()))
