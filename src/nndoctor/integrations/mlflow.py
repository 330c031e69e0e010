"""MLflow: the doctor's traces as metrics, its findings as tags, the report as artifacts.

    with nndoctor.watch(model, optimizer, mlflow=True) as doctor: ...

Logs into the active MLflow run (`mlflow.start_run()`), or else creates a run of its own in
the configured tracking store (`MLFLOW_TRACKING_URI`, `mlflow.set_tracking_uri`) and ends it
with the report. At each flush: the traces as metrics (`nndoctor/loss`,
`nndoctor/grad_norm/<param>`, ...) in one batch per 1,000 values, and each confirmed finding
(warning or error) as a tag `nndoctor.finding.<code>` = "<severity>: <message>", removed if
the finding is withdrawn; `nndoctor.verdict` sums them up. At `report()`: the final findings
and `nndoctor/report.json` and `nndoctor/report.html` as artifacts. Needs the `mlflow`
package (`pip install "nndoctor[mlflow]"`).
"""
from __future__ import annotations

import re
import time

from .sinks import confirmed, headline, traced

PREFIX = "nndoctor/"
TAG = "nndoctor.finding."
BATCH = 1000          # MLflow's limit of metrics per log_batch request
TAG_LENGTH = 5000     # MLflow accepts 8,000 characters; a message is one sentence


def metric_key(name: str) -> str:
    """MLflow keys allow letters, digits, `_ - . / : ` and spaces; a module path may hold others."""
    return PREFIX + re.sub(r"[^\w\-./: ]", "_", name)


class MLflowSink:
    def __init__(self, run_id: str | None = None, tracking_uri: str | None = None,
                 experiment: str | None = None, run_name: str = "nndoctor"):
        try:
            import mlflow
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ImportError('watch(..., mlflow=...) needs the mlflow package: pip install "nndoctor[mlflow]"') from exc
        self.client = MlflowClient(tracking_uri)
        active = mlflow.active_run()
        if run_id is None and active is not None and tracking_uri is None and experiment is None:
            run_id = active.info.run_id   # the user's own run
        self.owned = run_id is None
        if self.owned:
            run_id = self.client.create_run(self._experiment_id(experiment), run_name=run_name).info.run_id
        self.run_id = run_id
        self._tagged: dict[str, str] = {}

    def _experiment_id(self, name: str | None) -> str:
        if name is None:
            from mlflow.tracking.fluent import _get_experiment_id  # honours mlflow.set_experiment and the env
            return _get_experiment_id() or "0"
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else self.client.create_experiment(name)

    def flushed(self, doctor, rows) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(name), value, now, step)
                   for name, steps, values in traced(rows) for step, value in zip(steps, values)]
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH])
        self._tag(doctor.findings)

    def reported(self, report) -> None:
        from ..report.html import render_html
        self._tag(report.findings)
        self.client.log_text(self.run_id, report.to_json(), PREFIX + "report.json")
        self.client.log_text(self.run_id, render_html(report), PREFIX + "report.html")
        if self.owned:
            self.client.set_terminated(self.run_id)

    def _tag(self, findings) -> None:
        """Tags follow the live verdict: a confirmed finding is tagged, a withdrawn one untagged."""
        wanted = {TAG + code: f"{f.severity}: {f.message}"[:TAG_LENGTH] for code, f in confirmed(findings).items()}
        wanted["nndoctor.verdict"] = headline(findings)
        for key in set(self._tagged) - set(wanted):
            self.client.delete_tag(self.run_id, key)
        for key, value in wanted.items():
            if self._tagged.get(key) != value:
                self.client.set_tag(self.run_id, key, value)
        self._tagged = wanted
