"""What the tracker sinks (TensorBoard, MLflow, Weights & Biases) share.

A sink is given to the watcher (`watch(..., sinks=[...])`, or `tensorboard=`, `mlflow=`,
`wandb=`): at each flush it receives `.flushed(doctor, rows)`, the rows that just reached the
CPU (name, steps, values), and the live findings in `doctor.findings`; at the end
`.reported(report)`. Nothing reaches a sink between flushes, so no tracker adds a device sync
to a training step.
"""
from __future__ import annotations

TRACES = ("loss", "val_loss", "grad_norm/", "update_ratio/", "dead/", "saturated/")


def traced(rows):
    """The rows a tracker logs as metrics: (name, steps, values) as Python lists."""
    for name, steps, values in rows:
        if name in TRACES or any(p.endswith("/") and name.startswith(p) for p in TRACES):
            yield name, steps.tolist(), values.tolist()


def confirmed(findings) -> dict:
    """code -> finding, for the findings at warning or error (what a tracker tags or alerts)."""
    return {f.code: f for f in findings if f.is_problem}


def headline(findings) -> str:
    """One short line for a run's list view: "error: lr.too_high (+2 more)" or "healthy"."""
    problems = list(confirmed(findings).values())
    if not problems:
        return "healthy"
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{problems[0].severity}: {problems[0].code}{more}"


def findings_markdown(findings) -> str:
    """The findings as a Markdown table (TensorBoard's text plugin and W&B render Markdown)."""
    if not any(f.is_problem for f in findings):
        head = "**Healthy: no warning or error.**"
    else:
        head = f"**{sum(f.is_problem for f in findings)} problem(s).**"
    rows = [f"| {f.severity} | `{f.code}` | {_cell(f.message)} | {_cell(f.fix)} | {f.step} |" for f in findings]
    table = ["", "| severity | code | message | fix | step |", "|---|---|---|---|---|"] + rows if rows else []
    return "\n".join([head] + table)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
