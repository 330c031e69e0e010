"""Hugging Face: `Trainer(..., callbacks=[DoctorCallback()])`.

The Trainer runs forward and backward itself, then clips and calls `optimizer.step()` on an
accelerate wrapper; the real torch optimizer inside steps with the gradients already
unscaled, and a step that fp16's GradScaler skips never reaches it. So the doctor's own
optimizer step hooks, put on that real optimizer, see exactly the steps taken (gradient
accumulation included: one step per accumulation window).

The Trainer never hands its loss to callbacks. While `train()` runs, `torch.autograd.backward`
is wrapped: each micro-batch's backpropagated scalar is the share of the step's loss that the
Trainer adds up and logs (divided by the accumulation steps or not, by the model's
`num_items_in_batch` or not, a custom `compute_loss` included), so their sum per optimizer step
is the loss the Trainer logs (fp16's GradScaler factor taken out). Validation losses come
from `on_evaluate` (`eval_loss`). The first step's pre-flight checks come from the capture
path every watcher shares (the model's keyword call: `preflight/keywords.py`). Under torchrun
every process watches its replica and rank 0 writes the report (see `distributed`). Each
warning or error is said when first confirmed, on stderr and to the `transformers` logger. Needs `pip install "nndoctor[transformers]"`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from ..collect.case import is_examining
from ..findings import Finding, Report
from ..live import DoomedRun, Live, check_fail_on, fails, line_text
from ..preflight.crash import explain_crash
from ..watcher import Doctor, warn_safely
from .distributed import DistributedDoctor, distributed_world


logger = logging.get_logger("nndoctor")


class DoctorCallback(TrainerCallback):
    """Watches the Trainer's model and optimizer; the report lands in `out` (default:
    `<output_dir>/nndoctor-report`) at the end of training, or when `train()` stops on an
    exception in the model's forward or the backward (the Trainer tells callbacks nothing of
    it: a forward hook that always runs and the wrapped backward see it), with the pitfall
    behind it named (`preflight/crash.py`). The exception goes on unchanged."""

    def __init__(self, out: str | Path | None = None, print_report: bool = True, fail_on: str | None = None,
                 **options):
        self.out = Path(out) if out is not None else None
        self.print_report = print_report
        self.fail_on = check_fail_on(fail_on)
        self.options = options
        self._doomed: Finding | None = None     # fail_on: the finding that stops the run
        self.doctor: Doctor | None = None
        self.report: Report | None = None
        self._losses: list[torch.Tensor] = []   # this optimizer step's backpropagated shares
        self._scaler = None
        self._step_before = 0
        self._crash_hook = None
        self._backward = None
        self._out: Path | None = None           # where this watch writes its report (rank 0 only)
        self._stale: list = []                  # hooks a crash left inert, removed at the next train()

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._finish()  # a watch left attached by an exception neither hook saw: its report is written
        for handle in self._stale:
            handle.remove()
        self._stale = []
        scaler = getattr(optimizer, "scaler", None)  # accelerate's wrapper: fp16's GradScaler, if any
        self._scaler = scaler if scaler is not None and scaler.is_enabled() else None
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper -> the torch optimizer
        planned = state.max_steps if state.max_steps and state.max_steps > 0 else None
        kind = DistributedDoctor if distributed_world() else Doctor
        live = Live(echo=False)  # said through the transformers logger; fail_on is ours (on_optimizer_step)
        self.doctor = kind(model, optimizer, planned_steps=planned, live=live, **self.options)
        self.report, self._losses, self._doomed = None, [], None
        self._out = None if not state.is_world_process_zero else \
            self.out if self.out is not None else Path(args.output_dir) / "nndoctor-report"
        if state.is_world_process_zero:
            live.listeners.append(lambda finding: logger.warning("nndoctor: " + line_text(finding)))
        live.listeners.append(self._doom)
        self.doctor.attach()
        self._crash_hook = model.register_forward_hook(self._seen_forward, always_call=True)
        self._backward, torch.autograd.backward = torch.autograd.backward, self._read_loss

    def _read_loss(self, tensors, *args, **kwargs):
        """torch.autograd.backward while training: the Trainer's backpropagated scalar, kept
        on its device (no sync). The pre-flight's probes on copies are not the Trainer's."""
        try:
            result = self._backward(tensors, *args, **kwargs)
        except Exception as exc:
            self._finish(exc)
            raise
        if self.report is None and isinstance(tensors, torch.Tensor) and tensors.numel() == 1 and not is_examining():
            loss = tensors.detach().reshape(()).float()
            self._losses.append(loss if self._scaler is None else loss / self._scaler._get_scale_async())
        return result

    def _seen_forward(self, module, args, output) -> None:
        error = sys.exc_info()[1] if output is None else None  # always_call: the forward raised
        if self.report is not None:  # a hook a crash left in place: inert
            return
        if error is not None and not is_examining():
            self._finish(error, busy=module._forward_hooks)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._step_before = self.doctor.step if self.doctor else 0

    def on_optimizer_step(self, args, state, control, **kwargs):
        doctor = self.doctor
        if doctor is None:
            return
        if doctor.step > self._step_before and self._losses and doctor.active:  # the step was taken
            doctor.log(loss=torch.stack(self._losses).sum())
        self._losses = []
        if self._doomed is not None:  # the report first, then the run stops (as watch() does)
            self._finish()
            raise DoomedRun(self._doomed)

    def _doom(self, finding: Finding) -> None:
        if self._doomed is None and fails(finding, self.fail_on):
            self._doomed = finding

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.doctor is not None and self.report is None and metrics and "eval_loss" in metrics:
            self.doctor.log(val_loss=metrics["eval_loss"])

    def on_train_end(self, args, state, control, **kwargs):
        self._finish()

    def _finish(self, error: BaseException | None = None, busy: dict | None = None) -> None:
        """Detach every hook, restore the backward, write the report (once per watch). Never
        raises: on a crash the user's own exception is the one that must go on. `busy`: the
        model's forward hooks, which torch is running after its forward raised; removing one
        now would break that loop, so they stay, inert, until the next `train()`."""
        doctor = self.doctor
        if doctor is None or self.report is not None:
            return
        try:
            handles = [self._crash_hook, *doctor._handles, *doctor._sampling]
            self._stale = [h for h in handles if busy is not None and h.hooks_dict_ref() is busy]
            doctor._handles = [h for h in handles if h not in self._stale]
            doctor._sampling = []
            if torch.autograd.backward == self._read_loss:
                torch.autograd.backward = self._backward
            doctor.detach()
            report = doctor.report()
            crash = explain_crash(error, doctor.step, report.findings) if error is not None else None
            if crash is not None:
                report = Report(findings=[crash, *report.findings], meta={**report.meta, "ended": "exception"},
                                notes=[*report.notes, f"training stopped on an exception after {doctor.step} steps"],
                                series=report.series)
            self.report = report
            if self._out is None:
                return
            self._out.mkdir(parents=True, exist_ok=True)
            report.save_json(self._out / "report.json")
            report.save_html(self._out / "report.html")
            if self.print_report:
                from rich.console import Console
                Console().print(report)
        except Exception as exc:  # our bug must not replace the user's exception or stop training
            warn_safely(f"nndoctor could not finish its report ({type(exc).__name__}: {exc})")
