"""Distributed training (DDP, FSDP): every rank watches its part, rank 0 speaks for all.

    doctor = nndoctor.integrations.distributed.watch(model, optimizer)   # on every rank
    with doctor: ...training...
    report = doctor.report()   # rank 0: the whole job (save it there); other ranks: their own part

(`nndoctor watch` does this by itself when the script has initialized torch.distributed.)

No collective is ever used. Ours would have to pair with the user's own collectives in the
same order on every rank, so ranks that run different numbers of steps (DDP's Join, uneven
data), a rank that fails, or a rank stuck in the user's collective would deadlock the job;
a separate gloo group does not help, as creating one is itself a collective every rank
must reach. Instead, at each of its flushes every rank writes its rows to the key-value
store every process group already has (one `set`, never waiting for another rank), and
rank 0 reads, without waiting, what has arrived: a flush is merged once every rank has sent
it or has left. A rank's last share (at its end, after its script's error, or after
nndoctor's own error on it) says that it left, so no one waits for it again. Only at its
own end does rank 0 wait for the shares still missing, and only while they keep coming: a
rank that sent nothing new for `FINAL_PATIENCE` seconds (dead, or stuck in a collective
that waits for rank 0) is given up, and the report says so. Rank 0's live verdict may
therefore run one flush behind the slowest rank; the final report has every share.

Merging: per step, the mean over ranks (a NaN on any rank stays NaN). Norms of sharded
parameters (FSDP1, FSDP2) are read on each rank's local shard and combined as
sqrt(sum of squares / replicas), the norm of the whole parameter; update ratios are
combined through the shards' weight norms, and a parameter has "no gradient" only when no
rank holding a part of it saw one. The first step each rank saw a non-finite loss, and
where each rank's first NaN/Inf was produced, travel with the rows, so a problem on one
rank only is named with its rank.
"""
from __future__ import annotations

import itertools
import json
import math
import time
import traceback

import numpy as np
import torch
import torch.distributed as dist

from ..collect.gradients import local_tensor
from ..findings import Report
from ..watcher import Doctor

NONFINITE_CODES = ("loss.nonfinite", "data.nonfinite")
FINAL_PATIENCE = 10.0   # s without a new share from a missing rank before rank 0's report goes without it
FAILED_PATIENCE = 1.0   # the same when rank 0's own script failed: the others may be waiting for it
_instances = itertools.count()  # doctors made in this process: the same sequence on every rank


def distributed_world(group=None) -> tuple[int, int] | None:
    """(rank, world size) when torch.distributed runs with more than one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        return dist.get_rank(group), dist.get_world_size(group)
    return None


def group_store(group=None):
    """The c10d key-value store of `group` (every process group has one; under torchrun it
    lives in the launcher, so it outlives any worker)."""
    from torch.distributed import distributed_c10d as c10d
    return c10d._world.pg_map[group if group is not None else c10d._get_default_group()][1]


def shard_layout(model: torch.nn.Module, params, world_size: int) -> tuple[dict[str, int], dict[str, tuple]]:
    """For each sharded parameter, how many ranks hold each of its elements (FSDP: 1;
    hybrid sharding: the replicas of a shard), and, where the watched tensor is a flattened
    local view (FSDP1 with use_orig_params), the whole parameter's shape. Unsharded (DDP)
    parameters are in neither."""
    replicas: dict[str, int] = {}
    shapes: dict[str, tuple] = {}
    for name, p in params:
        mesh, placements = getattr(p, "device_mesh", None), getattr(p, "placements", None)
        if mesh is not None and placements is not None:  # FSDP2 / DTensor: its shape is the whole one
            shards = math.prod(mesh.size(d) for d, pl in enumerate(placements) if pl.is_shard())
            if shards > 1:
                replicas[name] = max(1, world_size // shards)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import ShardingStrategy
    except ImportError:
        return replicas, shapes
    ids = {id(p): name for name, p in params}
    for unit in model.modules():
        flat = getattr(getattr(unit, "_handle", None), "flat_param", None)
        if not isinstance(unit, FSDP) or flat is None or unit.sharding_strategy == ShardingStrategy.NO_SHARD:
            continue
        shards = dist.get_world_size(unit.process_group)
        originals = getattr(flat, "_params", None) or [
            v for _, v in params if isinstance(v, FlatShardView) and v.flat is flat]
        for p, shape in [(flat, None), *zip(originals, flat._shapes)]:
            if id(p) in ids and shards > 1:
                replicas[ids[id(p)]] = max(1, world_size // shards)
                if shape is not None:
                    shapes[ids[id(p)]] = tuple(shape)
    return replicas, shapes


class FlatShardView:
    """One original parameter's part of the local shard of an FSDP1 flat parameter. It
    offers what the collectors read of a parameter (`.grad`, `.detach()`, its size), as
    slices of the flat parameter and its gradient at the time they are read."""

    is_sparse = False
    requires_grad = True

    def __init__(self, flat: torch.nn.Parameter, offset: int, numel: int):
        self.flat, self.offset, self.size = flat, offset, numel

    @property
    def grad(self) -> torch.Tensor | None:
        grad = self.flat.grad
        return None if grad is None or not self.size else grad.detach()[self.offset:self.offset + self.size]

    @property
    def device(self) -> torch.device:
        return self.flat.device

    @property
    def shape(self) -> torch.Size:
        return torch.Size([self.size])

    def detach(self) -> torch.Tensor:
        return self.flat.detach()[self.offset:self.offset + self.size]

    def numel(self) -> int:
        return self.size

    def dim(self) -> int:
        return 1

    def register_hook(self, hook):
        return self.flat.register_hook(hook)


def flat_views(name: str, p) -> list[tuple[str, object]]:
    """[(original parameter name, its FlatShardView)] for an FSDP1 flat parameter, else [(name, p)]."""
    infos, fqns = getattr(p, "_shard_param_infos", None), getattr(p, "_fqns", None)
    if not infos or not fqns or getattr(p, "_params", None):  # not flat, or use_orig_params (watched as is)
        return [(name, p)]
    prefix = name[:-len("_flat_param")] if name.endswith("_flat_param") else name + "."
    return [(prefix + fqn, FlatShardView(p, info.offset_in_shard, info.numel_in_shard) if info.in_shard
             else FlatShardView(p, 0, 0))  # held by other ranks: an empty view, like use_orig_params'
            for fqn, info in zip(fqns, infos)]


class DistributedDoctor(Doctor):
    """A Doctor whose flushes are merged on rank 0 across the ranks of a process group."""

    def __init__(self, model, optimizer=None, *, group=None, **options):
        world = distributed_world(group)
        self.rank, self.world_size = world if world else (0, 1)
        self._finished = False
        super().__init__(model, optimizer, reducer=self._reduce, **options)
        self.group = group
        self.exchange_at_end = True   # False: a discarded watcher (the script found a better one), no last share
        self.ended_by: str | None = None  # this rank's script failed: the exception, as printed
        self.first_nonfinite: dict[int, int] = {}  # rank -> first step with a non-finite loss
        self.replicas, self.shapes = shard_layout(model, self.params, self.world_size)
        self._key = f"nndoctor/{next(_instances)}"
        self._store = None
        if world:
            try:
                self._store = group_store(group)
            except Exception as exc:  # no store to be found: each rank judges its own part
                self.notes.append(f"statistics were not exchanged across ranks ({type(exc).__name__}: {exc}); "
                                  f"this report covers rank {self.rank} only")
        self._outbox: list = []          # rows not yet sent (rank 0: its own share in the making)
        self._seq = 0                    # shares this rank has sent
        self._origins: dict[int, dict] = {}
        # rank 0 only: shares read and not yet merged, what is known of each rank
        self._waiting: dict[int, dict[int, dict]] = {}  # seq -> rank -> share
        self._next = {r: 1 for r in range(1, self.world_size)}   # next seq to read from each rank
        self._left: dict[int, dict] = {}                 # rank -> its last share (seq, steps, failure)
        self._gradless: dict[int, tuple[dict, int, set]] = {}  # rank -> (none counts, sampled, empty)
        self._heard = time.monotonic()   # when rank 0 last got a share (or began its final wait)
        self._flushed_at: float | None = None
        self._flush_interval = 0.0       # the longest time between two scheduled flushes here

    def _parameter_views(self, params: list) -> list:
        """FSDP1 without use_orig_params hands the optimizer one flat parameter per unit:
        watch each original parameter's slice of it instead, so each layer is judged as itself."""
        return [view for name, p in params for view in flat_views(name, p)]

    # ---- lifecycle -------------------------------------------------------------------
    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.ended_by = "".join(traceback.format_exception(exc_type, exc, tb)).rstrip()
        super().__exit__(exc_type, exc, tb)

    def _fail(self, exc: Exception) -> None:
        super()._fail(exc)
        if not self._finished and self.rank != 0 and hasattr(self, "_outbox"):  # rank 0 must not wait for us
            self._finish([], failure=f"nndoctor stopped watching on this rank ({self.failure})")

    def report(self) -> Report:
        report = super().report()
        report.meta.update(rank=self.rank, world_size=self.world_size)
        if self.rank != 0 and self._store is not None:
            report.notes.append(f"this is rank {self.rank}'s own part of the job; rank 0 reports for all ranks")
        if self.rank == 0 and self._store is not None:
            report.notes.extend(self._rank_notes())
            steps = {0: self.step, **{r: share["step"] for r, share in self._left.items()}}
            if len(set(steps.values())) > 1:
                report.meta["steps_by_rank"] = {str(r): n for r, n in sorted(steps.items())}
                report.notes.append("ranks ran different numbers of steps: "
                                    + ", ".join(f"rank {r}: {n}" for r, n in sorted(steps.items())))
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

    def _rank_notes(self) -> list[str]:
        notes = []
        for rank in range(1, self.world_size):
            last = self._left.get(rank)
            if last is None:
                notes.append(f"rank {rank} sent no statistics after its share {self._next[rank] - 1} (one every "
                             f"{self.flush_every} steps): it did not end normally, or was stuck; its last steps "
                             f"are missing")
            elif last.get("failure"):
                notes.append(f"rank {rank} stopped at step {last['step']}: {last['failure'].splitlines()[-1]}")
        return notes

    # ---- the exchange ------------------------------------------------------------------
    def _reduce(self, doctor, rows):
        """Called by every flush: send (or, on rank 0, merge) on the schedule, else hold the rows."""
        if self._store is None or self._finished:
            return rows
        self._outbox.extend(rows)
        final = not self._handles and self.exchange_at_end   # detach(): this rank's last flush
        scheduled = self.step % self.flush_every == 0 and self.step // self.flush_every > self._seq
        if final:
            return self._finish(rows)
        if scheduled:
            now = time.monotonic()
            if self._flushed_at is not None:
                self._flush_interval = max(self._flush_interval, now - self._flushed_at)
            self._flushed_at = now
            self._send(final=False)
            if self.rank == 0:
                return self._collect(wait=0.0)
        return rows if self.rank != 0 else []

    def _finish(self, rows: list, failure: str | None = None) -> list:
        """This rank's last share; on rank 0, wait (bounded) for the others' and merge them all."""
        self._finished = True
        self._send(final=True, failure=failure or self.ended_by)
        if self.rank != 0:
            return rows
        self._heard = time.monotonic()  # the others had until now; from now on, patience
        # a rank still training sends a share every flush interval: wait longer than that
        wait = FAILED_PATIENCE if self.ended_by else max(FINAL_PATIENCE, 2 * self._flush_interval)
        return self._collect(wait=wait)

    def _share(self, final: bool, failure: str | None) -> dict:
        origin = self.sentinel.origin
        empty = [n for n, p in self.params if not local_tensor(p).numel()]
        return {"seq": self._seq, "final": final, "step": self.step, "failure": failure,
                "rows": [(name, steps.tolist(), values.tolist()) for name, steps, values in self._outbox],
                "origin": origin if origin is not None and "rank" not in origin else None,
                "none": {n: c for n, c in self.grads.none_counts.items() if c}, "sampled": self.grads.sampled,
                "empty": empty}

    def _send(self, final: bool, failure: str | None = None) -> None:
        self._seq += 1
        share = self._share(final, failure)
        self._outbox = []
        if self.rank == 0:
            self._waiting.setdefault(share["seq"], {})[0] = share
            self._left.pop(0, None)
            return
        try:
            self._store.set(f"{self._key}/{self.rank}/{share['seq']}", json.dumps(share))
        except Exception as exc:  # the store is gone: this rank's part stays its own
            self._store = None
            self.notes.append(f"statistics could not be sent to rank 0 ({type(exc).__name__}: {exc})")

    def _read(self) -> bool:
        """Rank 0: take every share that has arrived, in order; True if any did."""
        got = False
        for rank in range(1, self.world_size):
            while rank not in self._left:
                key = f"{self._key}/{rank}/{self._next[rank]}"
                if not self._store.check([key]):
                    break
                share = json.loads(self._store.get(key))
                self._store.delete_key(key)
                self._next[rank] += 1
                self._waiting.setdefault(share["seq"], {})[rank] = share
                if share["final"]:
                    self._left[rank] = share
                got = True
        return got

    def _collect(self, wait: float) -> list:
        """Rank 0: merge every flush all ranks have sent; at the end wait up to `wait` s after
        the last news for the ranks still missing, then merge what there is."""
        rows: list = []
        try:
            while True:
                if self._read():
                    self._heard = time.monotonic()
                rows += self._merge_complete(force=False)
                missing = [r for r in range(1, self.world_size) if r not in self._left]
                if not self._finished or not missing or time.monotonic() - self._heard > wait:
                    break
                time.sleep(0.02)
        except Exception as exc:  # the store failed: judge what has been merged, and say so
            self._store = None
            self.notes.append(f"statistics could not be read from the other ranks ({type(exc).__name__}: {exc})")
        if self._finished or self._store is None:
            rows += self._merge_complete(force=True)
        return rows

    def _merge_complete(self, force: bool) -> list:
        rows: list = []
        for seq in sorted(self._waiting):
            shares = self._waiting[seq]
            complete = 0 in shares and all(r in shares or (r in self._left and self._left[r]["seq"] < seq)
                                           for r in range(1, self.world_size))
            if not (complete or force):
                break
            rows += self._merge(self._waiting.pop(seq))
        return rows

    def _merge(self, shares: dict[int, dict]) -> list:
        parts: dict[str, list] = {}
        for rank, share in sorted(shares.items()):
            self._gradless[rank] = (share["none"], share["sampled"], set(share["empty"]))
            if share["origin"] is not None:
                self._origins.setdefault(rank, share["origin"])
            for name, steps, values in share["rows"]:
                steps, values = np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)
                parts.setdefault(name, []).append((steps, values))
                bad = ~np.isfinite(values)
                if name == "loss" and bad.any():
                    step = int(steps[bad][0])
                    self.first_nonfinite[rank] = min(step, self.first_nonfinite.get(rank, step))
        if self._origins and self.active:  # the earliest first NaN/Inf of any rank, with its rank
            # at the same step, a rank that received the NaN in the gradient all-reduce yields to its maker
            rank, origin = min(self._origins.items(),
                               key=lambda item: (item[1]["step"], item[1].get("stage") == "outside", item[0]))
            self.sentinel.origin = dict(origin, rank=rank)
        rows = []
        for name, part in parts.items():
            param = name.split("/", 1)[1] if "/" in name else None
            if name == "grad_norm/total":
                continue  # recomputed from the merged parameters' norms
            if param in self.replicas and name.startswith(("grad_norm/", "weight_norm/")):
                rows.append((name, *_norm_by_step(part, self.replicas[param])))
            elif param in self.replicas and name.startswith("update_ratio/"):
                rows.append((name, *_ratio_by_step(part, parts.get("weight_norm/" + param, []))))
            else:
                rows.append((name, *_mean_by_step(part)))
        grads = [(s, v) for name, s, v in rows if name.startswith("grad_norm/")]
        if grads:
            steps, squares = _sum_by_step([(s, v ** 2) for s, v in grads])
            rows.append(("grad_norm/total", steps, np.sqrt(squares)))
        return rows

    def _none_counts(self) -> dict[str, int]:
        """Rank 0: a parameter had no gradient at a sampled step only if every rank holding
        a part of it saw none (FSDP1 leaves a parameter's view empty on the ranks without it)."""
        counts = self.grads.none_counts
        if self.rank != 0 or not self._gradless:
            return counts
        views = {**self._gradless, 0: (counts, self.grads.sampled,
                                       {n for n, p in self.params if not local_tensor(p).numel()})}
        merged = {}
        for name in counts:
            holders = [(none.get(name, 0), sampled) for none, sampled, empty in views.values() if name not in empty]
            never = bool(holders) and all(sampled and c >= sampled for c, sampled in holders)
            merged[name] = self.grads.sampled if never else 0
        return merged


def _sum_by_step(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps = np.concatenate([s for s, _ in parts])
    values = np.concatenate([v for _, v in parts])
    unique, inverse = np.unique(steps, return_inverse=True)
    sums = np.zeros(len(unique))
    np.add.at(sums, inverse, values)
    return unique, sums


def _mean_by_step(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Average the ranks' values of each step; a non-finite value on any rank stays non-finite."""
    unique, sums = _sum_by_step(parts)
    _, counts = _sum_by_step([(s, np.ones(len(s))) for s, _ in parts])
    return unique, sums / counts


def _norm_by_step(parts, replicas: int) -> tuple[np.ndarray, np.ndarray]:
    """The norm of a whole parameter from its shards' norms: sqrt(sum of squares / replicas)."""
    unique, squares = _sum_by_step([(s, v ** 2) for s, v in parts])
    return unique, np.sqrt(squares / replicas)


def _ratio_by_step(ratios, weight_norms) -> tuple[np.ndarray, np.ndarray]:
    """||Δw|| / ||w|| of a whole parameter from its shards' ratios, each weighted by its
    shard's weight norm (measured at the same step): sqrt(Σ(r·|w|)²) / sqrt(Σ|w|²)."""
    if len(ratios) != len(weight_norms):
        return _mean_by_step(ratios)
    deltas, bases = [], []
    for (steps, ratio), (w_steps, norm) in zip(ratios, weight_norms):
        at = dict(zip(w_steps.tolist(), norm.tolist()))
        w = np.asarray([at.get(s, np.nan) for s in steps.tolist()])
        deltas.append((steps, (ratio * w) ** 2))
        bases.append((steps, w ** 2))
    unique, delta = _sum_by_step(deltas)
    _, base = _sum_by_step(bases)
    return unique, np.sqrt(delta) / np.maximum(np.sqrt(base), 1e-12)


def watch(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *, group=None,
          **options) -> DistributedDoctor:
    """Watch this rank's part of the model; call on every rank, and `report()` on rank 0."""
    return DistributedDoctor(model, optimizer, group=group, **options)
