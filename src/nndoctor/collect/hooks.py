"""The doctor's hooks, as objects that a copy of the model leaves behind.

Training scripts pickle their whole model (`torch.save(model)` every epoch) and deep-copy it
(EMA weights, the best model so far) while it is watched. A closure registered as a hook
cannot be pickled, and a copied hook would keep feeding the doctor from the copy long after
the watch ended. So each hook is a `Hook` object, and while a module carries one, its class
is registered with `copyreg` to pickle and copy without our hooks: the checkpoint holds
exactly what it would hold without nndoctor (nothing that needs nndoctor to load), and a
copy is not watched. A hook reached some other way (a class with its own `__deepcopy__`,
a pickled hook dictionary) copies to `Inert`, a no-op.
"""
from __future__ import annotations

import copyreg
from collections import OrderedDict

import torch

from .case import is_examining

# nn.Module attributes that hold hooks keyed by handle id (the *_with_kwargs and
# *_always_called ones map the same ids to flags)
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
              "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
              "_backward_hooks", "_backward_pre_hooks")
PICKLE_PROTOCOL = 2  # torch.save's; the reduction it gives is valid for every protocol


class Inert:
    """What a hook of ours becomes in a copy: a hook that does nothing."""

    def __call__(self, *args, **kwargs) -> None:
        return None


class Hook:
    """Calls `fns` under the doctor's guard and returns None, so it changes nothing."""

    __slots__ = ("doctor", "fns")

    def __init__(self, doctor, fns: list):
        self.doctor = doctor
        self.fns = fns

    def __call__(self, *args) -> None:
        if torch.compiler.is_compiling():  # traced into a compiled graph: add nothing to it, read
            self.doctor.compiled = True     # nothing Dynamo would guard on; only say the model runs compiled
            return
        doctor = self.doctor
        if doctor.active and not is_examining():
            try:
                for fn in self.fns:
                    fn(*args)
            except Exception as exc:  # our bug must never stop the user's training
                doctor._fail(exc)

    def __reduce__(self):
        return (Inert, ())

    def __deepcopy__(self, memo) -> Inert:
        return Inert()


_registered: dict[type, list] = {}  # class -> [holders, the copyreg entry it had before]


def _without_our_hooks(module):
    """copyreg reducer: the module's own reduction, with our hooks left out of its state."""
    previous = _registered[type(module)][1]
    reduced = previous(module) if previous else module.__reduce_ex__(PICKLE_PROTOCOL)
    if not (isinstance(reduced, tuple) and len(reduced) >= 3 and isinstance(reduced[2], dict)):
        return reduced
    state = reduced[2]
    ours = {key for name in HOOK_DICTS if isinstance(state.get(name), dict)
            for key, hook in state[name].items() if isinstance(hook, Hook)}
    if not ours:
        return reduced
    state = dict(state)
    for name in HOOK_DICTS:
        if isinstance(state.get(name), dict):
            state[name] = OrderedDict((k, v) for k, v in state[name].items() if k not in ours)
    return (*reduced[:2], state, *reduced[3:])


def register(classes) -> list[type]:
    """Copy and pickle instances of `classes` without our hooks until `release`."""
    held = []
    for cls in set(classes):
        entry = _registered.get(cls)
        if entry is None:
            entry = _registered[cls] = [0, copyreg.dispatch_table.get(cls)]
            copyreg.dispatch_table[cls] = _without_our_hooks
        entry[0] += 1
        held.append(cls)
    return held


def release(classes) -> None:
    for cls in classes:
        entry = _registered.get(cls)
        if entry is None:
            continue
        entry[0] -= 1
        if entry[0] <= 0:
            del _registered[cls]
            if copyreg.dispatch_table.get(cls) is _without_our_hooks:
                if entry[1] is None:
                    del copyreg.dispatch_table[cls]
                else:
                    copyreg.dispatch_table[cls] = entry[1]
