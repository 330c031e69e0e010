"""TensorBoard: watch(..., tensorboard=logdir) writes traces and findings at flushes only."""
import pytest
import torch
from torch import nn

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

import nndoctor  # noqa: E402


def read(logdir) -> EventAccumulator:
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def findings_text(events) -> str:
    return events.Tensors("nndoctor/findings/text_summary")[-1].tensor_proto.string_val[0].decode()


def train(logdir, lr: float, steps: int, stop_at: int | None = None):
    torch.manual_seed(0)
    X = torch.randn(512, 10)
    y = (X[:, :3].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with nndoctor.watch(model, opt, tensorboard=logdir) as doctor:
        for step in range(steps):
            idx = torch.randint(0, 512, (64,))
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
            if step + 1 == stop_at:
                return read(logdir)
    doctor.report()
    return read(logdir)


def test_scalars_and_findings_read_back(tmp_path):
    events = train(tmp_path, lr=0.1, steps=200)
    tags = events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("nndoctor/loss")] == list(range(200))
    for tag in ("nndoctor/grad_norm/0.weight", "nndoctor/update_ratio/2.weight", "nndoctor/dead/1"):
        assert tag in tags
    assert "Healthy" in findings_text(events)


def test_nothing_is_written_between_flushes(tmp_path):
    events = train(tmp_path, lr=0.1, steps=200, stop_at=49)   # flush_every=50: not flushed yet
    assert "nndoctor/loss" not in events.Tags()["scalars"]
    events = train(tmp_path / "again", lr=0.1, steps=200, stop_at=50)
    assert len(events.Scalars("nndoctor/loss")) == 49  # the loss of step 49 is logged after the flush


def test_a_finding_reaches_tensorboard_as_text(tmp_path):
    events = train(tmp_path, lr=40.0, steps=100)
    assert "lr.too_high" in findings_text(events)
