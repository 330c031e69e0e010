"""The first training step as a case to examine: the model, its input batch, its output, the
target and the loss function, taken by hooks wherever training runs.

The pre-flight checks (`nndoctor.preflight`) need exactly what `checkup()` is given: a model,
a batch and a loss. A watcher is given none of them, so `CaseCapture` takes them from the
first training step:

- the model's call: the outermost call (global module forward hooks track the depth) of the
  watched model or of one of its submodules (a LightningModule's `training_step` may call
  `self.net(x)`); with no model given (`nndoctor watch`), of any module with trainable
  parameters. Its positional inputs and its output are kept; for the first call also its
  keyword inputs and, when it returns a mapping (a Hugging Face ModelOutput), every tensor in
  it: a model called as `model(input_ids=..., labels=...)` that computes its own loss has no
  other case (see `preflight/keywords.py`).
- the DataLoader whose batch that call took as its input (`DataLoader.__iter__` and its
  iterator's `__next__` are wrapped until the first step): the data checks then read the
  loader's dataset as diagnose() reads its train_data, not the first batch alone.
- every torch function called after it in grad mode (a `TorchFunctionMode`): the loss
  functions (`F.cross_entropy`, `F.mse_loss`, ...), the loss modules (whose forward is
  attributed to the module, so its `weight` and `label_smoothing` are kept) and the plain
  ops of a hand-written loss (`-(onehot * torch.log(p)).sum(1).mean()`). Scalars that need a
  gradient get a tensor hook that only notes that `backward()` reached them.

At the first optimizer step (or the first backward of a hand-written update) `case()` walks
back from the loss that was backpropagated — a known loss when there is one, else the first
backpropagated scalar — to its leaves: the model's output and the target (the one other
tensor with a row per example). The loss becomes a callable `loss(output, target)` that
replays those ops on any batch, or the loss module itself when it was applied directly.
When the loss raises instead (labels out of range, a float target), the failed call is the
case: the checks then name what made it fail.

Cost: a Python call per torch op, for the first step only; `finish()` removes every hook and
leaves the mode (once it is innermost again). The tensors it keeps are detached; the user's
objects are never run or changed here.
"""
from __future__ import annotations

import inspect
import warnings
import weakref
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _BaseDataLoaderIter

# functional losses and the module that takes the same keyword arguments
LOSS_MODULES = {F.cross_entropy: nn.CrossEntropyLoss, F.nll_loss: nn.NLLLoss, F.mse_loss: nn.MSELoss,
                F.l1_loss: nn.L1Loss, F.smooth_l1_loss: nn.SmoothL1Loss, F.huber_loss: nn.HuberLoss,
                F.binary_cross_entropy: nn.BCELoss, F.binary_cross_entropy_with_logits: nn.BCEWithLogitsLoss,
                F.kl_div: nn.KLDivLoss, F.poisson_nll_loss: nn.PoissonNLLLoss,
                F.gaussian_nll_loss: nn.GaussianNLLLoss}
MAX_OPS = 4000      # ops kept for the walk back: a first step with more is left unexamined (a note says so)
MAX_CALLS = 16      # model calls kept before the first step (gradient accumulation, several inputs)
# ops through which the target is followed back to its batch form (row-preserving reshapes and casts)
TARGET_OPS = {"reshape", "view", "flatten", "squeeze", "unsqueeze", "contiguous", "long", "float", "double",
              "int", "to", "type", "one_hot", "transpose", "permute", "t"}
MIN_TARGET_ROWS = 256  # rows of the first batch for its label prior to stand in for the data's (the rules' baseline): a prior read off n rows is biased low by ~(C-1)/2n nats and spread by ~1/sqrt(n) in each share; 32 rows gave 0.66 for a 0.9 prior (false params.frozen)


_examining = [0]


@contextmanager
def examining():
    """While the pre-flight checks run on copies: the copies carry the watchers' hooks (a deep
    copy keeps them) and train with their own optimizers, so every watcher ignores what it sees."""
    _examining[0] += 1
    try:
        yield
    finally:
        _examining[0] -= 1


def is_examining() -> bool:
    return _examining[0] > 0


@dataclass
class Captured:
    """What the first training step held. `target`/`loss_fn` are None when no loss was found."""
    model: nn.Module
    inputs: tuple                          # the positional inputs of its call
    output: torch.Tensor | None
    target: torch.Tensor | None = None
    loss_fn: object = None
    error: BaseException | None = None     # what the loss raised on this batch
    notes: list[str] = field(default_factory=list)
    keywords: dict = field(default_factory=dict)  # the first call's keyword inputs (tensors and numbers)
    result: dict | None = None             # the first call's output when a mapping: its tensors (loss, logits)
    data: DataLoader | None = None         # the loader whose batch was (inputs[0], target) itself, when one was

    @property
    def x(self) -> torch.Tensor | None:
        """The batch as checkup takes it: one tensor input."""
        if len(self.inputs) == 1 and isinstance(self.inputs[0], torch.Tensor):
            return self.inputs[0]
        return None


@dataclass
class _Op:
    func: object
    args: tuple
    kwargs: dict
    result: object
    loss: object = None          # the loss module/function when this op is a known loss


class _Leaf:
    """A tensor argument of a recorded op (while capturing)."""
    __slots__ = ("tensor",)

    def __init__(self, tensor):
        self.tensor = tensor


class _Ref:
    """In a Replay: the output (key 0), the target (1) or op i's result (2 + i), or part `index` of it."""
    __slots__ = ("key", "index")

    def __init__(self, key: int, index: int | None = None):
        self.key, self.index = key, index


class Replay:
    """The loss as the script computed it: its ops from (output, target) to the scalar, replayed
    on another batch. `loss` is the known loss inside (a module), if any: its kind and settings."""

    def __init__(self, steps: list[tuple], loss=None):
        self.steps = steps   # (func, args, kwargs) with _Ref for computed values, detached constants
        self.loss = loss

    def __call__(self, output, target):
        values = {0: output, 1: target}

        def value(a):
            if isinstance(a, _Ref):
                return values[a.key] if a.index is None else values[a.key][a.index]
            if isinstance(a, (list, tuple)):
                return type(a)(value(v) for v in a)
            if isinstance(a, dict):
                return {k: value(v) for k, v in a.items()}
            return a
        result = None
        for i, (func, args, kwargs) in enumerate(self.steps):
            result = values[2 + i] = func(*value(args), **value(kwargs))
        return result

    def __getattr__(self, name):  # label_smoothing, weight, ignore_index... of the loss inside
        loss = self.__dict__.get("loss")
        if loss is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(loss, name)

    @property
    def __name__(self) -> str:
        return (f"the script's {type(self.loss).__name__} on reshaped tensors" if self.loss is not None
                else "the script's hand-written loss")


def _name(func) -> str:
    return getattr(func, "__name__", "")


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def loss_module(func, kwargs: dict):
    """`F.cross_entropy(..., label_smoothing=0.1)` as `nn.CrossEntropyLoss(label_smoothing=0.1)`."""
    cls = LOSS_MODULES[func]
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})


class CaseCapture(TorchFunctionMode):
    """Hooks that hold the first training step (see the module docstring)."""

    def __init__(self, model: nn.Module | None = None):
        super().__init__()
        self.model = model
        self._members = {id(m) for m in model.modules()} if model is not None else None
        self._depth = 0
        self._calls: dict[int, tuple] = {}    # id(output) -> (module, inputs, output)
        self._first: tuple = ({}, None)        # the first call's (keywords, result): see Captured
        self._sources: dict[int, DataLoader] = {}  # id(output) -> the loader its call's input came from
        self._loaders = weakref.WeakKeyDictionary()  # DataLoader iterator -> its loader
        self._fed: dict[int, tuple] = {}       # id(loader) -> (loader, the tensors of its latest batch)
        self._wrapped: tuple = ()              # the two methods replaced, then our two replacements
        self._ops: list[_Op] = []
        self._made: dict[int, int] = {}        # id(tensor) -> index of the op that made it
        self._derived: set[int] = set()        # ids of tensors computed from a model output
        self._reached: set[int] = set()        # ids of scalars backward() reached
        self._loss_module: nn.Module | None = None
        self._failed: tuple | None = None      # (loss, output, target, exception) of a loss that raised
        self._handles: list = []
        self._entered = False
        self.done = False
        self.overflow = False
        self._examined: tuple | None = None
        self.examined_case: Captured | None = None  # the first step's case, for probes after training

    # ---- on / off -----------------------------------------------------------------
    def install(self) -> None:
        if self.model is not None and any(getattr(m, "_compiled_call_impl", None) for m in self.model.modules()):
            self._skip_compiled()  # model.compile(): its first call would be traced with our hooks in it
            return
        self._handles = global_module_hooks(self._enter_module, self._leave_module, with_kwargs=True)
        self._wrap_loaders()
        self.__enter__()
        self._entered = True

    def finish(self) -> None:
        """Stop capturing: remove the hooks, drop every tensor held, leave the mode when it is
        innermost (else it passes everything through until `leave_mode` can leave it)."""
        self.done = True
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._calls, self._ops, self._made, self._reached, self._derived = {}, [], {}, set(), set()
        self._first = ({}, None)
        self._sources, self._fed = {}, {}
        self._unwrap_loaders()
        self.leave_mode()

    @property
    def lingering(self) -> bool:
        """Finished but still on the mode stack: every torch function call still passes through it."""
        return self.done and self._entered

    def leave_mode(self) -> None:
        """Leave the mode if it is innermost. It is not while a mode entered after it is active,
        nor inside its own dispatch (torch takes a mode off the stack while it handles a call,
        and `loss.backward()` is such a call: a capture finished in a backward hook cannot
        leave there). The watcher calls this again before each forward of the model."""
        if not self._entered:
            return
        from torch.overrides import _get_current_function_mode_stack
        stack = _get_current_function_mode_stack()
        if stack and stack[-1] is self:
            self.__exit__(None, None, None)
            self._entered = False

    def _wrap_loaders(self) -> None:
        """Note which DataLoader yields each batch (the tensors themselves, not copies), so the
        model call that takes one as its input names the data it trains on."""
        iterate, advance, capture = DataLoader.__iter__, _BaseDataLoaderIter.__next__, self

        def __iter__(loader):
            iterator = iterate(loader)
            if not capture.done and isinstance(iterator, _BaseDataLoaderIter):
                capture._loaders[iterator] = loader
            return iterator

        def __next__(iterator):
            batch = advance(iterator)
            loader = None if capture.done else capture._loaders.get(iterator)
            if loader is not None:
                capture._fed[id(loader)] = (loader, list(_tensors(batch)))
            return batch
        DataLoader.__iter__, _BaseDataLoaderIter.__next__ = __iter__, __next__
        self._wrapped = (iterate, advance, __iter__, __next__)

    def _unwrap_loaders(self) -> None:
        if not self._wrapped:
            return
        iterate, advance, ours_iter, ours_next = self._wrapped
        if DataLoader.__iter__ is ours_iter:  # else wrapped again since: ours stays, inert once done
            DataLoader.__iter__ = iterate
        if _BaseDataLoaderIter.__next__ is ours_next:
            _BaseDataLoaderIter.__next__ = advance
        self._wrapped = ()

    def _source(self, args) -> DataLoader | None:
        """The loader whose latest batch's first tensor is this call's first input."""
        first = args[0] if args else None
        for loader, tensors in self._fed.values():
            if tensors and tensors[0] is first:
                return loader
        return None

    def _data(self, out, target) -> DataLoader | None:
        """The loader that yielded (input, target) as the first two tensors of one batch: its
        dataset's rows are then the (input, target) pairs the data checks sample."""
        loader = self._sources.get(id(out))
        tensors = self._fed.get(id(loader), (None, []))[1] if loader is not None else []
        return loader if len(tensors) >= 2 and tensors[1] is target else None

    # ---- module hooks ---------------------------------------------------------------
    def _wanted(self, module: nn.Module) -> bool:
        if self._members is not None:
            return id(module) in self._members
        return any(p.requires_grad for p in module.parameters())

    def _skip_compiled(self) -> None:
        """A compiled model's first step is not captured: Dynamo would trace the capture's hooks
        and mode into the graph and compile it again once they are gone; running the step eagerly
        instead would change its floating-point results."""
        self.finish()
        self._examined = ([], ["The pre-flight checks did not run: the model runs compiled (torch.compile), and "
                               "capturing its first step would recompile it. Call nndoctor.checkup on the eager "
                               "model before compiling it for the structure, init, data and loss checks."], {}, None)

    def _enter_module(self, module, args) -> None:
        if self.done:
            return
        if compiled_wrapper(module) and self._wanted(module._orig_mod):
            self._skip_compiled()  # torch.compile(model) is called: before Dynamo traces anything
            return
        if isinstance(module, nn.modules.loss._Loss) and self._loss_module is None:
            self._loss_module = module
        self._depth += 1

    def _leave_module(self, module, args, *rest) -> None:
        """rest: (kwargs, output); after a forward that raised, torch 2.13 calls an always-called
        global hook without the kwargs (and the output is None)."""
        kwargs, output = rest if len(rest) == 2 else ({}, rest[-1])
        if self.done:
            return
        self._depth = max(0, self._depth - 1)
        if module is self._loss_module:
            self._loss_module = None
            return
        if self._depth or not torch.is_grad_enabled() or isinstance(module, nn.modules.loss._Loss) \
                or not self._wanted(module) or len(self._calls) >= MAX_CALLS:
            return
        out = next(_tensors(output), None)
        if out is None:
            return
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        if not self._calls:  # kept for the first call only: a large vocabulary's logits are big
            result = {k: v.detach() for k, v in output.items() if isinstance(v, torch.Tensor)} \
                if isinstance(output, Mapping) else None
            self._first = ({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()
                            if isinstance(v, (torch.Tensor, int, float))}, result)
        self._calls[id(out)] = (module, _detached(args), out)
        source = self._source(args)
        if source is not None:
            self._sources[id(out)] = source

    # ---- the function mode ------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.done or self._depth and self._loss_module is None or not torch.is_grad_enabled() \
                or not self._calls:
            return func(*args, **kwargs)
        known = func in LOSS_MODULES
        loss = (self._loss_module if self._loss_module is not None else loss_module(func, kwargs)) if known else None
        try:
            result = func(*args, **kwargs)
        except Exception as exc:
            if known and self._failed is None:
                self._failed = (loss, *_leading(args, kwargs), exc)
            raise
        self._record(func, args, kwargs, result, loss)
        return result

    def _record(self, func, args, kwargs, result, loss) -> None:
        if len(self._ops) >= MAX_OPS:
            self.overflow = True
            return
        inputs = [t for t in _tensors((args, kwargs))]
        if not inputs:
            return
        index = len(self._ops)
        self._ops.append(_Op(func, _leaves(args), _leaves(kwargs), result, loss))
        derived = any(id(t) in self._derived or id(t) in self._calls for t in inputs)
        for t in _tensors(result):
            self._made[id(t)] = index
            if derived:
                self._derived.add(id(t))
            if t.dim() == 0 and t.is_floating_point() and t.requires_grad:
                t.register_hook(self._reached_hook(id(t)))

    def _reached_hook(self, key: int):
        def hook(grad):
            self._reached.add(key)
        return hook

    # ---- the case ---------------------------------------------------------------------
    def examine(self) -> tuple | None:
        """(findings, notes, meta, targets) of the pre-flight checks on the first step's case,
        computed once; the capture is finished by then. None when no model call was seen."""
        if self._examined is None and not self.done:
            captured = self.case()
            if captured is None:
                return None
            self.finish()
            from ..preflight import describe_targets, examine_captured
            try:
                with examining():
                    findings, notes, meta = examine_captured(captured)
                targets = None
                if captured.data is not None:  # examine_captured kept it: its rows are the training data
                    targets = describe_targets(captured.data, captured.loss_fn)
                elif captured.target is not None and captured.x is not None and len(captured.target) >= MIN_TARGET_ROWS:
                    targets = describe_targets((captured.x, captured.target), captured.loss_fn)
            except Exception as exc:  # our bug: the run is still watched, without the pre-flight
                findings, notes, meta, targets = [], [f"The pre-flight checks failed at the first step "
                                                      f"({type(exc).__name__}: {exc})."], {}, None
            self._examined = (findings, notes, meta, targets)
            self.examined_case = captured
        return self._examined

    def case(self) -> Captured | None:
        """The case of the first step (after its backward), or None when no model call was seen."""
        captured = self._case()
        if captured is not None:
            captured.keywords, captured.result = self._first
        return captured

    def _case(self) -> Captured | None:
        if self._failed is not None:
            return self._failed_case()
        if not self._calls:
            return None
        reached = [i for i, op in enumerate(self._ops)
                   if any(id(t) in self._reached for t in _tensors(op.result))]
        known = [i for i in reached if self._ops[i].loss is not None]
        for index in known + self._roots(reached):
            captured = self._walk(index)
            if captured is not None:
                return captured
        module, inputs, out = next(iter(self._calls.values()))
        note = ("the loss of the first step was not found among the traced ops"
                + (" (too many ops before the first step)" if self.overflow else ""))
        return Captured(module, inputs, out.detach(), notes=[note])

    def _roots(self, reached: list[int]) -> list[int]:
        """The backpropagated scalars no other one was computed from (the loss backward() was
        called on), each without a trailing positive scaling (`loss / accumulation`,
        GradScaler's `loss * scale`): the loss value the checks judge is the unscaled one."""
        consumed = {self._made[id(leaf.tensor)] for i in reached
                    for leaf in _leaf_list((self._ops[i].args, self._ops[i].kwargs)) if id(leaf.tensor) in self._made}
        roots = [i for i in reversed(reached) if i not in consumed]
        return [self._unscaled(i) for i in roots]

    def _unscaled(self, index: int) -> int:
        while True:
            op = self._ops[index]
            name = _name(op.func)
            if name not in ("mul", "__mul__", "__rmul__", "div", "__truediv__") or len(op.args) != 2:
                return index
            a, b = op.args
            if name == "__rmul__":
                a, b = b, a
            scaled = a.tensor if isinstance(a, _Leaf) else None
            factor = b.tensor if isinstance(b, _Leaf) else b
            if isinstance(factor, torch.Tensor):
                if factor.numel() != 1 or factor.requires_grad:
                    return index
                factor = float(factor)
            made = self._made.get(id(scaled)) if scaled is not None else None
            if made is None or not isinstance(factor, (int, float)) or factor <= 0 or scaled.dim() != 0:
                return index
            index = made

    def _walk(self, index: int) -> Captured | None:
        """The ops from a model output (and a target) to op `index`'s result, as a Replay."""
        needed, stack, leaves = set(), [index], []
        while stack:
            i = stack.pop()
            if i in needed:
                continue
            needed.add(i)
            for leaf in _leaf_list((self._ops[i].args, self._ops[i].kwargs)):
                made = self._made.get(id(leaf.tensor))
                # the output's side is replayed; the target's only through reshapes and casts
                # (`y.view(-1)`, `F.one_hot(y)`): `y[idx]` is the target itself
                if made is not None and made < i and (id(leaf.tensor) in self._derived
                                                       or _name(self._ops[made].func) in TARGET_OPS):
                    stack.append(made)
                else:
                    leaves.append(leaf.tensor)
        outputs = [t for t in leaves if id(t) in self._calls]
        if not outputs:
            return None
        module, inputs, out = self._calls[id(outputs[0])]
        rows = out.shape[0] if out.dim() else None
        others = {id(t): t for t in leaves if id(t) not in self._calls and not t.requires_grad
                  and t.dim() and t.shape[0] == rows}
        op = self._ops[index]
        loss = op.loss
        if loss is not None and len(needed) == 1 and len(op.args) >= 2 \
                and isinstance(op.args[0], _Leaf) and op.args[0].tensor is out and isinstance(op.args[1], _Leaf):
            target = op.args[1].tensor  # the loss applied to the output itself: the loss is the module
            return Captured(module, inputs, out.detach(), target.detach(), loss, data=self._data(out, target))
        if len(others) != 1:
            return Captured(module, inputs, out.detach(),
                            notes=[f"the target of the loss could not be told apart ({len(others)} candidates)"])
        (target_id, target), = others.items()
        order = sorted(needed)
        refs = {id(out): (0, None), target_id: (1, None)}
        steps = []
        for n, i in enumerate(order):
            o = self._ops[i]
            steps.append((o.func, _replayable(o.args, refs), _replayable(o.kwargs, refs)))
            if isinstance(o.result, torch.Tensor):
                refs.setdefault(id(o.result), (2 + n, None))
            elif isinstance(o.result, (tuple, list)):  # max, split, sort: later ops take one part
                for k, t in enumerate(o.result):
                    if isinstance(t, torch.Tensor):
                        refs.setdefault(id(t), (2 + n, k))
        return Captured(module, inputs, out.detach(), target.detach(), Replay(steps, loss),
                        data=self._data(out, target))

    def _failed_case(self) -> Captured | None:
        loss, output, target, error = self._failed
        call = self._calls.get(id(output)) if output is not None else None
        if call is None:  # the loss raised on a reshaped output: examine the model without it
            if not self._calls:
                return None
            call = next(iter(self._calls.values()))
            loss, target = None, None
        module, inputs, out = call
        return Captured(module, inputs, out.detach(), target.detach() if isinstance(target, torch.Tensor) else None,
                        loss, error=error, data=self._data(out, target))


class _HiddenWarning:
    """A warnings filter of ours, removable like a hook handle."""

    def __init__(self, message: str):
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
        self.entry = warnings.filters[0]

    def remove(self) -> None:
        if self.entry in warnings.filters:
            warnings.filters.remove(self.entry)
            warnings._filters_mutated()  # the registries' cache of filter decisions is stale


def global_module_hooks(pre, post, with_kwargs: bool = False) -> list:
    """Handles of a global forward pre-hook and an always-called forward hook. While any global
    hook exists torch warns at each call of a `torch.compile(model)` wrapper; that warning is
    ours (under `-W error` it would stop the user's script), so it is hidden until the handles
    are removed."""
    from torch.nn.modules import module as hooks
    post_handle = hooks.register_module_forward_hook(post, with_kwargs=with_kwargs, always_call=True)
    return [hooks.register_module_forward_pre_hook(pre), post_handle, _KwargsFlag(post_handle.id),
            _HiddenWarning(r"Using `torch\.compile\(module\)` when there are global hooks")]


class _KwargsFlag:
    """Removes a global forward hook's with_kwargs flag, which the hook's own handle leaves
    behind (torch 2.13): torch would go on counting a global hook, and warning about it."""

    def __init__(self, key: int):
        self.key = key

    def remove(self) -> None:
        from torch.nn.modules import module as hooks
        hooks._global_forward_hooks_with_kwargs.pop(self.key, None)


def compiled_wrapper(module: nn.Module) -> bool:
    """`torch.compile(model)`'s wrapper, known by name: importing Dynamo costs seconds, and a
    lookup in sys.modules inside a traced hook makes Dynamo recompile."""
    return type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod")


def _leading(args, kwargs):
    """(input, target) of a loss call."""
    first = args[0] if args else kwargs.get("input")
    second = args[1] if len(args) > 1 else kwargs.get("target")
    return first, second


def _leaves(value):
    if isinstance(value, torch.Tensor):
        return _Leaf(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_leaves(v) for v in value) if not hasattr(value, "_fields") else value
    if isinstance(value, dict):
        return {k: _leaves(v) for k, v in value.items()}
    return value


def _replayable(value, refs: dict):
    """An op's arguments for the Replay: computed values as _Ref, other tensors detached (a
    parameter in a penalty term is read, never trained, by the checks)."""
    if isinstance(value, _Leaf):
        ref = refs.get(id(value.tensor))
        return _Ref(*ref) if ref is not None else value.tensor.detach()
    if isinstance(value, (list, tuple)):
        return type(value)(_replayable(v, refs) for v in value)
    if isinstance(value, dict):
        return {k: _replayable(v, refs) for k, v in value.items()}
    return value


def _leaf_list(value):
    if isinstance(value, _Leaf):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaf_list(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _leaf_list(v)


def _detached(args) -> tuple:
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
