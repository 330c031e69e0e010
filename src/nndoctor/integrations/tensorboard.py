"""TensorBoard: the doctor's traces and findings, written where the user already looks.

    with nndoctor.watch(model, optimizer, tensorboard="runs/exp1") as doctor: ...

A sink of the watcher: at each flush it receives the rows that just reached the CPU and
writes them as scalars (`nndoctor/loss`, `nndoctor/grad_norm/<param>`,
`nndoctor/update_ratio/<param>`, `nndoctor/dead/<module>`, ...), and the live findings as a
text table whenever they change; the final report's findings at `report()`. Nothing is
written between flushes, so TensorBoard adds no device sync to a step. Needs the
`tensorboard` package (`pip install "nndoctor[tensorboard]"`).
"""
from __future__ import annotations

from .sinks import findings_markdown, traced

TAG = "nndoctor/"


class TensorBoardSink:
    def __init__(self, logdir: str, writer=None):
        if writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # torch's writer imports the tensorboard package
                raise ImportError("watch(..., tensorboard=...) needs the tensorboard package: "
                                  'pip install "nndoctor[tensorboard]"') from exc
            writer = SummaryWriter(log_dir=str(logdir))
        self.writer = writer
        self._shown: tuple = ()

    def flushed(self, doctor, rows) -> None:
        for name, steps, values in traced(rows):
            for step, value in zip(steps, values):
                self.writer.add_scalar(TAG + name, value, step)
        self._text(doctor.findings, doctor.step)
        self.writer.flush()

    def reported(self, report) -> None:
        self._text(report.findings, report.meta.get("steps", 0), force=True)
        self.writer.flush()

    def _text(self, findings, step: int, force: bool = False) -> None:
        shown = tuple((f.code, f.severity) for f in findings)
        if shown != self._shown or force:
            self._shown = shown
            self.writer.add_text(TAG + "findings", findings_markdown(findings), step)
