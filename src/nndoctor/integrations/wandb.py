"""Weights & Biases: the doctor's traces as metrics, its findings as tags and alerts, the
report as an artifact (also kept in the run folder, `files/nndoctor/`). Works offline (`WANDB_MODE=offline`).

    with nndoctor.watch(model, optimizer, wandb=True) as doctor: ...

Logs into the active run (`wandb.init()` before watching, or `wandb=run`), or else starts a
run of its own (project "nndoctor") and finishes it with the report. At each flush: the
traces as metrics (`nndoctor/loss`, `nndoctor/grad_norm/<param>`, ...) against their own
x-axis `nndoctor/step` (W&B's `define_metric`; nndoctor never passes `step=`, which would
fight the script's own `wandb.log` calls); each finding at warning or error, once confirmed,
as a tag `nndoctor:<code>` and one alert (W&B mails or posts alerts as the user configured),
a withdrawn one untagged; the verdict in the run's summary. At `report()`: the final findings
and an artifact `nndoctor-report` (type "nndoctor-report") holding report.json and
report.html. Needs the `wandb` package (`pip install "nndoctor[wandb]"`).
"""
from __future__ import annotations

from pathlib import Path

from .sinks import confirmed, findings_markdown, headline, traced

PREFIX = "nndoctor/"
STEP = PREFIX + "step"
TAG = "nndoctor:"
LEVEL = {"error": "ERROR", "warning": "WARN"}


class WandbSink:
    def __init__(self, run=None, **init):
        try:
            import wandb
        except ImportError as exc:
            raise ImportError('watch(..., wandb=...) needs the wandb package: pip install "nndoctor[wandb]"') from exc
        self.owned = run is None and wandb.run is None
        self.run = run or wandb.run or wandb.init(**{"project": "nndoctor", **init})
        self.run.define_metric(STEP, hidden=True)
        self.run.define_metric(PREFIX + "*", step_metric=STEP)
        self._last_step = -1
        self._alerted: set[str] = set()
        self._finished = False

    def flushed(self, doctor, rows) -> None:
        if self._finished:
            return
        by_step: dict[int, dict] = {}
        for name, steps, values in traced(rows):
            for step, value in zip(steps, values):
                by_step.setdefault(int(step), {})[PREFIX + name] = value
        for step in sorted(s for s in by_step if s > self._last_step):  # the x-axis only moves forward
            self.run.log({STEP: step, **by_step[step]})
        self._last_step = max([self._last_step, *by_step])
        self._mark(doctor.findings)

    def reported(self, report) -> None:
        if self._finished:
            return
        import wandb
        from ..report.html import render_html
        self._mark(report.findings)
        self.run.summary[PREFIX + "findings"] = findings_markdown(report.findings)
        artifact = wandb.Artifact(f"nndoctor-report-{self.run.id}", type="nndoctor-report",
                                  metadata={"verdict": headline(report.findings),
                                            "codes": [f.code for f in report.findings]})
        folder = Path(self.run.dir) / "nndoctor"  # the run's own folder: W&B stages the files asynchronously
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.json").write_text(report.to_json(), encoding="utf-8")
        (folder / "report.html").write_text(render_html(report), encoding="utf-8")
        artifact.add_dir(str(folder))
        self.run.log_artifact(artifact)
        if self.owned:
            self.run.finish()
            self._finished = True

    def _mark(self, findings) -> None:
        """Tags follow the live verdict; a finding is alerted once, when first confirmed."""
        found = confirmed(findings)
        tags = [t for t in (self.run.tags or ()) if not t.startswith(TAG)] + [TAG + code for code in found]
        if tuple(tags) != tuple(self.run.tags or ()):
            self.run.tags = tuple(tags)
        self.run.summary[PREFIX + "verdict"] = headline(findings)
        for code, f in found.items():
            if code not in self._alerted:
                self._alerted.add(code)
                self.run.alert(title=f"nndoctor: {code}"[:63], text=f"{f.message}\nFix: {f.fix}", level=LEVEL[f.severity])
