"""Forward passes of the root model: which of them were evaluations, how they ran, on what.

One forward hook on the root model (never per module). Each call is noted on the host:
grad mode, train mode, and, in grad mode, a tensor hook on the output that a backward
reaching it sets (the same hook hands the output's gradient to the non-finite sentinel:
one hook per output, not one per collector). At the next optimizer step the forwards of
the window since the last step that no backward reached are *evaluations* (validation,
inference); the others are
training forwards. A forward on the very batch the last training forward saw (a metric on
the training batch, told by a weak reference to that input) is neither.

What the loop rules read, all counted on the host or kept on the device until the flush:
- evaluations in grad mode / in train mode, and in how many windows (loop.eval_with_grad,
  loop.eval_in_train_mode);
- on sampled steps, a sentinel object in the output's autograd node (`grad_fn.metadata`):
  it lives exactly as long as that step's graph, so a weak reference to it tells whether the
  script still holds the graph many steps later (`losses.append(loss)`: loop.graph_retained).
  Each flush looks; the flush that found the most graphs alive is kept (`retained`), since a
  list local to the training function is gone by the time the report is made;
- per-feature mean/std/min/max of the input (data.split_mismatch) and a 2-number fingerprint
  of some rows (loop.eval_on_train_data), of the sampled steps' training forwards and of at
  most EVAL_SAMPLES evaluation candidates per `sample_every` steps — never of every batch.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch

TRAIN_ROWS = 32         # training rows fingerprinted at a sampled step
EVAL_ROWS = 256         # rows fingerprinted per sampled evaluation batch
EVAL_SAMPLES = 2        # evaluation candidates measured per `sample_every` steps
MAX_FEATURES = 256      # features summarized per input (the first ones of the flattened row)
WINDOW = 256            # forwards kept per window before the oldest are judged early (bounded memory)
GRAPHS_KEPT = 64        # sampled graphs followed by weak reference
PRINTS_KEPT = 20_000    # training-row fingerprints kept
BATCHES_KEPT = 200      # measured batches kept per kind
OUTPUTS_HOOKED = 4      # output tensors hooked per forward (a tuple's loss may use any of them)


class _Sentinel:
    """Lives in a step's autograd graph; its weak reference dies with the graph."""
    __slots__ = ("__weakref__",)


class _Forward:
    __slots__ = ("grad", "training", "backward", "rerun", "stats", "prints", "rows", "step")

    def __init__(self, grad: bool, training: bool, rerun: bool, step: int):
        self.grad, self.training, self.rerun, self.step = grad, training, rerun, step
        self.backward = False
        self.stats = self.prints = None
        self.rows = 0


def _tensors(output, limit: int) -> list[torch.Tensor]:
    """The first `limit` tensors of a forward's output (a tensor, tuple, list or dict)."""
    found, todo = [], [output]
    while todo and len(found) < limit:
        item = todo.pop(0)
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (tuple, list)):
            todo.extend(item)
        elif isinstance(item, dict):
            todo.extend(item.values())
    return found


def trained_outputs(output) -> list[torch.Tensor]:
    """The output tensors a backward can reach (among the first OUTPUTS_HOOKED), in grad mode."""
    if not torch.is_grad_enabled():
        return []
    return [t for t in _tensors(output, OUTPUTS_HOOKED) if t.requires_grad]


def _input(args) -> torch.Tensor | None:
    """The forward's first positional tensor argument."""
    for value in args:
        if isinstance(value, torch.Tensor):
            return value
    return None


class ForwardCollector:
    def __init__(self, model: torch.nn.Module, sample_every: int):
        self.model = model
        self.sample_every = sample_every
        self.step = 0
        # host counters, per kind of forward
        self.training = 0
        self.evaluations = 0
        self.eval_grad = 0
        self.eval_train_mode = 0
        self.reruns = 0
        self.eval_windows = {"grad": 0, "train_mode": 0, "any": 0}
        self._window: list[_Forward] = []
        self._grad_seen = False
        self._budget = EVAL_SAMPLES
        self._last_training_input = None      # weak reference to the last grad-mode forward's input
        self._projection: torch.Tensor | None = None
        self._graphs: list[tuple[int, weakref.ref]] = []
        self._graph_step = -1
        self.graphs_freed = 0
        self.retained: tuple[int, list[int], int] = (0, [], 0)  # (at step, steps of graphs still alive, graphs freed by then)
        # measured batches, on the device until the flush, then on the host
        self._pending: list[tuple[str, int, int, torch.Tensor, torch.Tensor]] = []
        self.stats: dict[str, list[tuple[int, np.ndarray]]] = {"train": [], "eval": []}  # (rows, [mean, std, min, max])
        self.prints: dict[str, list[tuple[int, np.ndarray]]] = {"train": [], "eval": []}

    # ---- the hook ------------------------------------------------------------------------
    def on_forward(self, module, args, outputs: list[torch.Tensor], first_grad=None) -> None:
        """A call of the model with its `trained_outputs`; `first_grad` also gets the first
        one's gradient when the backward reaches it."""
        if module is not self.model:
            return  # a copy.deepcopy of the model (an EMA, a teacher) carries the hook along
        x = _input(args)
        rerun = (x is not None and self._last_training_input is not None and self._last_training_input() is x)
        record = _Forward(bool(outputs), module.training, rerun and not outputs, self.step)
        if outputs:
            self._last_training_input = weakref.ref(x) if x is not None else None
            for i, t in enumerate(outputs):
                t.register_hook(self._reached(record, first_grad if i == 0 else None))
            self._follow_graph(outputs[0])
        first = bool(outputs) and not self._grad_seen  # the window's first grad-mode forward: training, usually
        self._grad_seen |= bool(outputs)
        sampled = self.step % self.sample_every == 0
        if x is not None and x.is_floating_point() and x.dim() >= 2 and not record.rerun:
            if first and sampled:
                self._measure(record, x, TRAIN_ROWS)
            elif not first and self._budget > 0:
                self._budget -= 1
                self._measure(record, x, EVAL_ROWS)
        self._window.append(record)
        if len(self._window) > WINDOW:  # a long pass with no optimizer step: judge the oldest half now
            half = WINDOW // 2
            self._classify(self._window[:half])
            self._window = self._window[half:]

    @staticmethod
    def _reached(record: _Forward, then=None):
        def hook(grad):
            record.backward = True
            if then is not None:
                then(grad)
        return hook

    def _follow_graph(self, output: torch.Tensor) -> None:
        """On the first grad-mode forward of a sampled step, leave a sentinel in its graph."""
        if self.step % self.sample_every or self._graph_step == self.step or output.grad_fn is None:
            return
        self._graph_step = self.step
        sentinel = _Sentinel()
        try:
            output.grad_fn.metadata["nndoctor_graph"] = sentinel
        except (AttributeError, RuntimeError, TypeError):  # a node type without metadata: not followed
            return
        self._graphs.append((self.step, weakref.ref(sentinel)))

    def _measure(self, record: _Forward, x: torch.Tensor, rows: int) -> None:
        """Per-feature summary and row fingerprints, left on the device."""
        with torch.no_grad():
            features = x.detach().flatten(1)[:, :MAX_FEATURES].float()
            # two passes about the first row (a constant feature's std exactly 0, no cancellation
            # under a large mean), several times faster on a CPU than std()'s reduction over rows
            shifted = features - features[:1]
            offset = shifted.mean(0)
            std = (shifted - offset).square().mean(0).sqrt()
            record.stats = torch.stack([offset + features[0], std, features.amin(0), features.amax(0)])
            width = features.shape[1]
            if self._projection is None or self._projection.shape[0] != width or self._projection.device != x.device:
                generator = torch.Generator().manual_seed(1234)
                exact = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
                self._projection = torch.randn(width, 2, generator=generator, dtype=torch.float64).to(x.device, exact)
            record.prints = features[:rows].to(self._projection.dtype) @ self._projection
            record.rows = features.shape[0]

    # ---- the optimizer step ----------------------------------------------------------------
    def on_step(self, step: int) -> None:
        """An optimizer step (or a loss logged without one): judge the window's forwards."""
        self._classify(self._window)
        self._window = []
        self._grad_seen = False
        self.step = step + 1
        if self.step % self.sample_every == 0:
            self._budget = EVAL_SAMPLES

    def _classify(self, window: list[_Forward]) -> None:
        kinds = set()
        for f in window:
            if f.rerun:
                self.reruns += 1
                continue
            kind = "train" if f.backward else "eval"
            if kind == "train":
                self.training += 1
            else:
                self.evaluations += 1
                self.eval_grad += f.grad
                self.eval_train_mode += f.training
                kinds |= {"any"} | ({"grad"} if f.grad else set()) | ({"train_mode"} if f.training else set())
            if f.stats is not None:
                self._pending.append((kind, f.step, f.rows, f.stats, f.prints))
                f.stats = f.prints = None  # a graph the script keeps must not keep these too
        for k in kinds:
            self.eval_windows[k] += 1

    # ---- the flush ---------------------------------------------------------------------------
    def flush(self, final: bool = False) -> None:
        """Move the measured batches to the host (one transfer per kind); forget dead graphs.
        At the end, the forwards since the last step are judged too."""
        if final and self._window:
            self._classify(self._window)
            self._window = []
        for kind in ("train", "eval"):
            batch = [(s, n, st, p) for k, s, n, st, p in self._pending if k == kind]
            if not batch or len({st.shape[1] for _, _, st, _ in batch}) > 1:
                continue  # the input's width changed: not comparable, left out
            stats = torch.stack([st for _, _, st, _ in batch]).cpu().numpy().astype(np.float64)
            prints = torch.cat([p for _, _, _, p in batch]).cpu().numpy()
            start = 0
            for (s, n, _, p), st in zip(batch, stats):
                self.stats[kind].append((n, st))
                self.prints[kind].append((s, prints[start:start + len(p)]))
                start += len(p)
            self.stats[kind] = self.stats[kind][-BATCHES_KEPT:]
            self._bound_prints(kind)
        self._pending = []
        alive = [(s, r) for s, r in self._graphs if r() is not None]
        self.graphs_freed += len(self._graphs) - len(alive)
        self._graphs = alive
        if len(alive) > GRAPHS_KEPT:  # keep the oldest and the newest
            half = GRAPHS_KEPT // 2
            self._graphs = alive[:half] + alive[-half:]
        older = [s for s, _ in self._graphs if s < self.step - self.sample_every]
        if len(older) > len(self.retained[1]):  # the flush that saw the most graphs outlive their step
            self.retained = (self.step, older, self.graphs_freed)

    def _bound_prints(self, kind: str) -> None:
        kept = self.prints[kind]
        if kind == "eval":
            self.prints[kind] = kept[-BATCHES_KEPT:]
            return
        while sum(len(p) for _, p in kept) > PRINTS_KEPT:
            kept.pop(0)
