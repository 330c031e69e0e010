"""Per-tensor statistics of many tensors in a few ops.

A model of hundreds of small layers would pay hundreds of ops for one statistic per
parameter, and on a CPU even a `torch._foreach_*` op runs one kernel per tensor (a few µs
each). Instead the small tensors of one trailing shape, dtype and device are concatenated
(one op; a copy of a few KB each) and each one's sum of squares is read off the
concatenation by segment with `index_add_` (in float32, or float64 for float64 tensors); a
large tensor, whose reading costs more than an op, is measured alone.
"""
from __future__ import annotations

import torch

SMALL = 8192            # elements: a tensor this small is concatenated with the others of its kind
CONCAT_LIMIT = 1 << 20  # elements per concatenation: bounds the copy it makes
FEW = 16                # fewer tensors of a kind than this are measured alone: a batch costs ~5 ops


class Layout:
    """How one list of tensors is batched: made once per list of shapes and kept while the
    tensors keep them (the parameters with a gradient are almost always the same)."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.groups: list[list[int]] = []           # positions (in the list) concatenated together
        self.rows: list[tuple[int, ...]] = []       # per group, each member's rows (a 1-D one's elements)
        self.alone: list[int] = []                  # positions measured one by one
        self.matrices: list[bool] = []              # per group: its members have rows (dim >= 2)
        filling: dict[tuple, tuple[int, int]] = {}  # kind -> (its group being filled, elements in it)
        rows: list[list[int]] = []
        for j, t in enumerate(tensors):
            n = t.numel()
            if t.is_sparse or t.is_complex() or t.dim() == 0 or not n or n > SMALL:
                self.alone.append(j)
                continue
            kind = (t.shape[1:], t.dtype, t.device)
            group, filled = filling.get(kind, (None, 0))
            if group is None or filled + n > CONCAT_LIMIT:
                group, filled = len(self.groups), 0
                self.groups.append([])
                self.matrices.append(t.dim() >= 2)
                rows.append([])
            self.groups[group].append(j)
            rows[group].append(t.shape[0])
            filling[kind] = (group, filled + n)
        few = [g for g, members in enumerate(self.groups) if len(members) < FEW]
        for g in reversed(few):  # cheaper one by one, in the `torch._foreach_*` ops of the large ones
            self.alone += self.groups.pop(g)
            del rows[g], self.matrices[g]
        self.alone.sort()
        self.rows = [tuple(r) for r in rows]
        columns = [j for members in self.groups for j in members] + self.alone
        self._order = None if columns == sorted(columns) else sorted(range(len(columns)), key=columns.__getitem__)
        self._on_device: dict[tuple, torch.Tensor] = {}  # (what, group, device) -> index tensor, one copy each

    def concat(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per group, its members concatenated along their first dimension (always a copy)."""
        return [torch.cat([tensors[j] for j in members]) for members in self.groups]

    def sums_of_squares(self, group: int, row_squares: torch.Tensor) -> torch.Tensor:
        """Each member's sum of squares, from the group's squares per row."""
        owner = self.owner(group, row_squares.device)
        sums = torch.zeros(len(self.groups[group]), dtype=row_squares.dtype, device=row_squares.device)
        return sums.index_add_(0, owner, row_squares)

    def owner(self, group: int, device: torch.device) -> torch.Tensor:
        """For each row of a group's concatenation, the member it belongs to."""
        return self._index("owner", group, device)

    def row_counts(self, group: int, device: torch.device) -> torch.Tensor:
        """Each member's rows, as float32 (to divide by)."""
        return self._index("rows", group, device)

    def assemble(self, per_group: list[torch.Tensor], alone: torch.Tensor | None) -> torch.Tensor:
        """One value per tensor, in the list's order, from the groups' values and the others'."""
        parts = per_group + ([alone] if alone is not None else [])
        device = parts[0].device
        values = torch.cat([v.to(device) for v in parts]) if len(parts) > 1 else parts[0]
        return values if self._order is None else values[self._index("order", 0, device)]

    def _index(self, what: str, group: int, device: torch.device) -> torch.Tensor:
        key = (what, group, device)
        found = self._on_device.get(key)
        if found is None:  # made once per layout and device (one copy to the device)
            if what == "order":
                found = torch.tensor(self._order)
            else:
                counts = torch.tensor(self.rows[group])
                found = counts.float() if what == "rows" else torch.repeat_interleave(
                    torch.arange(len(counts), dtype=torch.int32), counts)
            found = self._on_device[key] = found.to(device)
        return found


def row_squares(rows: torch.Tensor) -> torch.Tensor:
    """Per row (per element of a 1-D tensor), the sum of squares (at least in float32)."""
    rows = rows if rows.dtype == torch.float64 else rows.float()
    return rows.flatten(1).square().sum(1) if rows.dim() > 1 else rows.square()


class Layouts:
    """The layouts met so far, by the tensors' shapes (a bounded number: a model whose set of
    parameters with a gradient keeps changing, a mixture of experts, keeps the recent ones)."""

    KEPT = 64

    def __init__(self):
        self._known: dict[tuple, Layout] = {}

    def of(self, tensors: list[torch.Tensor]) -> Layout:
        shapes = tuple([t.shape for t in tensors])
        layout = self._known.get(shapes)
        if layout is None:
            if len(self._known) >= self.KEPT:
                self._known.clear()
            layout = self._known[shapes] = Layout(tensors)
        return layout
