"""`nndoctor watch SCRIPT.py ARGS...`: diagnose a training script that knows nothing about nndoctor.

The script runs as `__main__`, exactly as `python SCRIPT.py ARGS` would run it. Global hooks
find what the script never hands over:

- the model: the outermost modules called (a global module forward pre-hook and forward
  hook track the call depth) whose parameters the optimizer holds or that get gradients;
  several such modules (an encoder and a decoder called separately) are watched together;
- the optimizer: the first one to step (the global optimizer step pre/post hooks);
- the loss: the scalar tensor that `backward()` is called on (torch.autograd.backward is
  wrapped: PyTorch has no global backward-call hook); with gradient accumulation, the sum of
  the scalars backpropagated before the optimizer steps (the loss the step descends, as the
  HF Trainer callback records it); inside a closure optimizer's step (LBFGS re-evaluates the
  loss), the first, the loss at the start of the step. Under AMP,
  `scaler.scale(loss).backward()`, the loss before scaling (GradScaler.scale is wrapped too).
  The gradients are read at the optimizer step, after GradScaler unscaled them; a step it
  skips never reaches the optimizer's hooks, and its loss is dropped at `scaler.update()`
  (wrapped as well), so it is not added to the next step's.

Scripts without torch.optim (a hand-written `p.data.add_(-lr * p.grad)`) are watched too:
until an optimizer steps, each backward counts as one step and the update is measured
from the weights between two backward passes. The first optimizer step replaces that
provisional watcher with one on the optimizer (gradient accumulation runs several backward
passes before it). The module hooks are removed as soon as the model is known; every hook
and the wrapped functions are restored at the end, whatever happened.
"""
from __future__ import annotations

import builtins
import os
import signal
import sys
import threading
import traceback
import types
import warnings
import weakref
from collections import deque
from pathlib import Path

import torch
from torch import nn
from torch.amp import GradScaler

from ..collect.case import CaseCapture, compiled_wrapper, global_module_hooks, is_examining
from ..collect.nonfinite import REPLAYABLE, model_input, rng_state
from ..findings import Finding, Report
from ..live import DoomedRun, Live, check_fail_on, fails
from ..preflight.crash import explain_crash, script_frame
from ..watcher import Doctor, warn_safely
from .distributed import DistributedDoctor, distributed_world


class ScriptWatcher:
    """Finds the model, the optimizer and the loss of a running script and watches them."""

    def __init__(self, namespace: dict | None = None, fail_on: str | None = None, **options):
        # one capture path and one live voice for the whole script: a provisional watcher hands
        # both on to the one that replaces it
        self.capture = CaseCapture()
        self.live = Live(fail_on=check_fail_on(fail_on))
        self.options = {**options, "capture": self.capture, "live": self.live}
        self.namespace = namespace if namespace is not None else {}
        self.doctor: Doctor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.notes: list[str] = []
        self._roots: dict[int, nn.Module] = {}   # outermost modules called with grad enabled
        self._depth = 0
        # the model's forward passes before the watcher exists (their step's NaN origin needs them;
        # never read inside a compiled graph, where Dynamo would guard on them and recompile)
        self._early: deque[list] = deque(maxlen=REPLAYABLE)
        self._stepping: torch.optim.Optimizer | None = None  # the watched optimizer is inside step()
        self._step_loss: torch.Tensor | None = None  # the loss backpropagated in this optimizer step
        self._module_hooks: list = []
        self._optimizer_hooks: list = []
        self._backward = None
        self._destroy = None
        self._scaler_methods: tuple | None = None  # GradScaler.scale and .update as they were
        self._unscaled: tuple | None = None  # (weak ref to GradScaler.scale's output, the loss given to it)
        self.broken = False

    # ---- install / remove ------------------------------------------------------------
    def install(self) -> None:
        from torch.optim import optimizer as optimizer_hooks
        self._module_hooks = global_module_hooks(self._enter, self._leave)
        self._optimizer_hooks = [optimizer_hooks.register_optimizer_step_pre_hook(self._before_optimizer_step),
                                 optimizer_hooks.register_optimizer_step_post_hook(self._after_optimizer_step)]
        self._backward = torch.autograd.backward
        torch.autograd.backward = self._wrapped_backward
        self.capture.install()
        self._scaler_methods = (GradScaler.scale, GradScaler.update)
        GradScaler.scale, GradScaler.update = self._scaling_method(), self._updating_method()
        if torch.distributed.is_available():  # the final exchange must come before the group is gone
            self._destroy = torch.distributed.destroy_process_group
            torch.distributed.destroy_process_group = self._wrapped_destroy

    def remove(self) -> None:
        self.capture.finish()
        self._remove_module_hooks()
        for handle in self._optimizer_hooks:
            handle.remove()
        self._optimizer_hooks = []
        if self._backward is not None:
            torch.autograd.backward = self._backward
            self._backward = None
        if self._scaler_methods is not None:
            GradScaler.scale, GradScaler.update = self._scaler_methods
            self._scaler_methods = None
        if self._destroy is not None:
            torch.distributed.destroy_process_group = self._destroy
            self._destroy = None

    def _remove_module_hooks(self) -> None:
        for handle in self._module_hooks:
            handle.remove()
        self._module_hooks = []

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except DoomedRun:
            raise
        except Exception as exc:  # our bug must never stop the script
            self._stop(exc)

    def _stop(self, exc: Exception) -> None:
        """After our own error: stop observing; the wrapped functions pass straight through
        until `remove()` restores them (a DistributedDoctor tells rank 0 it left)."""
        self.broken = True
        self.capture.finish()
        self._remove_module_hooks()
        for handle in self._optimizer_hooks:
            handle.remove()
        self._optimizer_hooks = []
        if self.doctor is not None and self.doctor.active:
            self.doctor._fail(exc)
        else:
            warn_safely(f"nndoctor stopped watching after an internal error ({type(exc).__name__}: {exc}); "
                        "the script continues unaffected.")
        self.notes.append(f"watching stopped early after an internal error: {type(exc).__name__}: {exc}")

    # ---- global hooks ----------------------------------------------------------------
    def _enter(self, module, args) -> None:
        if is_examining():
            return
        outermost = self._depth == 0
        self._depth += 1
        if not outermost or not torch.is_grad_enabled():
            return
        if id(module) not in self._roots and any(p.requires_grad for p in module.parameters()):
            self._roots[id(module)] = module
        if torch.compiler.is_compiling():  # traced into a compiled graph: nothing more to read here
            return
        if compiled_wrapper(module):  # torch.compile(model) is the model: drop the global hooks
            self._depth = 0               # before Dynamo traces the first call with them in it
            self._remove_module_hooks()
        elif self.doctor is None:
            self._early.append([module, args, rng_state(model_input(args, {})), None])

    def _leave(self, module, args, output) -> None:
        if is_examining():
            return
        self._depth = max(0, self._depth - 1)
        if not torch.compiler.is_compiling() and self._depth == 0 and self._early and self._early[-1][0] is module:
            self._early[-1][3] = output

    def _wrapped_backward(self, tensors, *args, **kwargs):
        result = self._backward(tensors, *args, **kwargs)
        if not self.broken and not is_examining():
            self._guard(self._after_backward, tensors)
            self.live.raise_if_doomed()  # a hand-written update has no optimizer step to stop at
        return result

    def _scaling_method(self):
        """GradScaler.scale that also remembers which loss it scaled: AMP scripts call
        `scaler.scale(loss).backward()`, and the loss to judge is the unscaled one."""
        original, watcher = self._scaler_methods[0], self

        def scale(scaler, outputs):
            scaled = original(scaler, outputs)
            if not is_examining() and isinstance(outputs, torch.Tensor) and isinstance(scaled, torch.Tensor):
                watcher._unscaled = (weakref.ref(scaled), outputs.detach())
            return scaled
        return scale

    def _updating_method(self):
        """GradScaler.update, which ends every AMP step, also those whose optimizer step it
        skipped (an overflow): such a step's loss is not the next step's."""
        original, watcher = self._scaler_methods[1], self

        def update(scaler, *args, **kwargs):
            watcher._step_loss = None
            return original(scaler, *args, **kwargs)
        return update

    def _wrapped_destroy(self, *args, **kwargs):
        if isinstance(self.doctor, DistributedDoctor) and sys.exc_info()[0] is not None:
            self.doctor.ended_by = traceback.format_exc().rstrip()  # a `finally:` on the way out of an error
        self._guard(self.finish_distributed)
        return self._destroy(*args, **kwargs)

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        if is_examining():
            return
        self._guard(self._on_step_begin, optimizer)

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        if is_examining():
            return
        self._guard(self._on_step_end, optimizer)
        if optimizer is self.optimizer:
            self.live.raise_if_doomed()

    # ---- what each event means -------------------------------------------------------
    def _after_backward(self, tensors) -> None:
        loss = tensors if isinstance(tensors, torch.Tensor) else None
        if loss is None or loss.numel() != 1 or not loss.is_floating_point():
            return  # not a loss (a vector-Jacobian product, several roots): no step to count
        graph = loss.grad_fn
        if self._unscaled is not None and self._unscaled[0]() is loss:
            loss = self._unscaled[1]
        loss = loss.detach().reshape(())
        if self._step_loss is None:
            self._step_loss = loss
        elif self._stepping is None:  # accumulation (a closure's re-evaluation is inside the step)
            self._step_loss = self._step_loss + loss
        if self.doctor is None:
            model = self._model_for(self._stepping)
            if model is None and not self._roots:  # no module at all: a model made of plain tensors
                model = self._tensor_model(self._stepping, graph)
            if model is None:
                return
            self._found(model, self._stepping)
            if self._stepping is not None:  # inside a closure optimizer's step: its pre-hook has passed
                self.doctor._before_step(self._stepping, (), {})
                return
        doctor = self.doctor
        if doctor.optimizer is None and doctor.active:  # hand-written update: one backward, one step
            doctor.updates.after_step()  # the weights moved since the last backward
            step = doctor.step
            doctor.log(loss=loss)
            if step:  # past the first step, which an optimizer found next would watch again
                self._early.clear()
            if step % doctor.sample_every == 0:
                doctor.updates.before_step(step)

    def _on_step_begin(self, optimizer) -> None:
        if self.optimizer is None:
            self.optimizer = optimizer
        elif optimizer is not self.optimizer:
            note = (f"only the first optimizer to step ({type(self.optimizer).__name__}) is watched; "
                    f"another {type(optimizer).__name__} also steps")
            if note not in self.notes:
                self.notes.append(note)
            return
        self._stepping = optimizer
        if self.doctor is None or self.doctor.optimizer is None:
            model = self._model_for(optimizer)
            if model is None and isinstance(getattr(self.doctor, "model", None), TensorModel):
                model = self._tensor_model(optimizer, None)  # its leaf tensors, now under an optimizer
            if model is None:
                return  # a closure optimizer: the model is found at the closure's backward
            if self.doctor is not None:  # the provisional watcher of the first backward passes
                self.doctor.active = False   # discarded: no final flush
                if isinstance(self.doctor, DistributedDoctor):
                    self.doctor.exchange_at_end = False  # nor a last share
                self.doctor.detach()
                self.doctor = None
            self._found(model, optimizer)  # its own pre-hook runs right after this global one

    def _on_step_end(self, optimizer) -> None:
        doctor = self.doctor
        if optimizer is self.optimizer:
            self._stepping = None
            if doctor is not None and doctor.optimizer is optimizer and self._step_loss is not None:
                doctor.log(loss=self._step_loss)
        self._step_loss = None  # another optimizer's loss (a GAN's other half) is not this one's
        self._early.clear()

    # ---- the model -------------------------------------------------------------------
    def _model_for(self, optimizer) -> nn.Module | None:
        """The outermost module(s) called so far that hold the trained parameters."""
        wanted = {id(p) for g in optimizer.param_groups for p in g["params"]} if optimizer is not None else None
        roots = [m for m in self._roots.values()
                 if any(p.requires_grad and (wanted is None or id(p) in wanted) for p in m.parameters())]
        inner = {id(sub) for m in roots for sub in m.modules() if sub is not m}
        roots = [m for m in roots if id(m) not in inner]
        if len(roots) <= 1:
            return roots[0] if roots else None
        names = {id(v): k for k, v in self.namespace.items() if isinstance(v, nn.Module) and "." not in k}
        return nn.ModuleDict({names.get(id(m), f"{type(m).__name__}_{i}"): m for i, m in enumerate(roots)})

    def _tensor_model(self, optimizer, graph) -> "TensorModel | None":
        """The leaf tensors that are trained: the optimizer's, or those the loss's backward reached."""
        if optimizer is not None:
            tensors = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        else:
            tensors = graph_leaves(graph)
        if not tensors:
            return None
        names = {}
        for key, value in self.namespace.items():
            if isinstance(value, torch.Tensor):
                names.setdefault(id(value), key)
            elif isinstance(value, (list, tuple, dict)) and not key.startswith("_"):
                items = value.items() if isinstance(value, dict) else enumerate(value)
                for k, v in items:
                    if isinstance(v, torch.Tensor):
                        names.setdefault(id(v), f"{key}[{k!r}]")
        return TensorModel({names.get(id(t), f"tensor_{i}"): t for i, t in enumerate(tensors)})

    def _found(self, model: nn.Module, optimizer) -> None:
        kind = DistributedDoctor if distributed_world() else Doctor
        if isinstance(model, TensorModel):  # nothing to copy and run: the checks need a module
            self.doctor = kind(model, optimizer, **{**self.options, "capture": None}, examine=False)
            self.doctor.preflight_notes.append(
                f"The model is made of plain tensors ({', '.join(list(model._tensors)[:6])}), not an nn.Module: "
                "the pre-flight checks, which run a copy of a module, were skipped; the training is watched "
                "from those tensors' gradients and updates.")
        else:
            self.doctor = kind(model, optimizer, **self.options)
        self.doctor.attach()
        self._remove_module_hooks()  # the candidates are known; the steps need no module hook
        for module, args, rng, output in self._early:  # the forward passes of the step being watched
            if module is self.doctor.called and output is not None:
                self.doctor.sentinel.adopt(args, rng, output)

    # ---- the end ---------------------------------------------------------------------
    def finish_distributed(self) -> None:
        """The last exchange across ranks: every rank detaches at the same point (the end of
        the script, or its destroy_process_group call, whichever comes first)."""
        if isinstance(self.doctor, DistributedDoctor):
            self.doctor.detach()

    def report(self, ended: str | None, error: BaseException | None = None, path: str | None = None) -> Report:
        """The verdict. `ended` says how the script ended when it did not finish normally;
        `error` is the script's own exception, translated into the pitfall behind it."""
        doctor = self.doctor
        if doctor is None:
            return self._report_without_training(ended, error, path)
        if ended and isinstance(doctor, DistributedDoctor) and doctor.ended_by is None:
            doctor.ended_by = ended  # rank 0 then waits only briefly: the others may be waiting for it
        doctor.detach()
        self._probe_dropout()
        report = doctor.report()
        report.meta["optimizer"] = type(self.optimizer).__name__ if self.optimizer is not None else "none (hand-written update)"
        report.notes.extend(self.notes)
        if error is not None and not isinstance(error, DoomedRun):
            crash = explain_crash(error, doctor.step, report.findings, script_frame(error, path) if path else None)
            if crash is not None:
                report = Report(findings=[crash, *report.findings], meta=report.meta, notes=report.notes,
                                series=report.series)
        if ended:
            report.meta["ended"] = ended
            report.notes.append(f"the script stopped early ({ended}) after {doctor.step} steps")
        return report

    def _probe_dropout(self) -> None:
        """The dropout gap diagnose() measures after training (loss with dropout on vs off, for
        reg.too_strong), on the first step's batch: a script hands over no data to take one from."""
        case = self.capture.examined_case
        if case is None or case.x is None or case.target is None or case.loss_fn is None or self.broken:
            return
        from ..diagnosis import dropout_probe
        self.doctor.extra.update(dropout_probe(case.model, [(case.x, case.target)], case.loss_fn))

    def _report_without_training(self, ended: str | None, error: BaseException | None, path: str | None) -> Report:
        """No optimizer step or backward was seen: a crash at the first step (the case it left
        is examined for the cause), or a script that trains nothing."""
        examined = self.capture.examine() if error is not None and not self.broken else None
        findings, notes, meta = (examined[:3] if examined else ([], [], {}))
        meta = {"steps": 0, **meta}
        if error is not None:
            crash = explain_crash(error, 0, findings, script_frame(error, path) if path else None)
            meta["ended"] = ended
            return Report(findings=[crash, *findings] if crash else findings, meta=meta, notes=notes + self.notes)
        why = f"the script stopped ({ended}) before" if ended else "the script ran to its end without"
        finding = Finding.make("run.failed", f"No training was seen: {why} a backward() call on a scalar loss.",
                               fix="Nothing trained: make sure the script calls loss.backward() on a scalar loss "
                                   "(not under torch.no_grad()) and that its training loop runs at all "
                                   "(an empty dataset or zero epochs stop it before the first step).")
        if ended:
            meta["ended"] = ended
        return Report(findings=[finding], meta=meta, notes=list(self.notes))


class TensorModel(nn.Module):
    """A model made of plain tensors (a hand-written `forward(x) = x @ W1 + b1 ...`), shown to
    the watcher as one module whose parameters are those leaf tensors. Nothing is wrapped or
    copied: the tensors are the script's own, and no forward of this module ever runs."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self._tensors = tensors

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        for name, tensor in self._tensors.items():
            yield (f"{prefix}.{name}" if prefix else name), tensor

    def forward(self, *args):
        raise RuntimeError("a TensorModel only names the script's tensors; it is never called")


def graph_leaves(graph, limit: int = 100_000) -> list[torch.Tensor]:
    """The leaf tensors that require grad under an autograd graph (its AccumulateGrad nodes)."""
    leaves, seen, stack = [], set(), [graph] if graph is not None else []
    while stack and len(seen) < limit:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            leaves.append(variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    leaves.reverse()
    return leaves


# ---- running the script ---------------------------------------------------------------
class Terminated(BaseException):
    """SIGTERM (what job schedulers send) turned into an exception, so the report is written."""


EXIT_FAILED_CHECK = 3  # --fail-on: the script ran but findings of that severity exist (or stopped it)


def run(script: str, args: list[str], out: str | Path = "nndoctor-report", fail_on: str | None = None,
        **options) -> int:
    """Run `script` under the watcher like `python script args`; print and save the report;
    return the script's exit status. With `fail_on` ("error" or "warning") the first finding of
    that severity stops the script, and the status is non-zero when such findings exist."""
    check_fail_on(fail_on)
    path = os.path.abspath(script)
    with open(path, "rb") as f:
        source = f.read()
    main = types.ModuleType("__main__")
    main.__dict__.update({"__file__": path, "__builtins__": builtins, "__cached__": None})
    saved_main, saved_argv, saved_path0 = sys.modules.get("__main__"), sys.argv, sys.path[0] if sys.path else None
    sys.modules["__main__"] = main
    sys.argv = [script, *args]
    folder = os.path.dirname(os.path.realpath(path))
    if sys.path:
        sys.path[0] = folder
    else:
        sys.path.insert(0, folder)
    watcher = ScriptWatcher(namespace=main.__dict__, fail_on=fail_on, **options)
    status, ended, error = 0, None, None
    saved_sigterm = _on_sigterm()
    watcher.install()
    try:
        code = compile(source, path, "exec", dont_inherit=True)
        exec(code, main.__dict__)
    except SystemExit as exc:
        status = _exit_status(exc.code)
        if status:
            ended = f"sys.exit({exc.code!r})"
    except KeyboardInterrupt as exc:
        _print_script_traceback(exc, path)
        status, ended = 130, "KeyboardInterrupt"
    except Terminated:
        status, ended = 143, "SIGTERM"
    except DoomedRun as exc:
        print(exc, file=sys.stderr)
        status, ended = EXIT_FAILED_CHECK, f"stopped by --fail-on {fail_on} at {exc.finding.code}"
    except BaseException as exc:  # the script's own error: print it as Python would
        _print_script_traceback(exc, path)
        status, ended, error = 1, f"{type(exc).__name__}: {exc}", exc
    finally:
        sys.modules["__main__"], sys.argv = saved_main, saved_argv
        if saved_path0 is not None:
            sys.path[0] = saved_path0
        _restore_sigterm(saved_sigterm)
    try:
        report = watcher.report(ended, error, path)
        report.meta.update(script=script, argv=list(args))  # the page's Run header: what was run
    finally:
        watcher.remove()
    if getattr(watcher.doctor, "rank", 0) == 0:
        _show(report, Path(out))
    if status == 0 and fail_on is not None and any(fails(f, fail_on) for f in report.findings):
        status = EXIT_FAILED_CHECK
    return status


def _on_sigterm():
    """Make SIGTERM raise Terminated in the main thread; return the handler it replaces."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum, frame):
        raise Terminated()
    return signal.signal(signal.SIGTERM, terminate)


def _restore_sigterm(saved) -> None:
    if saved is not None:
        signal.signal(signal.SIGTERM, saved)


def _exit_status(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"): Python prints it and exits with 1
    return 1


def _print_script_traceback(exc: BaseException, path: str) -> None:
    """The traceback as `python SCRIPT.py` prints it: from the script's first frame on, and
    without the frames of this module's wrappers (backward, GradScaler.scale)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next
    top = traceback.TracebackException(type(exc), exc, tb)  # no frame of the script: a SyntaxError
    shown, seen = top, set()
    while shown is not None and id(shown) not in seen:
        seen.add(id(shown))
        shown.stack = traceback.StackSummary.from_list([f for f in shown.stack if f.filename != __file__])
        shown = shown.__cause__ or shown.__context__
    sys.stderr.write("".join(top.format()))
    sys.stderr.flush()


def _show(report: Report, out: Path) -> None:
    from rich.console import Console
    console = Console()
    console.print(report)
    try:
        out.mkdir(parents=True, exist_ok=True)
        report.save_json(out / "report.json")
        report.save_html(out / "report.html")
    except OSError as exc:
        print(f"nndoctor: error: cannot write the report to {out}: {exc.strerror}", file=sys.stderr)
        return
    console.print(f"Report written to {out / 'report.json'} and {out / 'report.html'}")
