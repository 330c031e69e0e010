"""Lightning: DoctorCallback on a small classifier (accumulation, fp16 AMP with GradScaler)."""
import csv

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.plugins import MixedPrecision  # noqa: E402

from nndoctor.findings import Report  # noqa: E402
from nndoctor.integrations.lightning import DoctorCallback  # noqa: E402


class Classifier(pl.LightningModule):
    def __init__(self, lr: float):
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class SGDClassifier(Classifier):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def fit(tmp_path, lr=1e-3, accumulate=1, plugins=(), epochs=8, clip=None, module=Classifier):
    torch.manual_seed(0)
    X = torch.randn(1024, 20)
    y = (X[:, :5].sum(1) > 0).long() + (X[:, 5:10].sum(1) > 0).long()
    data = torch.utils.data.TensorDataset(X, y)
    train = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    val = torch.utils.data.DataLoader(data, batch_size=256)
    callback = DoctorCallback(out=tmp_path / "report", print_report=False)
    trainer = pl.Trainer(max_epochs=epochs, accumulate_grad_batches=accumulate, callbacks=[callback], gradient_clip_val=clip,
                         plugins=list(plugins), logger=pl.loggers.CSVLogger(tmp_path / "logs"),
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module(lr), train, val)
    return trainer, callback.report


def logged(trainer) -> dict:
    with open(f"{trainer.logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {k: v for row in rows for k, v in row.items() if k.startswith("nndoctor/") and v != ""}


def test_healthy_fit_with_gradient_accumulation(tmp_path):
    trainer, report = fit(tmp_path, accumulate=4)
    assert report.meta["steps"] == trainer.global_step == 64  # optimizer steps, not batches
    assert report.meta["losses_logged"] == 64
    assert "val_loss" in report.series
    assert [f.code for f in report.findings if f.is_problem] == []
    assert Report.from_json((tmp_path / "report" / "report.json").read_text()).meta["steps"] == 64
    assert float(logged(trainer)["nndoctor/problems"]) == 0


def test_fp16_amp_gradients_are_read_unscaled_and_skipped_steps_left_out(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 30)  # the first steps overflow and are skipped
    trainer, report = fit(tmp_path, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert report.meta["steps"] < trainer.global_step
    assert max(report.series["grad_norm/total"]["value"]) < 100  # scaled by 2**30 they would be ~1e9
    assert [f.code for f in report.findings if f.is_problem] == []


def test_learning_rate_far_too_high_is_named_and_logged(tmp_path):
    trainer, report = fit(tmp_path, lr=1.0, epochs=4)
    assert report.findings[0].code == "lr.too_high"
    assert float(logged(trainer)["nndoctor/lr.too_high"]) == 1.0


@pytest.mark.parametrize("clip, clipped", [(0.01, True), (100.0, False)], ids=["clip=0.01", "clip=100"])
def test_gradient_clipping_on_every_step_is_named(tmp_path, clip, clipped):
    """Lightning clips after `on_before_optimizer_step`, where the gradients are read: the
    rule compares those norms with the trainer's gradient_clip_val."""
    trainer, report = fit(tmp_path, lr=0.5, epochs=4, clip=clip, module=SGDClassifier)
    assert report.has("grad.clipped_always") == clipped, [(f.code, f.message) for f in report.findings]
