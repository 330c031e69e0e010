"""Running the user's model for a probe without the run noticing.

nndoctor runs the user's modules outside their training: the recurrent through-time probe,
the learning-rate range test, diagnose's dropout probe, the checkup's copies. Such a run
must not call the hooks that the user, a logger or nndoctor's own watcher put on the model
or its optimizer (they count, log, or keep state), and must leave every buffer and every
module's mode as it found them: spectral norm's power iteration and BatchNorm's statistics
advance on each training-mode forward, and then the next training step is not the one the
user would have had.

Hooks that torch itself defines belong to the model's computation (pruning masks, weight
and spectral norm, quantization observers): they keep running, and the buffers they touch
are put back with the others. Tensor hooks on parameters are left alone: they shape
gradients (clamping, masking) and are part of the training recipe.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules import module as module_globals
from torch.optim import optimizer as optimizer_globals

MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
GLOBAL_MODULE_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks",
                       "_global_backward_hooks", "_global_backward_pre_hooks")
OPTIMIZER_HOOKS = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks")
GLOBAL_OPTIMIZER_HOOKS = ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")


def part_of_model(hook) -> bool:
    """A hook torch itself defines: a reparametrization (pruning, weight/spectral norm) or an
    observer that the model's forward depends on."""
    where = getattr(hook, "__module__", None) or type(hook).__module__
    return isinstance(where, str) and (where == "torch" or where.startswith("torch."))


def drop_foreign_hooks(model: nn.Module) -> nn.Module:
    """Remove, for good, every hook torch does not define from `model` (for nndoctor's own copies)."""
    for module in model.modules():
        for attr in MODULE_HOOKS:
            hooks = getattr(module, attr, None)
            for key in [k for k, h in (hooks or {}).items() if not part_of_model(h)]:
                del hooks[key]
    return model


@contextmanager
def foreign_hooks_silenced(model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None):
    """While inside: the global module and optimizer hooks, and those of `model`'s modules and
    `optimizer` that torch does not define, do not run. The original hook tables are put back
    after (the user's handles stay valid)."""
    swapped = []

    def silence(owner, attrs) -> None:
        for attr in attrs:
            hooks = getattr(owner, attr, None)
            if hooks and not all(part_of_model(h) for h in hooks.values()):
                swapped.append((owner, attr, hooks))
                setattr(owner, attr, OrderedDict((k, h) for k, h in hooks.items() if part_of_model(h)))

    try:
        for module in model.modules() if model is not None else ():
            silence(module, MODULE_HOOKS)
        silence(module_globals, GLOBAL_MODULE_HOOKS)
        if optimizer is not None:
            silence(optimizer, OPTIMIZER_HOOKS)
        silence(optimizer_globals, GLOBAL_OPTIMIZER_HOOKS)
        yield
    finally:
        for owner, attr, hooks in reversed(swapped):
            setattr(owner, attr, hooks)


@contextmanager
def modes_kept(model: nn.Module):
    """After, every module is in the mode it was in before (`model.train(flag)` would also flip
    a submodule the user froze in eval mode)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def state_kept(model: nn.Module, grads: bool = False):
    """While inside, `model` may run and change; after, every buffer (persistent or not), the
    mode of every module and, with `grads=True`, every parameter's `.grad` are as before."""
    buffers = [(module, name, tensor, tensor.detach().clone())
               for module in model.modules() for name, tensor in module._buffers.items()
               if tensor is not None and not nn.parameter.is_lazy(tensor)]
    held = [(p, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()] if grads else []
    try:
        with modes_kept(model):
            yield
    finally:
        with torch.no_grad():
            for module, name, tensor, value in buffers:  # the same tensor objects, with their values
                tensor.copy_(value)
                module._buffers[name] = tensor
            for p, grad, value in held:
                if grad is not None:
                    grad.copy_(value)
                p.grad = grad
