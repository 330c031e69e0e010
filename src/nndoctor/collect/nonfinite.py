"""Where NaN/Inf starts, at a cost per step that does not grow with the model.

Every training step the sentinel holds four things, with no Python call per module: the
model's input (a forward pre-hook on the model), its output (a forward hook), the gradient
the loss sends back into the output (a tensor hook on the output, shared with
collect/forwards.py), and, at the optimizer step, the gradients of a few parameters spread
over the model. A check that is kept is the min and max of a tensor (`aminmax`): non-finite exactly
when a NaN/Inf is there, never an overflow of finite values (a float32 sum of large ones
would be), and every value of a tensor is seen (no strided sample that one bad row could
slip through). A NaN/Inf anywhere in a step reaches those gradients, so on the CPU, where a
check is read at once, only they are checked each step, in three operations whatever the size
of the batch or the model (their sum: not finite when a value is not), and the
input, output and output gradient the step held are checked when a gradient is not finite; a
forward no backward reached (a step the script skipped because its loss was NaN, an
evaluation in grad mode) reaches no gradient, so it is checked whole. On an accelerator,
whose checks are read only once the device has them, all four are checked every step on the
device.

The checks tell the stage where the first non-finite value appeared: the data (`<input>`),
the model's forward, the loss (the output was finite but its gradient was not: NaN
targets, a log of 0 in a hand-written loss: `<loss>`), or the model's backward. For the
model's own stages the module is found by replaying the step: the checks are read when the
device has them (`published`, never waiting), at the optimizer step, before the update, so
the parameters are the ones the step used; the step's input then runs through the model
again with a check on every module's output and, for the backward, the captured output
gradient is sent back with `torch.autograd.grad` (nothing reaches `.grad`). The replay
forks the RNG from the state the step started with, restores every buffer (BatchNorm
statistics) and calls none of the user's hooks, so training goes on as if it had not run.
It runs once, for the first non-finite step.
"""
from __future__ import annotations

import contextlib
import functools
import math
from collections import deque

import numpy as np
import torch
from torch import nn
from torch.nn.modules import module as module_globals

from .activations import first_tensor
from .buffer import StepBuffer
from .forwards import trained_outputs
from .gradients import local_tensor
from .hooks import HOOK_DICTS

INPUT, LOSS, FORWARD, BACKWARD = "<input>", "<loss>", "forward", "backward"
OUTSIDE = "outside"   # non-finite gradients that the model's own backward, replayed, did not make
UNSEEN = "unseen"     # non-finite gradients of a step whose forward pass was not watched (watching began later)
GRAD_CHECKED = 3      # parameters whose gradients are checked every step: first, middle, last
CHECKS_HELD = 256     # checks kept while no step ends (a model called without an optimizer step)
REPLAYABLE = 4        # forward passes of one step kept for the replay (gradient accumulation runs several)
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                "_global_backward_pre_hooks", "_global_forward_hooks_always_called",
                "_global_forward_hooks_with_kwargs")


def extremes(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(min, max) as 0-d tensors: both finite exactly when `t` holds no NaN/Inf (a NaN
    propagates into both), and never an overflow of finite values. On the CPU `aminmax` is
    10-20x cheaper than `isfinite().all()` or an inf-norm."""
    if t.numel() == 0:
        return ()
    return torch.aminmax(t.detach() if t.requires_grad else t)  # (stacked at the step's end, in float32 or wider)


def total(row: torch.Tensor) -> torch.Tensor:
    """One number that is finite exactly when every check in `row` is: their sum in float64
    (no sum of float32 extremes overflows it), one operation instead of isfinite + all."""
    return row.sum(dtype=torch.float64)


def published(value: torch.Tensor | None, event=None) -> float | None:
    """The value of a 0-d check if the host already has it, else None; never waits. On the
    CPU a tensor is host memory; an accelerator's check is a pinned copy read once its
    `event` has completed. The only place the sentinel reads a value between flushes."""
    if value is None or (event is not None and not event.query()):
        return None
    return float(value)


def _floating(value) -> torch.Tensor | None:
    t = first_tensor(value)
    return t if t is not None and t.is_floating_point() else None


def model_input(args, kwargs) -> torch.Tensor | None:
    """The first floating-point tensor the model is called with (None for token ids)."""
    x = _floating(args) if args else None
    if x is None and kwargs:
        x = _floating([v for v in kwargs.values() if isinstance(v, torch.Tensor) and v.is_floating_point()])
    return x


def rng_state(x: torch.Tensor | None) -> tuple:
    """The random state a forward pass on input `x` starts from (the CPU's, and the input's
    CUDA device's), so that the replay draws the same dropout masks."""
    on_cuda = x is not None and x.device.type == "cuda"
    return (torch.get_rng_state(), x.device if on_cuda else None,
            torch.cuda.get_rng_state(x.device) if on_cuda else None)


class _Forward:
    """One training forward pass of the model, kept until the step ends: for its checks and
    a replay."""
    __slots__ = ("args", "kwargs", "rng", "input", "output", "output_grad", "checked")

    def __init__(self, args, kwargs, rng, x):
        self.args, self.kwargs, self.rng, self.input = args, kwargs, rng, x
        self.output: torch.Tensor | None = None       # detached: holding it keeps no graph alive
        self.output_grad: torch.Tensor | None = None
        self.checked = False


class NonFiniteSentinel:
    def __init__(self, model: nn.Module, names: dict[nn.Module, str]):
        self.model = model
        self.names = names
        self.checked: list[nn.Parameter] = []
        self.rows = StepBuffer()
        self.origin: dict | None = None
        self.order: list[str] = []   # leaf module names in execution order (from a sampled step)
        self.replays = 0
        self.forwards = 0            # training forwards seen (none when the model runs compiled)
        self._stages: list[str] = []              # the checks of this step: their stage ...
        self._values: list[torch.Tensor] = []     # ... and their 0-d values, stacked at the step's end
        self._forwards: deque[_Forward] = deque(maxlen=REPLAYABLE)
        self._found: dict | None = None          # the replay's verdict on the first bad step
        self._pending: list = []                 # (step, pinned flag, event) awaiting the device
        self._replaying = False
        self.wrap = lambda fns: fns[0]  # the watcher wraps the output's tensor hook in its guard

    def check_gradients(self, params: list) -> None:
        """Check the gradients of `GRAD_CHECKED` of these (name, parameter) pairs, spread from
        input to output: an Inf made in the backward flows on towards the input. At each place
        the module's smallest parameter is read (a bias: the sum of the same output gradient
        its weight's gradient is made from, so non-finite with it, at a fraction of the cost).
        A gradient that a hook of the user's can rewrite is read whole: its hook is not the backward."""
        spread = np.unique(np.linspace(0, len(params) - 1, GRAD_CHECKED).round().astype(int)) if params else []
        owner = [name.rpartition(".")[0] for name, _ in params]
        smallest = [min((p for (_, p), o in zip(params, owner) if o == owner[i]), key=lambda p: local_tensor(p).numel())
                    for i in spread]
        hooked = [p for _, p in params if getattr(p, "_backward_hooks", None) or getattr(p, "_post_accumulate_grad_hooks", None)]
        self.checked = list({id(p): p for p in [*smallest, *hooked]}.values())

    # ---- every step: two hooks on the model, one on its output, one call at the step ------
    def on_input(self, module, args, kwargs) -> None:
        if self._replaying or not torch.is_grad_enabled():
            return  # validation forwards and our own replay are not training
        x = model_input(args, kwargs)
        self._input(args, kwargs, x, rng_state(x) if self.origin is None and self._found is None else None)

    def _input(self, args, kwargs, x, rng) -> None:
        self.forwards += 1
        if len(self._forwards) == REPLAYABLE:  # more forwards than kept (accumulation): check the oldest now
            self._check_forward(self._forwards[0])
        self._forwards.append(_Forward(args, kwargs, rng, x))

    def adopt(self, args, rng, output) -> None:
        """A forward pass of this step that ran before watching began (`nndoctor watch` finds
        the model at its first backward): checked and kept for the replay like a hooked one."""
        self._input(args, {}, model_input(args, {}), rng)
        self.on_output(trained_outputs(output))

    def on_output(self, outputs: list[torch.Tensor]):
        """The forward's trained outputs (collect/forwards.py chose them): the first is held;
        returns the hook for its gradient (the forward collector registers it), or None."""
        if self._replaying or not torch.is_grad_enabled() or not self._forwards or not outputs:
            return None
        forward = self._forwards[-1]
        forward.output = outputs[0].detach()
        return self.wrap([functools.partial(self._on_output_grad, forward)])

    @staticmethod
    def _on_output_grad(forward: _Forward, grad: torch.Tensor) -> None:
        forward.output_grad = grad.detach() if grad.requires_grad else grad

    def _check_forward(self, forward: _Forward) -> None:
        if forward.checked:
            return
        forward.checked = True
        for stage, tensor in (("input", forward.input), ("output", forward.output),
                              ("output_grad", forward.output_grad)):
            if tensor is not None:
                self._note(stage, tensor)

    def _note(self, stage: str, tensor: torch.Tensor) -> None:
        if len(self._values) >= CHECKS_HELD:  # no step end in sight (no optimizer, none logged): stay bounded
            self._stages, self._values = self._stages[-CHECKS_HELD // 2:], self._values[-CHECKS_HELD // 2:]
        values = extremes(tensor)
        self._values += values
        self._stages += [stage] * len(values)

    def _row(self) -> torch.Tensor | None:
        """This step's checks as one float32 vector on the device of the first."""
        if not self._values:
            return None
        device = self._values[0].device
        return torch.stack([v if v.device == device and v.dtype == torch.float32 else v.to(device, torch.float32)
                            for v in self._values])

    def end_step(self, step: int) -> None:
        """At the optimizer step (the gradients are there, the update is not done yet)."""
        grads = [local_tensor(p.grad) for p in self.checked  # a DTensor (FSDP2): this rank's shard
                 if p.grad is not None and not p.grad.is_sparse]
        if self._finite_at_once(grads):
            self._forwards.clear()
            return
        for grad in grads:
            self._note("grads", grad)
        for forward in self._forwards:
            if forward.output_grad is None:  # no backward reached it: its NaN reaches no gradient
                self._check_forward(forward)
        row = self._row()
        value = published(total(row)) if row is not None and row.device.type == "cpu" else None  # host memory
        if value is None or not math.isfinite(value):
            for forward in self._forwards:  # a gradient is not finite, or none was read now: check the rest
                self._check_forward(forward)
            row = self._row()
            if row is not None:  # kept for the flush; a step read finite at once needs no row
                self.rows.append(step, tuple(self._stages), row)
                if self.origin is None and self._found is None:
                    self._poll(step, row, self._stages)
        self._stages, self._values = [], []
        self._forwards.clear()

    def _finite_at_once(self, grads: list[torch.Tensor]) -> bool:
        """The common step on the CPU, in three operations: the checked gradients' sum read at
        once is finite, every forward of the step was reached by its backward and no check is
        pending. A NaN/Inf makes the sum non-finite; so does, rarely, an overflow of finite
        values, and then the exact checks (`extremes`) of the full path tell them apart. (In
        float32, not float64: the cast costs ~30 µs on a CPU whose caches the backward emptied.)"""
        grads = [g for g in grads if g.numel()]  # an empty shard (FSDP2: a bias smaller than the ranks) says nothing
        if not grads or self._values:
            return False
        for forward in self._forwards:
            if forward.output_grad is None:
                return False
        for grad in grads:
            if grad.device.type != "cpu":
                return False
        flat = [g if g.dim() == 1 else g.reshape(-1) for g in grads]
        value = published((torch.cat(flat) if len(flat) > 1 else flat[0]).sum(dtype=torch.float32))
        return value is not None and math.isfinite(value)

    def _poll(self, step: int, row: torch.Tensor, stages: list[str]) -> None:
        value, event = total(row), None
        if value.device.type != "cpu":  # an accelerator: a pinned copy, read if it is there before the update
            host = torch.empty((), dtype=value.dtype, pin_memory=True)
            host.copy_(value, non_blocking=True)
            if value.device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
            value = host
        read = published(value, event)
        if read is not None and not math.isfinite(read):  # a check failed: reading the row waits for nothing more
            input_bad = any(not ok for ok, s in zip(row.isfinite().tolist(), stages) if s == "input")
            if not input_bad:  # a bad input is named by its own check, the model's stages by a replay
                self._found = self._replay(step)

    # ---- the replay of the first bad step -----------------------------------------------
    def _replayed(self) -> nn.Module | None:
        """The module to run again: DDP's and DataParallel's inner module (their own forward
        talks to the other processes); none for FSDP, whose forward gathers shards."""
        model = self.model
        if type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            model = model.module
        if any(type(m).__name__.startswith(("FullyShardedDataParallel", "FSDP")) for m in model.modules()):
            return None
        return model

    def _replay(self, step: int) -> dict:
        """Which module made the first NaN/Inf of this step (see the module docstring)."""
        self.replays += 1
        found = {"step": step}
        if self._replayed() is None:
            found["replay_failed"] = "not replayed: the model's forward runs collectives"
            return found
        for forward in list(self._forwards):
            try:
                where = self._replay_forward(forward)
            except Exception as exc:  # an exotic model: keep the stage, say why no module
                found["replay_failed"] = f"{type(exc).__name__}: {exc}"[:200]
                break
            if where:
                found.update(where)
                break
        else:
            if self._forwards:  # forward and backward replayed finite: the gradients came from elsewhere
                found["stage"] = OUTSIDE
        return found

    def _replay_forward(self, forward: _Forward) -> dict | None:
        leaves, outputs, inputs = [], [], []
        names = self.names
        running: list[nn.Module] = []   # the modules whose forward is under way, outermost first
        first: list[tuple] = []         # (module, made in its own code) of the first non-finite value

        def enter(module, args):
            x = _floating(args)
            if not first and running and x is not None and not bool(torch.isfinite(x).all()):
                first.append((running[-1], True))  # made between submodules, by the caller's own ops
            running.append(module)

        def record(module, args, output):
            if running and running[-1] is module:
                running.pop()
            out = _floating(output)
            if out is not None and module in names:
                x = _floating(args)
                leaves.append(module)
                outputs.append(out)
                inputs.append(x if x is not None and x.requires_grad else None)
                if not first and not bool(torch.isfinite(out).all()):
                    first.append((module, False))

        with self._hands_off(forward, enter, record):
            output = self._replayed()(*forward.args, **(forward.kwargs or {}))
            trained = trained_outputs(output)
            if first:  # the first module, in execution order, that made a non-finite value
                module, own_code = first[0]
                found = {"module": names[module], "stage": FORWARD,
                         "bad_parameters": [n for n, p in module.named_parameters(recurse=False)
                                            if not torch.isfinite(p.detach()).all()]}
                return {**found, "own_code": True} if own_code else found
            out = trained[0] if trained else None
            if out is None or forward.output_grad is None:
                return None
            wanted = list({id(t): t for t in [*outputs, *inputs] if t is not None and t.requires_grad}.values())
            if not wanted:
                return None
            grads = torch.autograd.grad(out, wanted, grad_outputs=forward.output_grad.to(out.dtype),
                                        allow_unused=True)
        by_tensor = {id(t): g for t, g in zip(wanted, grads)}

        def finite(t):
            g = by_tensor.get(id(t)) if t is not None else None
            return g is None or bool(torch.isfinite(g).all())

        # backward runs output -> input: the last module whose input gradient is non-finite
        # while the gradient of its output is finite made the first one
        for i in reversed(range(len(leaves))):
            if not finite(inputs[i]) and finite(outputs[i]):
                return {"module": names[leaves[i]], "stage": BACKWARD}
        return None

    @contextlib.contextmanager
    def _hands_off(self, forward: _Forward, enter, record):
        """Run the replay with only `enter` and `record` as hooks, the step's RNG state, and
        every buffer restored after."""
        saved_hooks = [(m, name, getattr(m, name)) for m in self.model.modules()
                       for name in HOOK_DICTS if isinstance(getattr(m, name, None), dict)]
        saved_globals = [(name, dict(getattr(module_globals, name))) for name in GLOBAL_HOOKS
                         if isinstance(getattr(module_globals, name, None), dict)]
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        cpu_rng, device, cuda_rng = forward.rng or (None, None, None)
        devices = [device] if cuda_rng is not None else []
        self._replaying = True
        try:
            for m, name, hooks in saved_hooks:
                setattr(m, name, type(hooks)())
            for name, _ in saved_globals:
                getattr(module_globals, name).clear()
            for m in self.model.modules():
                m._forward_pre_hooks[-1] = enter
                m._forward_hooks[-1] = record
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                if cpu_rng is not None:  # the dropout masks the step drew
                    torch.set_rng_state(cpu_rng)
                if cuda_rng is not None:
                    torch.cuda.set_rng_state(cuda_rng, device)
                yield
        finally:
            self._replaying = False
            for m, name, hooks in saved_hooks:
                setattr(m, name, hooks)
            for name, hooks in saved_globals:
                getattr(module_globals, name).update(hooks)
            with torch.no_grad():
                for b, value in buffers:
                    b.copy_(value)

    # ---- order of the modules, for the report's plots --------------------------------
    def order_hook(self, name: str):
        def hook(module, inputs, output):
            if torch.is_grad_enabled() and name not in self._ordered:
                self._ordered.add(name)
                self.order.append(name)
        return hook

    def order_modules(self):
        """(module, hook) for every leaf module, to attach for one sampled step."""
        self._ordered: set[str] = set(self.order)
        for module, name in self.names.items():
            if module is not self.model and not any(True for _ in module.children()):
                yield module, self.order_hook(name)

    # ---- flush ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Find the first step with a non-finite check in the rows that reached the CPU and
        name its stage (and module, from the replay); keep the first origin ever found."""
        if self.origin is not None:
            self.rows.flush()
            return
        first = None
        for stages, steps, values in self.rows.flush():
            rows = np.flatnonzero(~np.isfinite(values).all(1))
            if rows.size and (first is None or steps[rows[0]] < first[0]):
                first = (int(steps[rows[0]]), stages, ~np.isfinite(values[rows[0]]))
        if first is None:
            return
        step, stages, bad = first
        failed = {stage for stage, b in zip(stages, bad) if b}
        origin = {"step": step}
        if "input" in failed:
            origin["module"] = INPUT
        elif "output_grad" in failed and "output" not in failed:
            origin["module"] = LOSS
        elif "output" not in stages:  # no forward of this step was seen: where it began is unknown
            origin.update(stage=UNSEEN, module=None)
        else:
            origin.update(self._found if self._found and self._found["step"] == step else {})
            if "output" in failed:
                origin["stage"] = FORWARD
            origin.setdefault("stage", BACKWARD)
            origin.setdefault("module", None)
        self.origin = origin
