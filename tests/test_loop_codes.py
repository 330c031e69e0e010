"""The loop and data codes of issue 13 in the styles users write them: an unmodified script
under `nndoctor watch`, their own loop under `nndoctor.watch`, Lightning. Each bug fires on a
small real network that has it; its healthy twin and the intended patterns (gradient
accumulation, no_grad evaluation in eval mode, a frozen backbone that learns, teacher
forcing, schedulers stepped per epoch or sized in steps) stay silent."""
import textwrap
import warnings

import pytest
import torch
from torch import nn

import nndoctor
from nndoctor.findings import Report
from nndoctor.integrations.script import run

NEW_CODES = {"loop.graph_retained", "loop.eval_with_grad", "loop.eval_in_train_mode", "loop.eval_on_train_data",
             "data.split_mismatch", "lr.schedule_too_fast", "params.frozen"}

# A user's script: 8 epochs of minibatches over pixel-like inputs (0..255 raw, divided by 255),
# validation at the end of each epoch. Each case swaps a few lines.
SCRIPT = """
import torch
from torch import nn
torch.manual_seed(0)
X = torch.rand(1200, 20) * 255
y = (X @ torch.randn(20, 4)).argmax(1)
X_train, y_train, X_val, y_val = X[:900], y[:900], X[900:], y[900:]
{prep}
model = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 4))
{freeze}
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
{schedule}
history, val_history = [], []
for epoch in range(8):
    model.train()
    perm = torch.randperm(900)
    for i in range(0, 900, 32):
        xb, yb = X_train[perm[i:i + 32]], y_train[perm[i:i + 32]]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        {per_batch}
        history.append({kept})
    {per_epoch}
{validation}
    val_history.append(val_loss.item())
print(f"train {{sum(history[-28:]) / 28:.3f}} val {{val_history[-1]:.3f}}")
"""

VALIDATION = """
    model.eval()
    with torch.no_grad():
        val_loss = nn.functional.cross_entropy(model(X_val), y_val)
"""

HEALTHY = dict(prep="X_train, X_val = X_train / 255, X_val / 255", freeze="", schedule="", per_batch="",
               kept="loss.item()", per_epoch="", validation=VALIDATION)

SICK = {
    "loop.graph_retained": dict(kept="loss"),
    "loop.eval_with_grad": dict(validation=VALIDATION.replace("    with torch.no_grad():\n", "    if True:\n")),
    "loop.eval_in_train_mode": dict(validation=VALIDATION.replace("    model.eval()\n", "")),
    "loop.eval_on_train_data": dict(validation=VALIDATION.replace("model(X_val), y_val", "model(X_train), y_train")),
    "data.split_mismatch": dict(prep="X_train = X_train / 255  # the validation split is left in 0..255"),
    "lr.schedule_too_fast": dict(schedule="sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)",
                                 per_batch="sched.step()"),
    "params.frozen": dict(freeze="for name, p in model.named_parameters():\n"
                                 "    if 'weight' in name:  # meant: the backbone's weights only\n"
                                 "        p.requires_grad_(False)"),
}

INTENDED = {
    "step-lr-per-epoch": dict(schedule="sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)",
                              per_epoch="sched.step()"),
    "onecycle-per-batch": dict(schedule="sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=8 * 29)",
                               per_batch="sched.step()"),
    "cosine-per-batch-in-steps": dict(schedule="sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8 * 29)",
                                      per_batch="sched.step()"),
    "frozen-first-layer-learns": dict(freeze="model[0].requires_grad_(False)"),
    "detached-losses-kept": dict(kept="loss.detach()"),
    "inference-mode-validation": dict(validation=VALIDATION.replace("torch.no_grad()", "torch.inference_mode()")),
    "train-accuracy-on-the-batch": dict(per_batch="with torch.no_grad():\n"
                                                  "            acc = (model(xb).argmax(1) == yb).float().mean()"),
    "train-and-val-evaluated": dict(validation=VALIDATION + """
    with torch.no_grad():
        train_eval = nn.functional.cross_entropy(model(X_train), y_train)
    model.train()
"""),
}


def watched(tmp_path, **changes) -> Report:
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(SCRIPT.format(**{**HEALTHY, **changes})))
    out = tmp_path / "report"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # our own failure would be a RuntimeWarning
        assert run(str(path), [], out=out) == 0
    return Report.from_json((out / "report.json").read_text())


def problems(report: Report) -> list[str]:
    return [f.code for f in report.findings if f.is_problem]


@pytest.mark.parametrize("code", sorted(SICK))
def test_script_bug_is_named_first(tmp_path, code):
    found = problems(watched(tmp_path, **SICK[code]))
    assert found and found[0] == code, found


@pytest.mark.parametrize("case", ["healthy", *sorted(INTENDED)])
def test_script_healthy_twin_and_intended_patterns_stay_silent(tmp_path, case):
    report = watched(tmp_path, **INTENDED.get(case, {}))
    assert problems(report) == [], [(f.code, f.message) for f in report.findings if f.is_problem]


def test_names_of_the_frozen_parameters_are_in_the_message(tmp_path):
    finding = watched(tmp_path, **SICK["params.frozen"]).get("params.frozen")
    assert "0.weight" in finding.message and "4.weight" in finding.message


# ---- the user's own loop under nndoctor.watch -------------------------------------------------

def classifier():
    torch.manual_seed(0)
    X = torch.randn(800, 12)
    y = (X[:, :6].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 2))
    return model, X, y


def test_gradient_accumulation_with_no_grad_eval_mode_validation_is_silent():
    model, X, y = classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with nndoctor.watch(model, opt) as doctor:
        for step in range(600):
            idx = torch.randint(0, 600, (16,))
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx]) / 4
            loss.backward()
            if step % 4 == 3:
                opt.step()
                opt.zero_grad()
                doctor.log(loss=loss.detach() * 4)
            if step % 40 == 39:
                model.eval()
                with torch.no_grad():
                    doctor.log(val_loss=nn.functional.cross_entropy(model(X[600:]), y[600:]))
                model.train()
    report = doctor.report()
    assert doctor.forwards.evaluations == 15 and doctor.forwards.training == 600
    assert problems(report) == [], [(f.code, f.message) for f in report.findings if f.is_problem]


class Decoder(nn.Module):
    """One step of a GRU decoder: the previous token in, the next token's logits out."""
    def __init__(self, vocab=8, width=32):
        super().__init__()
        self.embed, self.cell, self.out = nn.Embedding(vocab, width), nn.GRUCell(width, width), nn.Linear(width, vocab)

    def forward(self, token, h):
        h = self.cell(self.embed(token), h)
        return self.out(h), h


def test_teacher_forcing_decoder_called_per_time_step_is_silent():
    torch.manual_seed(0)
    decoder = Decoder()
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    sequences = torch.randint(0, 8, (256, 1)).repeat(1, 10).cumsum(1) % 8  # each row counts up by its first token
    with nndoctor.watch(decoder, opt) as doctor:
        for step in range(120):
            batch = sequences[torch.randint(0, 256, (32,))]
            h = torch.zeros(32, 32)
            loss = 0
            for t in range(9):  # teacher forcing: the true token goes in at every step
                logits, h = decoder(batch[:, t], h)
                loss = loss + nn.functional.cross_entropy(logits, batch[:, t + 1])
            opt.zero_grad()
            (loss / 9).backward()
            opt.step()
            doctor.log(loss=loss.detach() / 9)
            if step % 30 == 29:  # greedy decoding, the way users validate a decoder
                with torch.no_grad():
                    h, token = torch.zeros(32, 32), batch[:, 0]
                    for t in range(9):
                        logits, h = decoder(token, h)
                        token = logits.argmax(1)
    report = doctor.report()
    assert doctor.forwards.training == 120 * 9
    assert problems(report) == [], [(f.code, f.message) for f in report.findings if f.is_problem]


def test_outputs_kept_with_their_graph_are_named_in_an_own_loop():
    model, X, y = classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    outputs = []
    with nndoctor.watch(model, opt) as doctor:
        for step in range(200):
            idx = torch.randint(0, 600, (32,))
            out = model(X[idx])
            loss = nn.functional.cross_entropy(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            outputs.append(out)  # for an epoch-end metric, with its graph
            doctor.log(loss=loss.detach())
    report = doctor.report()
    assert problems(report) == ["loop.graph_retained"]


def test_no_sync_and_bounded_memory_over_a_long_validation_pass():
    """A validation pass of thousands of batches with no optimizer step in between keeps a
    bounded window and measures at most EVAL_SAMPLES of them."""
    from nndoctor.collect import forwards as fw
    model, X, y = classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with nndoctor.watch(model, opt) as doctor:
        for step in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[:32]), y[:32]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for i in range(2000):
                model(X[i % 700:i % 700 + 4])
        assert len(doctor.forwards._window) <= fw.WINDOW
        assert len(doctor.forwards._pending) <= fw.EVAL_SAMPLES + 1
    doctor.report()  # the forwards after the last step are judged with the report
    assert doctor.forwards.evaluations == 2000


# ---- Lightning: it calls eval() and no_grad around validation itself, so of these codes the
# schedule, the frozen parameters, a kept graph and the evaluated data are the user's business

pl = pytest.importorskip("lightning.pytorch")


class LitClassifier(pl.LightningModule):
    def __init__(self, keep_graphs=False, freeze=False, schedule=None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
        self.keep_graphs, self.schedule, self.kept = keep_graphs, schedule, []
        if freeze:
            for name, p in self.net.named_parameters():
                if "weight" in name:
                    p.requires_grad_(False)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.kept.append(loss if self.keep_graphs else loss.detach())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        if self.schedule is None:
            return opt
        scheduler, interval = self.schedule
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(opt), "interval": interval}}


def lightning_fit(tmp_path, val_on_train=False, **options) -> Report:
    from nndoctor.integrations.lightning import DoctorCallback
    torch.manual_seed(0)
    X = torch.randn(1280, 20)
    y = (X[:, :5].sum(1) > 0).long() + (X[:, 5:10].sum(1) > 0).long()
    train_set = torch.utils.data.TensorDataset(X[:1024], y[:1024])
    val_set = train_set if val_on_train else torch.utils.data.TensorDataset(X[1024:], y[1024:])
    callback = DoctorCallback(out=None, print_report=False)
    trainer = pl.Trainer(max_epochs=8, callbacks=[callback], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(LitClassifier(**options), torch.utils.data.DataLoader(train_set, batch_size=32, shuffle=True),
                torch.utils.data.DataLoader(val_set, batch_size=256))
    return callback.report


def step_lr(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)  # sized in epochs


@pytest.mark.parametrize("code, options", [
    ("lr.schedule_too_fast", dict(schedule=(step_lr, "step"))),
    ("params.frozen", dict(freeze=True)),
    ("loop.graph_retained", dict(keep_graphs=True)),
    ("loop.eval_on_train_data", dict(val_on_train=True)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_lightning_bug_is_named_first(tmp_path, code, options):
    found = problems(lightning_fit(tmp_path, **options))
    assert found and found[0] == code, found


def test_lightning_schedule_per_epoch_is_silent(tmp_path):
    report = lightning_fit(tmp_path, schedule=(step_lr, "epoch"))
    assert problems(report) == [], [(f.code, f.message) for f in report.findings if f.is_problem]


def test_a_deepcopied_teacher_in_train_mode_is_not_the_model_evaluating():
    """A copy.deepcopy of a watched model carries its hooks; the copy's forwards are not the model's."""
    import copy
    model, X, y = classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with nndoctor.watch(model, opt) as doctor:
        teacher = copy.deepcopy(model)  # train mode, used without gradients every step
        for step in range(200):
            idx = torch.randint(0, 600, (32,))
            with torch.no_grad():
                soft = teacher(X[idx]).softmax(1)
            out = model(X[idx])
            loss = nn.functional.cross_entropy(out, y[idx]) + 0.1 * nn.functional.cross_entropy(out, soft)
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss.detach())
    report = doctor.report()
    assert doctor.forwards.evaluations == 0
    assert problems(report) == [], [(f.code, f.message) for f in report.findings if f.is_problem]
