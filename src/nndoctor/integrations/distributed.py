"""Distributed data parallel: every rank watches its replica, rank 0 speaks for all.

    doctor = nndoctor.integrations.distributed.watch(ddp_model, optimizer)   # on every rank
    with doctor: ...training...
    report = doctor.report()                # on every rank; save it on rank 0

(`nndoctor watch` does this by itself when the script has initialized torch.distributed.)

At each flush the rows that reached the CPU are exchanged with one `all_gather_object`
and averaged step by step (a NaN on any rank stays a NaN), so every rank judges the whole
job; the first step each rank saw a non-finite loss, and where each rank's first NaN/Inf
was produced, travel with them, so a problem on one rank only is named with its rank.

Collectives never depend on a rank-local decision. A flush happens at the same steps on
every rank (every `flush_every` optimizer steps, counted identically because DDP steps in
lockstep) and once more at `detach()`; the rules' time budget (judge_share) and
`report()` involve no collective. If the doctor stops watching on one rank (its own
error), that rank still joins each scheduled exchange with an empty share, so no rank
waits forever.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from ..findings import Report
from ..watcher import Doctor

NONFINITE_CODES = ("loss.nonfinite", "data.nonfinite")


def distributed_world(group=None) -> tuple[int, int] | None:
    """(rank, world size) when torch.distributed runs with more than one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        return dist.get_rank(group), dist.get_world_size(group)
    return None


class DistributedDoctor(Doctor):
    """A Doctor whose flushes are merged across the ranks of a process group."""

    def __init__(self, model, optimizer=None, *, group=None, **options):
        super().__init__(model, optimizer, reducer=self._reduce, **options)
        world = distributed_world(group)
        self.rank, self.world_size = world if world else (0, 1)
        self.group = group
        self.exchange_at_end = True   # False when this rank failed: its launcher tears the job down
        self.first_nonfinite: dict[int, int] = {}  # rank -> first step with a non-finite loss
        self._origins: dict[int, dict] = {}
        self._exchanged_at: int | None = None
        self._paced = 0
        self._finished = False

    def attach(self) -> None:
        super().attach()
        if self.optimizer is not None and self.step_hooks:  # after the doctor's own post-hook
            self._handles.append(self.optimizer.register_step_post_hook(self._keep_pace))

    def detach(self) -> None:
        was_active = self.active
        super().detach()                  # its flush is the final exchange when watching is on
        if not self._finished and self.exchange_at_end and (was_active or self.failure):
            self._finished = True
            self._exchange([])            # watching stopped on this rank: still take part

    def report(self) -> Report:
        report = super().report()
        report.meta.update(rank=self.rank, world_size=self.world_size)
        if self.first_nonfinite:
            first = min(self.first_nonfinite.values())
            ranks = sorted(r for r, s in self.first_nonfinite.items() if s == first)
            said = ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))
            for f in report.findings:
                if f.code in NONFINITE_CODES and "ranks" not in f.evidence:
                    f.evidence.update(ranks=ranks, world_size=self.world_size, first_nonfinite_step=first)
                    f.message = f"{f.message.rstrip('.')} (first on {said} of {self.world_size})."
                    f.where = f.where if f.where else said
        return report

    # ---- the exchange ------------------------------------------------------------------
    def _reduce(self, doctor, rows):
        """Called by every flush: exchange on the schedule shared by all ranks, else keep local."""
        scheduled = self.step % self.flush_every == 0 and self.step != self._exchanged_at and bool(self._handles)
        final = not self._handles and not self._finished and self.exchange_at_end
        if self._finished or not (scheduled or final):
            return rows
        self._finished = bool(final)
        self._exchanged_at = self.step
        return self._exchange(rows)

    def _keep_pace(self, optimizer, args, kwargs) -> None:
        """After each optimizer step: if watching stopped here, join the scheduled exchange."""
        self._paced += 1
        if not self.active and not self._finished and self._paced % self.flush_every == 0 \
                and self._exchanged_at != self._paced:
            self._exchanged_at = self._paced
            self._exchange([])

    def _exchange(self, rows: list) -> list:
        origin = self.sentinel.origin if self.active else None
        local = origin if origin is not None and "rank" not in origin else None  # merged ones carry a rank
        share = {"rows": rows, "origin": local}
        shares: list = [None] * self.world_size
        dist.all_gather_object(shares, share, group=self.group)
        merged: dict[str, list] = {}
        for rank, part in enumerate(shares):
            for name, steps, values in part["rows"]:
                merged.setdefault(name, []).append((steps, values))
                bad = ~np.isfinite(values)
                if name == "loss" and bad.any():
                    step = int(steps[bad][0])
                    self.first_nonfinite[rank] = min(step, self.first_nonfinite.get(rank, step))
            if part["origin"] is not None:
                self._origins.setdefault(rank, part["origin"])
        if self._origins and self.active:  # the earliest first NaN/Inf of any rank, with its rank
            # at the same step, a rank that received the NaN in the gradient all-reduce yields to its maker
            rank, origin = min(self._origins.items(),
                               key=lambda item: (item[1]["step"], item[1].get("stage") == "outside", item[0]))
            self.sentinel.origin = dict(origin, rank=rank)
        return [(name, *_mean_by_step(parts)) for name, parts in merged.items()]


def _mean_by_step(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Average the ranks' values of each step; a non-finite value on any rank stays non-finite."""
    steps = np.concatenate([s for s, _ in parts])
    values = np.concatenate([v for _, v in parts])
    unique, inverse = np.unique(steps, return_inverse=True)
    sums, counts = np.zeros(len(unique)), np.zeros(len(unique))
    np.add.at(sums, inverse, values)
    np.add.at(counts, inverse, 1)
    return unique, sums / counts


def watch(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *, group=None,
          **options) -> DistributedDoctor:
    """Watch this rank's replica; call on every rank, and `report()` on every rank."""
    return DistributedDoctor(model, optimizer, group=group, **options)
