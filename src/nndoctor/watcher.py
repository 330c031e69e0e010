"""The watcher: attaches the collectors, owns the history, runs the rules.

    with nndoctor.watch(model, optimizer) as doctor:
        ...; doctor.log(loss=loss)
    report = doctor.report()

Only hooks are used, and none changes a value the training computes: every step, a forward
pre-hook and a forward hook on the model and a tensor hook on its output (the non-finite
sentinel) and the optimizer's step pre/post hooks; on sampled steps, forward hooks on the
modules (at most a bounded group of each kind: collect/activations.py) and tensor hooks on
the last parameters. No hook per module runs on other steps. Collectors
write to device buffers; every `flush_every` steps one transfer moves them to the CPU
history and the rules run, so a diverging run is named within tens of steps. Any exception
in the doctor's own code is reported once as a warning and switches watching off; the
user's training goes on. What cannot be watched (a ScriptModule takes no forward hooks, a
lazy module has no parameters before its first forward) is left out and noted, never raised.
At the first training step the capture path (`collect/case.py`) holds the model, the batch,
the output, the target and the loss; the pre-flight checks (the ones `checkup()` runs) examine
that case on copies, and their findings join the rules' at every verdict. Each warning or
error is said once, when first confirmed (`live.py`); `fail_on` stops a doomed run.
"""
from __future__ import annotations

import functools
import sys
import time
import warnings
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from .collect import hooks
from .collect.activations import ActivationCollector
from .collect.buffer import StepBuffer
from .collect.case import CaseCapture, compiled_wrapper, is_examining
from .collect.forwards import ForwardCollector, trained_outputs
from .collect.gradients import GradientCollector
from .collect.histograms import HistogramCollector
from .collect.loop import LoopCollector
from .collect.nonfinite import NonFiniteSentinel
from .collect.recurrent import sensitivity_through_time
from .collect.updates import UpdateCollector
from .findings import Finding, Report
from .history import History
from .live import Live
from .names import module_types, name_modules
from .rules import Run, attribute_depth, fold, judge, withdraw_contradicted


def guarded(method):
    """Run a doctor method; on our own exception, warn once and stop watching."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not self.active or is_examining() and method.__name__ != "examine_first_step":
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # our bug must never stop the user's training
            self._fail(exc)
            return None
    return wrapper


def warn_safely(message: str) -> None:
    """Say `message` as a RuntimeWarning; where the user's filters make warnings errors
    (`-W error`, PYTHONWARNINGS=error), as one line on stderr instead. Never raises: our
    own trouble must not become the user's crash."""
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=4)
    except Exception:
        try:
            print(f"nndoctor: {message}", file=sys.stderr, flush=True)
        except Exception:  # no usable stderr: the report's notes still say it
            pass


def in_step_order(rows: list[tuple[str, np.ndarray, np.ndarray]]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """One row per series, its steps in order. A buffer flushes one group of rows per layout
    (e.g. per set of parameters with a gradient): a series in several groups is merged."""
    if len({name for name, _, _ in rows}) == len(rows):
        return rows
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for name, steps, values in rows:
        parts.setdefault(name, []).append((steps, values))
    merged = []
    for name, part in parts.items():
        steps, values = np.concatenate([s for s, _ in part]), np.concatenate([v for _, v in part])
        order = np.argsort(steps, kind="stable")
        merged.append((name, steps[order], values[order]))
    return merged


PROBE_EVERY = 5     # flushes between through-time probes of recurrent modules (one small backward each)
EXAMINE_WITHIN = 3  # steps to wait for the first model call before giving up the pre-flight checks
JUDGE_SHARE = 0.005  # in the user's loop, the rules run at a flush only while they have cost < 0.5% of the time


def learning_rates(optimizer) -> list[float] | None:
    """Each parameter group's rate, once at the start (for the report); None if unreadable."""
    try:
        return [float(g["lr"]) for g in optimizer.param_groups] if optimizer is not None else None
    except (KeyError, TypeError, ValueError, RuntimeError):
        return None


def run_facts(model: nn.Module, started_at: float, lrs: list[float] | None) -> dict:
    """What a reviewer of the report asks first (the page's Run header): when it started,
    on which device, with which versions and learning rates, and each module's type (so
    findings can name `3` as `3` (ReLU))."""
    import platform
    from datetime import datetime, timezone

    from . import __version__
    param = next(model.parameters(), None)
    return {"started": datetime.fromtimestamp(started_at, timezone.utc).isoformat(timespec="seconds"),
            "device": str(param.device) if param is not None else "cpu",
            "dtype": str(param.dtype).replace("torch.", "") if param is not None else None,
            "versions": {"nndoctor": __version__, "torch": torch.__version__,
                         "python": platform.python_version()},
            "lr": lrs, "module_types": module_types(model)}


class Doctor:
    """Watches one model (and optionally its optimizer) while it trains."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 sample_every: int = 20, flush_every: int = 50, planned_steps: int | None = None,
                 judge_share: float = JUDGE_SHARE, step_hooks: bool = True,
                 reducer=None, sinks=(), tensorboard=None, mlflow=None, wandb=None, examine: bool = True,
                 capture: CaseCapture | None = None, live: Live | bool = True, fail_on: str | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"watch() needs a torch.nn.Module, not {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, not {type(optimizer).__name__}")
        # a `torch.compile(model)` wrapper: the model inside is read, named and replayed; the
        # wrapper is called, so the every-step hooks go on it and run eagerly around the graph
        self.called = model
        self.compiled = compiled_wrapper(model)  # also set from a compiled graph that traced our hooks (collect/hooks.py)
        self.model = model = model._orig_mod if self.compiled else model
        self.optimizer = optimizer
        self.sample_every = max(1, int(sample_every))
        self.flush_every = max(1, int(flush_every))
        self.planned_steps = planned_steps
        self.judge_share = judge_share
        # ---- integrations (nndoctor/integrations/) -------------------------------------
        # step_hooks=False: a framework drives _before_step/_after_step from its own callbacks
        # (its optimizer.step runs the backward inside a closure, after the step pre-hooks).
        # reducer(doctor, rows) -> rows merges each flush's rows across processes (DDP);
        # each sink gets .flushed(doctor, rows) at every flush and .reported(report).
        self.step_hooks = step_hooks
        self.reducer = reducer
        self.sinks = list(sinks)
        # examine=False: the caller ran the pre-flight itself (diagnose) and sets `preflight`.
        # capture: a capture path installed by the caller (nndoctor watch) and shared with it.
        self.capture = capture if capture is not None else (CaseCapture(self.called) if examine else None)
        self._own_capture = capture is None
        self.live = live if isinstance(live, Live) else Live(echo=bool(live), fail_on=fail_on)
        if tensorboard is not None:
            from .integrations.tensorboard import TensorBoardSink
            self.sinks.append(TensorBoardSink(tensorboard))
        if mlflow:  # True: the active MLflow run, or a new one in the configured store
            from .integrations.mlflow import MLflowSink
            self.sinks.append(MLflowSink())
        if wandb:   # True: the active W&B run (or wandb=run), else a new one
            from .integrations.wandb import WandbSink
            self.sinks.append(WandbSink(run=None if wandb is True else wandb))
        # ---------------------------------------------------------------------------------
        self.active = True
        self.failure: str | None = None
        self.step = 0
        self.history = History()
        self.notes: list[str] = []
        self.targets: dict | None = None
        self.extra: dict = {}               # evidence measured outside the hooks (diagnose's probes)
        self.shapes: dict = {}              # param name -> whole shape where a parameter is a shard (FSDP1)
        self.findings: list[Finding] = []   # live: the verdict as of the last flush
        self.preflight: list[Finding] = []  # the pre-flight findings on the first step's case
        self.preflight_notes: list[str] = []
        self.checkup_meta: dict = {}
        self._examine_pending = self.capture is not None
        self._first_seen: dict[str, int] = {}
        self._logged: dict[str, int] = {}
        self._scalars = StepBuffer()
        self._handles: list = []
        self._sampling: list = []   # activation hooks, attached for sampled steps only
        self._sample_due = False    # attach them at the next forward
        self._copyable: list[type] = []  # module classes copied and pickled without our hooks
        self._started = time.perf_counter()
        self._started_at = time.time()
        self._initial_lrs = learning_rates(optimizer)
        self.call: str | None = None  # how the user started watching, for the report's Run header
        self._judge_seconds = 0.0
        self._flushes = 0

        self._unhookable: set[nn.Module] = set()  # modules that refused a forward hook
        self.forwards = ForwardCollector(model, self.sample_every)
        self.module_names = {m: (n or type(model).__name__) for n, m in model.named_modules()}
        self.module_types = module_types(model)
        try:
            self.sentinel = NonFiniteSentinel(model, self.module_names)
            self.sentinel.wrap = self._guard_hook
            self._watch_parameters()
            self.activations = ActivationCollector(model, self.module_names)
            self.histograms = HistogramCollector(self.module_names)  # for the report's plots only
        except Exception as exc:  # a valid module we cannot read: watch nothing, say why
            self._fail(exc)
            self.params, self.not_in_optimizer, self._lazy = [], [], False
            self.grads, self.updates, self.loop = GradientCollector([]), UpdateCollector([]), LoopCollector([], model)
            self.activations = ActivationCollector(model, {})
            self.histograms = HistogramCollector({})
            self.sentinel = NonFiniteSentinel(model, {})

    def _watch_parameters(self) -> None:
        """Choose the watched parameters (trainable, in the optimizer) and build their collectors.
        A lazy module's parameters have no shape before its first forward: they are left out
        until then, and this runs again at the first step that finds them materialised."""
        optimizer = self.optimizer
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]} if optimizer else None
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self._lazy = any(nn.parameter.is_lazy(p) for _, p in named)
        named = [(n, p) for n, p in named if not nn.parameter.is_lazy(p)]
        self.params = self._parameter_views([(n, p) for n, p in named if in_optimizer is None or id(p) in in_optimizer])
        self.not_in_optimizer = [n for n, p in named if in_optimizer is not None and id(p) not in in_optimizer]
        self.grads = GradientCollector(self.params)
        self.updates = UpdateCollector(self.params)
        self.loop = LoopCollector(self.params, self.model)
        self.sentinel.check_gradients(self.params)

    def _parameter_views(self, params: list) -> list:
        """The watched tensors for the chosen parameters: themselves (a sharded wrapper may
        watch each original parameter inside a flattened one instead)."""
        return params

    # ---- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> "Doctor":
        self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    @guarded
    def attach(self) -> None:
        h = self._handles
        if self.capture is not None and self._own_capture and not self.capture.done:
            self.capture.install()
        self._copyable = hooks.register(type(m) for m in self.module_names)
        if self.optimizer is not None and self.step_hooks:
            h.append(self.optimizer.register_step_pre_hook(self._before_step))
            h.append(self.optimizer.register_step_post_hook(self._after_step_hook))
        # every step: two hooks on the model, one on its output, none per module (collect/nonfinite.py)
        h += self._forward_hook(self.called, [self._before_forward, self.sentinel.on_input], pre=True)
        h += self._forward_hook(self.called, [self._on_model_output])
        self._sample_due = self.step % self.sample_every == 0
        if self._unhookable:
            kinds = sorted({type(m).__name__ for m in self._unhookable})
            note = (f"{len(self._unhookable)} module(s) take no forward hooks ({', '.join(kinds)}): "
                    "their activations and non-finite values are not watched; gradients and updates are")
            if note not in self.notes:
                self.notes.append(note)

    def _forward_hook(self, module: nn.Module, fns: list, pre: bool = False) -> list:
        """Register a guarded forward (pre-)hook on `module`: [handle], or [] for a module that
        refuses hooks (a torch.jit ScriptModule), which is remembered and not asked again."""
        if module in self._unhookable:
            return []
        try:
            if pre:  # with the keyword arguments: models called as model(input_ids=..., ...)
                return [module.register_forward_pre_hook(self._guard_hook(fns), with_kwargs=True)]
            return [module.register_forward_hook(self._guard_hook(fns))]
        except Exception:
            self._unhookable.add(module)
            return []

    def _on_model_output(self, module, args, output) -> None:
        """The model's forward hook: one tensor hook on each trained output serves both the
        forward collector (a backward reached it) and the sentinel (its gradient)."""
        outputs = trained_outputs(output)
        self.forwards.on_forward(module, args, outputs, self.sentinel.on_output(outputs))

    def _before_forward(self, module, args, kwargs) -> None:
        if self.capture is not None and self.capture.lingering:  # finished inside a backward (collect/case.py)
            self.capture.leave_mode()
        self._arm_sampling(module, args, kwargs)

    def _arm_sampling(self, module, args, kwargs) -> None:
        """At the first forward of a sampled step, attach the sampling hooks. Only an eager
        forward gets here: in a compiled graph our hooks are inert (collect/hooks.py), so a
        compiled model never sees hooks come and go, which would make Dynamo recompile (nor
        does one watched through its wrapper, whose hooks are eager)."""
        if self._sample_due and not self.compiled:
            self._sample_due = False
            self._sample_hooks(True)

    def _sample_hooks(self, on: bool) -> None:
        """Attach the hooks of a sampled step (activations on its forward pass, stale gradients
        on its backward); detach them after. Unsampled steps pay for none of them."""
        if self._sampling:
            for handle in self._sampling:
                handle.remove()
            self._sampling = []
            self.activations.sampled()
        if on and self.active:
            per_module: dict[nn.Module, list] = {}
            order = [] if self.sentinel.order else self.sentinel.order_modules()
            for module, hook in [*self.activations.modules(), *self.histograms.modules(), *order]:
                per_module.setdefault(module, []).append(hook)
            self._sampling = [handle for module, hooks in per_module.items()
                              for handle in self._forward_hook(module, hooks)]
            self._sampling += [p.register_hook(self._guard_hook([self.loop.tensor_hook(p)]))
                               for p in self.loop.watched]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.capture is not None and self._own_capture:
            self.capture.finish()
        self._sample_hooks(False)
        hooks.release(self._copyable)
        self._copyable = []
        if self.active:
            self.flush()

    def _guard_hook(self, fns: list) -> hooks.Hook:
        """A hook that runs `fns` under the guard and always returns None (changes nothing);
        copies and pickles of the model leave it out (collect/hooks.py), and it stays silent
        while the pre-flight checks run (collect/case.py)."""
        return hooks.Hook(self, fns)

    def _fail(self, exc: Exception) -> None:
        self.active = False
        self.failure = f"{type(exc).__name__}: {exc}"
        warn_safely(f"nndoctor stopped watching after an internal error ({self.failure}); "
                    "training continues unaffected.")

    # ---- what the user calls ----------------------------------------------------------
    @guarded
    def log(self, **values) -> None:
        """Record scalars: `loss` (train, per step) and anything else (`val_loss`, ...).
        Tensors stay on their device until the next flush: no sync per call."""
        for name, value in values.items():
            if value is None:
                continue
            index = self._logged.get(name, 0)
            self._logged[name] = index + 1
            if name == "loss" and self.optimizer is None:
                index = self.step
                self._step_without_optimizer()
            elif name != "loss":
                index = self.step  # validation and extras are placed on the training clock
            if isinstance(value, torch.Tensor):
                tensor = value.detach() if value.dim() == 0 else value.detach().reshape(())
            else:
                tensor = torch.tensor(float(value))
            self._scalars.append(index, (name,), tensor)

    def diverged(self, last: int = 10) -> bool:
        """The last `last` logged losses (as of the last flush) are all NaN/Inf."""
        s = self.history.get("loss")
        if s is None or len(s) < last:
            return False
        return not np.isfinite(s.last(last)).any()

    def report(self) -> Report:
        """The verdict so far (also valid while training goes on). Never raises: an internal
        error while judging gives the findings of the last flush and a note; a failing sink
        gets a note."""
        self.flush(final=True)
        try:
            report = self._report()
        except Exception as exc:  # our bug must never reach the user
            report = Report(findings=list(self.findings), meta={"steps": self.step},
                            notes=[*self.notes, f"the final verdict failed after an internal error "
                                   f"({type(exc).__name__}: {exc}); findings as of the last flush"])
        for sink in self.sinks:
            try:
                sink.reported(report)
            except Exception as exc:
                report.notes.append(f"{type(sink).__name__} could not take the report: {type(exc).__name__}: {exc}")
        return report

    def _report(self) -> Report:
        findings = self._judge(final=True)
        notes = self.preflight_notes + list(self.notes)
        if self.compiled:
            notes.append("the model ran compiled: activation statistics and the module of a first NaN/Inf are not "
                         "collected inside a compiled graph; gradients, updates and the loss were")
        if self.failure:
            notes.append(f"watching stopped early after an internal error: {self.failure}")
        meta = {"steps": self.step, "losses_logged": self._logged.get("loss", 0),
                "model": type(self.model).__name__,
                "parameters": int(sum(p.numel() for _, p in self.params)),
                "optimizer": type(self.optimizer).__name__ if self.optimizer else None,
                "watch_seconds": round(time.perf_counter() - self._started, 3),
                "sample_every": self.sample_every, "flush_every": self.flush_every,
                "module_order": list(self.sentinel.order),  # input -> output, for the report's plots
                **run_facts(self.model, self._started_at, self._initial_lrs),
                **self.checkup_meta,
                **({"call": self.call} if self.call else {})}
        return Report(findings=findings, meta=meta, notes=notes, series=self._series())

    # ---- the first step's case -------------------------------------------------------
    @guarded
    def examine_first_step(self) -> None:
        """Run the pre-flight checks on the case the capture path holds (once; a capture shared
        with an earlier watcher of the same run hands over its examination)."""
        capture, self._examine_pending = self.capture, False
        if capture is None:
            return
        examined = capture.examine()
        if examined is None:  # no model call yet (a closure optimizer calls it inside step()): next step
            if self.step < EXAMINE_WITHIN:
                self._examine_pending = True
            else:
                capture.finish()
                self.preflight_notes.append("The pre-flight checks did not run: no call of the model was seen "
                                            f"in the first {EXAMINE_WITHIN} steps.")
            return
        self.preflight, self.preflight_notes, self.checkup_meta, targets = examined
        if self.targets is None:
            self.targets = targets
        self.live.say(self._merged([], []))

    def _merged(self, findings: list[Finding], notes: list[str]) -> list[Finding]:
        """The pre-flight findings (fresh copies) with the rules', reconciled as diagnose does."""
        if not self.preflight:
            return findings
        merged = [replace(f, cause=None) for f in self.preflight] + findings
        merged = attribute_depth(withdraw_contradicted(merged, notes), notes)
        fold(merged)
        return merged

    def _after_step_hook(self, optimizer, args, kwargs) -> None:
        self._after_step(optimizer, args, kwargs)
        self.live.raise_if_doomed()  # outside the guard: stopping the run is the user's wish

    # ---- optimizer hooks -------------------------------------------------------------
    @guarded
    def _before_step(self, optimizer, args, kwargs) -> None:
        step = self.step
        if self._lazy:
            self._watch_parameters()
        if self._examine_pending:
            self.examine_first_step()
        sampled = step % self.sample_every == 0
        self.sentinel.end_step(step)
        self.loop.on_step(step)
        self.forwards.on_step(step)
        if sampled:
            self.grads.on_step(step)
            self.updates.before_step(step)
            self.history["lr"].add(step, float(optimizer.param_groups[0]["lr"]))

    @guarded
    def _after_step(self, optimizer, args, kwargs) -> None:
        self.updates.after_step()
        self.loop.after_step(self.step)
        self._advance()

    def _step_without_optimizer(self) -> None:
        if self._lazy:
            self._watch_parameters()
        if self._examine_pending:
            self.examine_first_step()
        self.sentinel.end_step(self.step)
        if self.step % self.sample_every == 0:
            self.grads.on_step(self.step)
        self.loop.on_step(self.step)
        self.forwards.on_step(self.step)
        self._advance()

    def _advance(self) -> None:
        self.step += 1
        self.activations._step = self.histograms._step = self.step
        if self._handles:
            self._sample_hooks(False)
            self._sample_due = self.step % self.sample_every == 0
            if self._sample_due and not self.sentinel.forwards and not self.compiled:
                self._arm_sampling(None, (), {})  # the model's own forward is never called (Lightning's
                # training_step may call its submodules): attach now, as the model's pre-hook never will
        if self.step % self.flush_every == 0:
            self.flush()
            elapsed = time.perf_counter() - self._started
            if self._judge_seconds <= self.judge_share * elapsed or self.step == self.flush_every:
                began = time.perf_counter()
                self.findings = self._judge(final=False)
                self._judge_seconds += time.perf_counter() - began

    # ---- flush: device buffers -> history ---------------------------------------------
    @guarded
    def flush(self, final: bool = False) -> None:
        """Move the device buffers to the history in one transfer each. The rows pass through
        the reducer (DDP: merged across ranks) and on to the sinks (TensorBoard) on the way.
        `final`: the report is due, so the forwards since the last step count (a last evaluation)."""
        rows: list[tuple[str, np.ndarray, np.ndarray]] = [(name, steps, values[:, 0])
                                                          for (name,), steps, values in self._scalars.flush()]
        names = [n for n, _ in self.params]
        for idx, steps, values in self.grads.norms.flush():
            rows += [("grad_norm/" + names[i], steps, column) for i, column in zip(idx, values.T)]
            rows.append(("grad_norm/total", steps, (values ** 2).sum(1) ** 0.5))
        for prefix, buffer in (("dead_rows/", self.grads.dead_rows), ("update_ratio/", self.updates.ratios),
                               ("weight_norm/", self.updates.weight_norms)):
            for idx, steps, values in buffer.flush():
                rows += [(prefix + names[i], steps, column) for i, column in zip(idx, values.T)]
        for prefix, buffer in (("dead/", self.activations.dead), ("saturated/", self.activations.saturated),
                               ("positive/", self.activations.positive), ("output/", self.activations.output),
                               ("stale/", self.loop.stale)):
            for keys, steps, values in buffer.flush():
                rows += [(prefix + key, steps, column) for key, column in zip(keys, values.T)]
        self.histograms.flush()
        self.forwards.flush(final)
        self._flushes += 1
        if self._flushes % PROBE_EVERY == 1 and self.activations.rnn_inputs:
            self._probe_rnns()
        self.sentinel.flush()  # before the reducer: DDP exchanges each rank's NaN origin with the rows
        rows = in_step_order(rows)
        if self.reducer:
            rows = self.reducer(self, rows)
        self.history.record(rows)
        for sink in self.sinks:
            sink.flushed(self, rows)

    # ---- judge -------------------------------------------------------------------------
    def _judge(self, final: bool) -> list[Finding]:
        run = Run(history=self.history, step=self.step, planned_steps=self.planned_steps, final=final,
                  model=self.model, optimizer=self.optimizer, params=self.params,
                  module_names=self.module_names, kinds=self.activations.kinds,
                  origin=self.sentinel.origin, order=self.sentinel.order, none_counts=self._none_counts(),
                  sampled=self.grads.sampled, not_in_optimizer=self.not_in_optimizer,
                  loop_steps=self.loop.steps, eval_steps=self.loop.eval_steps,
                  forwards=self.forwards, targets=self.targets, extra=self.extra, shapes=self.shapes)
        findings, notes = judge(run)
        name_modules(findings, self.module_types)
        for f in findings:
            self._first_seen.setdefault(f.code, f.step if f.step is not None else self.step)
            f.step = min(self._first_seen[f.code], f.step) if f.step is not None else self._first_seen[f.code]
        findings = self._merged(findings, notes)
        if final:
            self.notes = [n for n in self.notes if not n.startswith("rule ")] + notes
        self.live.say(findings)
        return findings

    def _none_counts(self) -> dict[str, int]:
        """Per parameter, the sampled steps it had no gradient (a sharded job: on any rank holding it)."""
        return self.grads.none_counts

    def _probe_rnns(self) -> None:
        """Record, for each recurrent module, the first time step's influence on the last
        output relative to the last step's own (see collect/recurrent.py; our own hooks are
        silenced with the user's during the probe, so its forward pass is not recorded)."""
        modules = {n: m for m, n in self.module_names.items()}
        for name, x in self.activations.rnn_inputs.items():
            try:
                profile = sensitivity_through_time(modules[name], x)
            except Exception as exc:  # an exotic RNN: skip it and say so
                note = f"through-time gradient probe skipped for {name}: {type(exc).__name__}"
                if note not in self.notes:
                    self.notes.append(note)
                continue
            if profile and profile[-1] > 0:
                self.history["through_time/" + name].add(self.step, profile[0] / profile[-1])
                self.history["through_time_length/" + name].add(self.step, len(profile))

    def _series(self) -> dict:
        keep = ("loss", "val_loss", "lr", "grad_norm/", "update_ratio/", "dead/", "saturated/", "output/")
        return {**{name: s.downsample() for name, s in self.history.series.items()
                   if len(s) and any(name == k or (k.endswith("/") and name.startswith(k)) for k in keep)},
                **self.histograms.series()}


def watch(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **options) -> Doctor:
    """Watch `model` (and `optimizer`) in the user's own loop; see `Doctor`.
    `tensorboard=LOGDIR`, `mlflow=True` and `wandb=True` (or `wandb=run`) also log the traces
    and findings to that tracker at each flush, and the report at the end."""
    doctor = Doctor(model, optimizer, **options)
    doctor.call = f"nndoctor.watch({type(model).__name__}, {type(optimizer).__name__ if optimizer else None})"
    return doctor
