"""Lightning: `Trainer(callbacks=[DoctorCallback()])`.

Lightning runs the training step and the backward inside a closure that
`optimizer.step()` calls, after the optimizer's step pre-hooks; so the doctor is driven by
the callback hooks instead. `on_before_optimizer_step` comes after the closure, after AMP
unscaled the gradients but before gradient clipping (so the clipping rule is given the
trainer's `gradient_clip_val` to compare the norms with); it fires only on the batches that end an
accumulation window, and the end of that batch (`on_train_batch_end`) follows the step. A
step that GradScaler skips (non-finite fp16 gradients) is left out, as the watcher leaves
out such steps in a plain loop; it is detected on the sampled steps, where the gradients are
read (one look at the scaler's flag per `sample_every` steps). The loss of each optimizer
step is the mean of its micro-batches' losses.

Each warning or error is logged when first confirmed (`nndoctor/<code>` = 1 for an error,
0.5 for a warning, and its line as text where the logger takes text); `fail_on="error"`
stops the fit at the first such finding. At the end of training the report is written to
`out` (on global rank 0), printed, and
summarized to every logger of the trainer: `nndoctor/problems` and one `nndoctor/<code>`
metric per finding, plus the findings as text where the logger takes text (TensorBoard).
Needs `pip install "nndoctor[lightning]"`.
"""
from __future__ import annotations

from pathlib import Path

import torch

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package of the same framework
    from pytorch_lightning.callbacks import Callback

from ..findings import Report
from ..live import line_text
from ..watcher import Doctor
from .tensorboard import findings_markdown


class DoctorCallback(Callback):
    """Watches the LightningModule and its (first) optimizer while the Trainer fits it."""

    def __init__(self, out: str | Path | None = "nndoctor-report", val_key: str = "val_loss",
                 print_report: bool = True, **options):
        self.out = Path(out) if out is not None else None
        self.val_key = val_key
        self.print_report = print_report
        self.options = options
        self.doctor: Doctor | None = None
        self.report: Report | None = None
        self._optimizer = None
        self._losses: list[torch.Tensor] = []
        self._stepping = False

    # ---- start and end -----------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._optimizer = trainer.optimizers[0] if trainer.optimizers else None
        planned = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.doctor = Doctor(pl_module, self._optimizer, step_hooks=False, planned_steps=planned, **self.options)
        if trainer.gradient_clip_val and (trainer.gradient_clip_algorithm or "norm") == "norm":
            self.doctor.extra["pre_clip_limit"] = float(trainer.gradient_clip_val)  # read before Lightning clips
        self.doctor.live.listeners.append(lambda finding: self._log_live(trainer, finding))
        if len(trainer.optimizers) > 1:
            self.doctor.notes.append(f"only the first of {len(trainer.optimizers)} optimizers is watched")
        self.doctor.attach()

    def on_train_end(self, trainer, pl_module) -> None:
        self._finish(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._finish(trainer)

    # ---- each step -----------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        doctor = self.doctor
        if doctor is None or optimizer is not self._optimizer or not doctor.active:
            return
        if doctor.step % doctor.sample_every == 0 and self._scaler_skips(trainer, optimizer):
            self._losses = []
            return
        self._stepping = True
        doctor._before_step(optimizer, (), {})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        doctor = self.doctor
        if doctor is None or not doctor.active:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # Lightning divides it by accumulate_grad_batches
            self._losses.append(loss.detach().reshape(()) * trainer.accumulate_grad_batches)
        if self._stepping:
            self._stepping = False
            doctor._after_step(self._optimizer, (), {})
            if self._losses:
                doctor.log(loss=torch.stack(self._losses).mean())
            self._losses = []
            doctor.live.raise_if_doomed()  # fail_on: Lightning's on_exception writes the report

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.val_key)
        if self.doctor is not None and value is not None and not trainer.sanity_checking:
            self.doctor.log(val_loss=value)

    # ---- helpers -------------------------------------------------------------------------
    @staticmethod
    def _log_live(trainer, finding) -> None:
        """A finding confirmed while training goes on, to every logger of the trainer (rank 0)."""
        if not trainer.is_global_zero:
            return
        level = {"error": 1.0, "warning": 0.5}[finding.severity]
        for logger in trainer.loggers:
            logger.log_metrics({f"nndoctor/{finding.code}": level}, step=trainer.global_step)
            add_text = getattr(getattr(logger, "experiment", None), "add_text", None)
            if callable(add_text):
                add_text(f"nndoctor/{finding.code}", line_text(finding), trainer.global_step)

    @staticmethod
    def _scaler_skips(trainer, optimizer) -> bool:
        """GradScaler found non-finite gradients: it will skip this optimizer step."""
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is None or not scaler.is_enabled():
            return False
        try:
            found = scaler._found_inf_per_device(optimizer)
        except (KeyError, AttributeError):  # not unscaled yet: the optimizer unscales itself
            return False
        return bool(sum(v.item() for v in found.values()))

    def _finish(self, trainer) -> None:
        doctor = self.doctor
        if doctor is None or self.report is not None:
            return
        doctor.detach()
        self.report = report = doctor.report()
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(summary_metrics(report), step=trainer.global_step)
            add_text = getattr(getattr(logger, "experiment", None), "add_text", None)
            if callable(add_text):
                add_text("nndoctor/findings", findings_markdown(report.findings), trainer.global_step)
            logger.save()
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            report.save_json(self.out / "report.json")
            report.save_html(self.out / "report.html")
        if self.print_report:
            from rich.console import Console
            Console().print(report)


def summary_metrics(report: Report) -> dict[str, float]:
    """Numbers every logger accepts: how many problems, and 1 (error) / 0.5 (warning) /
    0.1 (info) per finding code."""
    level = {"error": 1.0, "warning": 0.5, "info": 0.1}
    metrics = {"nndoctor/problems": float(sum(f.is_problem for f in report.findings))}
    metrics.update({f"nndoctor/{f.code}": level[f.severity] for f in report.findings})
    return metrics
