"""Hugging Face: `Trainer(..., callbacks=[DoctorCallback()])`.

The Trainer runs forward and backward itself, then clips and calls `optimizer.step()` on an
accelerate wrapper; the real torch optimizer inside steps with the gradients already
unscaled, and a step that fp16's GradScaler skips never reaches it. So the doctor's own
optimizer step hooks, put on that real optimizer, see exactly the steps taken (gradient
accumulation included: one step per accumulation window).

The Trainer never hands its loss to callbacks; a forward hook on the model reads
`outputs.loss` of each training micro-batch instead (a model built for training returns it
when the batch has labels). When the Trainer passes `num_items_in_batch` (the model takes
loss kwargs), each micro-batch loss is already a share of the window's mean and the
shares are summed (times the number of processes when the count was gathered across
them); otherwise the micro-batch means are averaged. Validation losses come
from `on_evaluate` (`eval_loss`). Under torchrun every process watches its replica and rank
0 writes the report (see `distributed`). Needs `pip install "nndoctor[transformers]"`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback

from ..findings import Report
from ..watcher import Doctor
from .distributed import DistributedDoctor, distributed_world


class DoctorCallback(TrainerCallback):
    """Watches the Trainer's model and optimizer; the report lands in `out` (default:
    `<output_dir>/nndoctor-report`) at the end of training."""

    def __init__(self, out: str | Path | None = None, print_report: bool = True, **options):
        self.out = Path(out) if out is not None else None
        self.print_report = print_report
        self.options = options
        self.doctor: Doctor | None = None
        self.report: Report | None = None
        self._losses: list[torch.Tensor] = []
        self._summed = False        # micro-batch losses are shares of the window's mean
        self._step_before = 0
        self._loss_hook = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper -> the torch optimizer
        planned = state.max_steps if state.max_steps and state.max_steps > 0 else None
        kind = DistributedDoctor if distributed_world() else Doctor
        self.doctor = kind(model, optimizer, planned_steps=planned, **self.options)
        self.doctor.attach()
        self._loss_hook = model.register_forward_hook(self._read_loss, with_kwargs=True)

    def _read_loss(self, module, args, kwargs, output) -> None:
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1 and module.training and torch.is_grad_enabled():
            self._losses.append(loss.detach().reshape(()).float())
            self._summed = kwargs.get("num_items_in_batch") is not None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._step_before = self.doctor.step if self.doctor else 0

    def on_optimizer_step(self, args, state, control, **kwargs):
        doctor = self.doctor
        if doctor is None:
            return
        if doctor.step > self._step_before and self._losses and doctor.active:  # the step was taken
            losses = torch.stack(self._losses)
            if not self._summed:
                doctor.log(loss=losses.mean())
            else:  # shares of a token count gathered over all processes: this process's mean
                across = args.world_size if getattr(args, "average_tokens_across_devices", False) else 1
                doctor.log(loss=losses.sum() * max(1, across))
        self._losses = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.doctor is not None and metrics and "eval_loss" in metrics:
            self.doctor.log(val_loss=metrics["eval_loss"])

    def on_train_end(self, args, state, control, **kwargs):
        doctor = self.doctor
        if doctor is None or self.report is not None:
            return
        self._loss_hook.remove()
        doctor.detach()
        self.report = report = doctor.report()
        if not state.is_world_process_zero:
            return
        out = self.out if self.out is not None else Path(args.output_dir) / "nndoctor-report"
        out.mkdir(parents=True, exist_ok=True)
        report.save_json(out / "report.json")
        report.save_html(out / "report.html")
        if self.print_report:
            from rich.console import Console
            Console().print(report)
