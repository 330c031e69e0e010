"""MLflow and Weights & Biases sinks, against the real libraries offline, read back from what
they stored: a sick run (learning rate 40) gets its finding as a tag/alert, a healthy twin
(0.1) gets none, the traces arrive as metrics and the report as an artifact."""
import glob
import json
import struct

import pytest
import torch
from torch import nn

import nndoctor
from nndoctor.findings import Report


def train(lr: float, steps: int = 100, log=None, seed: int = 0, **trackers):
    """A small classifier's own loop under watch(); `log(step, loss)` is the user's logging."""
    torch.manual_seed(seed)
    X = torch.randn(512, 10)
    y = (X[:, :3].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with nndoctor.watch(model, opt, **trackers) as doctor:
        for step in range(steps):
            idx = torch.randint(0, 512, (64,))
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
            if log is not None:
                log(step, loss)
    return doctor.report()


# ---- MLflow: a local file store under tmp_path ------------------------------------------------
@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x keeps the file store behind this switch
    yield mlflow, MlflowClient(uri)
    while mlflow.active_run():
        mlflow.end_run()


def finding_tags(run) -> dict:
    return {k[len("nndoctor.finding."):]: v for k, v in run.data.tags.items() if k.startswith("nndoctor.finding.")}


def test_mlflow_sick_run_gets_its_finding_metrics_and_report(mlflow_store, tmp_path):
    mlflow, client = mlflow_store
    report = train(lr=40.0, mlflow=True)
    assert report.has("lr.too_high")
    [run] = client.search_runs(["0"])
    assert run.info.status == "FINISHED"   # its own run: ended with the report
    tags = finding_tags(run)
    assert tags["lr.too_high"].startswith("error: ") and set(tags) == {f.code for f in report.findings if f.is_problem}
    assert run.data.tags["nndoctor.verdict"].startswith("error: lr.too_high")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "nndoctor/loss")] == list(range(100))
    assert client.get_metric_history(run.info.run_id, "nndoctor/grad_norm/0.weight")
    saved = Report.from_json(open(client.download_artifacts(run.info.run_id, "nndoctor/report.json",
                                                            str(tmp_path))).read())
    assert saved.has("lr.too_high")
    html = open(client.download_artifacts(run.info.run_id, "nndoctor/report.html", str(tmp_path))).read()
    assert "lr.too_high" in html


def test_mlflow_healthy_twin_in_the_users_own_run(mlflow_store):
    mlflow, client = mlflow_store
    with mlflow.start_run() as active:
        report = train(lr=0.1, mlflow=True, log=lambda step, loss: mlflow.log_metric("mine", loss.item(), step))
        assert mlflow.active_run().info.run_id == active.info.run_id  # still the user's, still open
    assert report.healthy
    run = client.get_run(active.info.run_id)
    assert finding_tags(run) == {} and run.data.tags["nndoctor.verdict"] == "healthy"
    assert len(client.get_metric_history(run.info.run_id, "nndoctor/loss")) == 100
    assert len(client.get_metric_history(run.info.run_id, "mine")) == 100  # the user's own logging untouched
    assert [a.path for a in client.list_artifacts(run.info.run_id, "nndoctor")] == \
        ["nndoctor/report.html", "nndoctor/report.json"]


# ---- Weights & Biases: offline, read back from the run's own .wandb file ----------------------
@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(key, value)
    wandb.teardown()  # W&B caches its settings (WANDB_DIR) for the process: read them afresh
    yield wandb
    if wandb.run is not None:
        wandb.run.finish()
    wandb.teardown()


def wandb_records(tmp_path):
    """The records of the offline run: W&B's transaction log is LevelDB's log format (32 KiB
    blocks of chunks: crc32, length, type FULL/FIRST/MIDDLE/LAST) of protobuf Records, after a
    7-byte header ":W&B" + magic + version."""
    from wandb.proto import wandb_internal_pb2
    [path] = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "*.wandb"))
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, record = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        record = chunk if kind in (1, 2) else record + chunk
        if kind in (1, 4):
            parsed = wandb_internal_pb2.Record()
            parsed.ParseFromString(record)
            yield parsed


def wandb_run_log(tmp_path) -> dict:
    import wandb
    wandb.teardown()  # the W&B service writes the run's last records to disk when it shuts down
    out = {"history": [], "tags": (), "alerts": [], "summary": {}, "artifacts": []}
    for r in wandb_records(tmp_path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "run":
            out["tags"] = tuple(r.run.tags)
        elif kind == "alert":
            out["alerts"].append((r.alert.title, r.alert.level))
        elif kind == "summary":
            out["summary"].update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.summary.update})
        elif kind == "artifact":
            out["artifacts"].append((r.artifact.type, {e.path: e.local_path for e in r.artifact.manifest.contents}))
    return out


def test_wandb_sick_run_gets_its_finding_metrics_and_report(wandb_offline, tmp_path):
    report = train(lr=40.0, wandb=True)
    assert report.has("lr.too_high") and wandb_offline.run is None  # its own run: finished with the report
    logged = wandb_run_log(tmp_path)
    problems = {f.code for f in report.findings if f.is_problem}
    assert {t[len("nndoctor:"):] for t in logged["tags"] if t.startswith("nndoctor:")} == problems
    assert ("nndoctor: lr.too_high", "ERROR") in logged["alerts"]
    assert len(logged["alerts"]) == len(problems)  # each finding alerted once
    assert logged["summary"]["nndoctor/verdict"].startswith("error: lr.too_high")
    loss_steps = [row["nndoctor/step"] for row in logged["history"] if "nndoctor/loss" in row]
    assert loss_steps == list(range(100))
    assert any("nndoctor/grad_norm/0.weight" in row for row in logged["history"])
    [(kind, files)] = logged["artifacts"]
    assert kind == "nndoctor-report" and set(files) == {"report.json", "report.html"}
    assert Report.from_json(open(files["report.json"]).read()).has("lr.too_high")


def test_wandb_healthy_twin_in_the_users_own_run(wandb_offline, tmp_path):
    run = wandb_offline.init(project="mine", tags=["baseline"])
    report = train(lr=0.1, wandb=True, log=lambda step, loss: run.log({"mine": loss.item()}))
    assert report.healthy and wandb_offline.run is run  # the user's run: left open for the user
    run.finish()
    logged = wandb_run_log(tmp_path)
    assert logged["tags"] == ("baseline",) and logged["alerts"] == []
    assert logged["summary"]["nndoctor/verdict"] == "healthy"
    assert sum("mine" in row for row in logged["history"]) == 100  # the user's own logging untouched
    assert sum("nndoctor/loss" in row for row in logged["history"]) == 100
