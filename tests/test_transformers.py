"""Hugging Face Trainer: DoctorCallback on a tiny GPT-2 built from a config (no download)."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import nndoctor  # noqa: E402
from nndoctor.findings import Report  # noqa: E402
from nndoctor.integrations.script import run  # noqa: E402
from nndoctor.integrations.transformers import DoctorCallback  # noqa: E402


class Motifs(torch.utils.data.Dataset):
    """Sequences repeating a random 4-token motif: a tiny LM learns to continue them."""

    def __init__(self, n: int, seed: int = 0, length: int = 32, vocab: int = 64):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, 4), generator=g).repeat(1, length // 4)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class PaddedMotifs(Motifs):
    """Motifs cut to 8..20 tokens and right-padded with the pad id (= EOS, GPT-2's habit) to 32,
    with an attention mask; `mask_labels` sets the padding's labels to -100 as the HF
    collators do, otherwise the labels are a copy of the input ids (the bug)."""

    def __init__(self, n: int, mask_labels: bool, seed: int = 0, pad: int = 0):
        super().__init__(n, seed)
        g = torch.Generator().manual_seed(seed + 1)
        self.ids = self.ids % 63 + 1  # real tokens 1..63
        self.mask = (torch.arange(32)[None, :] < torch.randint(8, 21, (n, 1), generator=g)).long()
        self.ids[self.mask == 0] = pad
        self.mask_labels = mask_labels

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        if self.mask_labels:
            labels[self.mask[i] == 0] = -100
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": labels}


def train(tmp_path, lr: float, accumulate: int = 1, steps: int = 80, data=None, **options):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=16,
        gradient_accumulation_steps=accumulate, learning_rate=lr, report_to=[], use_cpu=True,
        save_strategy="no", logging_steps=1000, disable_tqdm=True, eval_strategy="steps", eval_steps=40,
        per_device_eval_batch_size=64)
    callback = DoctorCallback(print_report=False, **options)
    trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=args,
                                   train_dataset=data or Motifs(512), eval_dataset=Motifs(128, seed=1),
                                   callbacks=[callback])
    result = trainer.train()
    return trainer, result, callback.report


def test_healthy_training_with_accumulation(tmp_path):
    trainer, result, report = train(tmp_path, lr=1e-3, accumulate=2)
    assert report.meta["steps"] == trainer.state.global_step == 80
    assert report.meta["losses_logged"] == 80 and report.meta["optimizer"] == "AdamW"
    losses = report.series["loss"]["value"]
    assert abs(sum(losses) / len(losses) - result.training_loss) < 0.05  # the Trainer's own mean loss
    assert len(report.series["val_loss"]["value"]) == 2
    assert [f.code for f in report.findings if f.is_problem] == []
    saved = Report.from_json((tmp_path / "nndoctor-report" / "report.json").read_text())
    assert saved.meta["steps"] == 80


def test_learning_rate_far_too_high_is_named(tmp_path):
    _, _, report = train(tmp_path, lr=0.5, steps=60)
    assert report.findings[0].code == "lr.too_high"


def test_fail_on_stops_the_run_after_writing_the_report(tmp_path):
    from nndoctor.live import DoomedRun
    with pytest.raises(DoomedRun) as stopped:
        train(tmp_path, lr=0.5, steps=60, fail_on="error")
    assert stopped.value.finding.code == "lr.too_high"
    saved = Report.from_json((tmp_path / "nndoctor-report" / "report.json").read_text())
    assert saved.has("lr.too_high") and saved.meta["steps"] < 60
    assert (tmp_path / "nndoctor-report" / "report.html").exists()


@pytest.mark.parametrize("mask_labels", [False, True], ids=["labels=input_ids", "padding labels -100"])
def test_padding_counted_in_the_loss_is_named(tmp_path, mask_labels):
    _, _, report = train(tmp_path, lr=1e-3, steps=40, data=PaddedMotifs(256, mask_labels))
    assert report.has("data.padding_in_loss") != mask_labels, [(f.code, f.message) for f in report.findings]
    if not mask_labels:
        assert report.get("data.padding_in_loss").evidence["padding_share"] > 0.3


# the keyword call's first-step checks, the same under every watcher: (planted bug, the code it
# must raise at the first step); the healthy twin masks padding with -100 and keeps the default init
KEYWORD_BUGS = {"padding in labels": (dict(mask_labels=False), "data.padding_in_loss"),
                "head x50": (dict(head_scale=50.0), "loss.init_mismatch"),
                "healthy": ({}, None)}
KEYWORD_LOOP = """
import torch
def own_loop(model, data, opt):
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)
    for batch in loader:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
"""


def gpt2(head_scale: float = 1.0):
    """A tiny GPT-2 (its head tied to the token embedding), the head scaled after init."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model


def keyword_run(tmp_path, how: str, model, data) -> Report:
    """The first steps of `model` on `data` under the HF Trainer, nndoctor.watch() on a hand-written
    loop, or `nndoctor watch` on a script running that loop."""
    if how == "Trainer":
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=16, learning_rate=1e-3,
            report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
        callback = DoctorCallback(print_report=False)
        transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
        return callback.report
    if how == "watch()":
        scope = {}
        exec(KEYWORD_LOOP, scope)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with nndoctor.watch(model, opt, live=False) as doctor:
            scope["own_loop"](model, torch.utils.data.Subset(data, range(64)), opt)
        return doctor.report()
    torch.save({"model": model, "data": torch.utils.data.Subset(data, range(64))}, tmp_path / "setup.pt")
    script = tmp_path / "train.py"
    script.write_text(KEYWORD_LOOP + f"\nsetup = torch.load({str(tmp_path / 'setup.pt')!r}, weights_only=False)\n"
                      "own_loop(setup['model'], setup['data'], torch.optim.AdamW(setup['model'].parameters(), lr=1e-3))\n")
    assert run(str(script), [], out=tmp_path / "report") == 0
    return Report.from_json((tmp_path / "report" / "report.json").read_text())


@pytest.mark.parametrize("how", ["Trainer", "watch()", "nndoctor watch"])
@pytest.mark.parametrize("bug", list(KEYWORD_BUGS))
def test_keyword_model_bug_is_named_at_the_first_step_under_every_watcher(tmp_path, how, bug):
    """`model(input_ids=..., attention_mask=..., labels=...)` returning `.loss`/`.logits`: the
    capture path keeps the keyword inputs and the output, and the pre-flight names the planted
    bug at the first step (step None) whichever watcher holds the capture; the twin stays silent."""
    options, code = KEYWORD_BUGS[bug]
    data = PaddedMotifs(256, options.get("mask_labels", True))
    report = keyword_run(tmp_path, how, gpt2(options.get("head_scale", 1.0)), data)
    problems = [f.code for f in report.findings if f.is_problem]
    if code is None:
        assert problems == [], [(f.code, f.message) for f in report.findings]
    else:
        assert problems[0] == code and report.get(code).step is None, problems
    assert report.meta["checkup"]["at"] == "first training step"
    assert any("keyword inputs" in note for note in report.notes)


class TinyLM(torch.nn.Module):
    """An embedding and a head, HF-style: keyword inputs, an output with `.loss` and `.logits`.
    Its `**kwargs` take `num_items_in_batch` and ignore it (the loss is each micro-batch's mean)."""

    def __init__(self, vocab: int = 64, width: int = 32):
        super().__init__()
        self.embed, self.head = torch.nn.Embedding(vocab, width), torch.nn.Linear(width, vocab)

    def forward(self, input_ids, labels=None, attention_mask=None, **kwargs):
        logits = self.head(torch.relu(self.embed(input_ids)))
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return transformers.modeling_outputs.CausalLMOutput(loss=loss, logits=logits)


class OwnLossTrainer(transformers.Trainer):
    """A Trainer whose `compute_loss` takes the labels and computes the loss itself."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = torch.nn.functional.cross_entropy(outputs.logits.flatten(0, 1), labels.flatten())
        return (loss, outputs) if return_outputs else loss


def tiny_trainer(tmp_path, model=None, trainer=transformers.Trainer, data=None, steps=6, accumulate=1,
                 callback=None, **options):
    torch.manual_seed(0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8,
        gradient_accumulation_steps=accumulate, learning_rate=1e-3, report_to=[], use_cpu=True,
        save_strategy="no", logging_steps=1, disable_tqdm=True, **options)
    callbacks = [callback] if callback is not None else []
    return trainer(model=model or TinyLM(), args=args, train_dataset=data or Motifs(256), callbacks=callbacks)


@pytest.mark.parametrize("accumulate", [1, 4])
@pytest.mark.parametrize("trainer", [transformers.Trainer, OwnLossTrainer], ids=["model's loss", "own compute_loss"])
def test_recorded_loss_is_the_trainers_logged_loss(tmp_path, trainer, accumulate):
    """The Trainer sums each micro-batch's loss as it backpropagates it (a model whose `**kwargs`
    ignore `num_items_in_batch` is not divided by the accumulation steps; a custom compute_loss
    gives the model no labels): the recorded loss is the one it logs, and watching changes no number."""
    plain = tiny_trainer(tmp_path / "plain", trainer=trainer, accumulate=accumulate)
    plain.train()
    callback = DoctorCallback(print_report=False)
    watched = tiny_trainer(tmp_path / "watched", trainer=trainer, accumulate=accumulate, callback=callback)
    watched.train()
    logged = [h["loss"] for h in watched.state.log_history if "loss" in h]
    assert logged == [h["loss"] for h in plain.state.log_history if "loss" in h]
    assert callback.report.meta["losses_logged"] == 6
    assert callback.report.series["loss"]["value"] == pytest.approx(logged, rel=1e-5)


class OutOfRange(Motifs):
    """Labels up to 70 for a 64-token head: the loss raises IndexError at the first step."""

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i] + 7}


def test_a_crash_in_train_writes_the_report_and_detaches(tmp_path):
    with pytest.raises(IndexError) as bare:
        tiny_trainer(tmp_path / "bare", data=OutOfRange(64)).train()
    callback = DoctorCallback(print_report=False)
    trainer = tiny_trainer(tmp_path, data=OutOfRange(64), callback=callback)
    backward = torch.autograd.backward
    with pytest.raises(IndexError) as watched:
        trainer.train()
    assert str(watched.value) == str(bare.value)  # the user's exception, unchanged
    report = callback.report
    assert report is not None and report.findings[0].code == "data.labels_out_of_range", report.findings
    saved = Report.from_json((tmp_path / "nndoctor-report" / "report.json").read_text())
    assert saved.findings[0].code == "data.labels_out_of_range"
    assert torch.autograd.backward is backward
    hooked = [m for m in trainer.model.modules() if m._forward_pre_hooks or m is not trainer.model and m._forward_hooks]
    assert hooked == []  # the model's own forward hooks, which torch was running at the crash, stay inert
    trainer.train_dataset = Motifs(256)  # fixed: the next train() is watched afresh
    trainer.train()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in trainer.model.modules())
    assert callback.report is not report and callback.report.meta["steps"] == 6
    assert not callback.report.has("data.labels_out_of_range")


class SmoothedLM(TinyLM):
    """TinyLM whose own loss is label-smoothed: not the plain cross-entropy ln V judges."""

    def forward(self, input_ids, labels=None, attention_mask=None, **kwargs):
        logits = self.head(torch.relu(self.embed(input_ids)))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), label_smoothing=0.1)
        return transformers.modeling_outputs.CausalLMOutput(loss=loss, logits=logits)


@pytest.mark.parametrize("model", [TinyLM, SmoothedLM])
def test_the_capture_keeps_the_keyword_call_and_judges_only_the_models_plain_cross_entropy(model):
    """The first call's keyword inputs and output tensors are the case; a head x50 is named when
    the model's loss is its plain cross-entropy, and only noted when it is label-smoothed."""
    from nndoctor.collect.case import CaseCapture
    from nndoctor.preflight import examine_captured
    torch.manual_seed(0)
    lm = model()
    with torch.no_grad():
        lm.head.weight.mul_(50)
    batch = PaddedMotifs(16, mask_labels=True)[:]
    capture = CaseCapture(lm)
    capture.install()
    try:
        out = lm(**batch)
        out.loss.backward()
        captured = capture.case()
    finally:
        capture.finish()
    assert sorted(captured.keywords) == ["attention_mask", "input_ids", "labels"]
    assert sorted(captured.result) == ["logits", "loss"] and float(captured.result["loss"]) == out.loss.item()
    findings, notes, _ = examine_captured(captured)
    assert [f.code for f in findings] == (["loss.init_mismatch"] if model is TinyLM else []), notes
    if model is SmoothedLM:
        assert any("not the plain cross-entropy" in n for n in notes)



TRAINER_SCRIPT = """
import json, sys
import torch, transformers

class Motifs(torch.utils.data.Dataset):
    def __init__(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 64, (n, 4), generator=g).repeat(1, 8)
    def __len__(self):
        return len(self.ids)
    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}

torch.manual_seed(0)
config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                 bos_token_id=0, eos_token_id=0, pad_token_id=0)
steps = int(sys.argv[4])
args = transformers.TrainingArguments(output_dir=sys.argv[2], max_steps=steps, per_device_train_batch_size=16,
                                      gradient_accumulation_steps=2, learning_rate=float(sys.argv[1]),
                                      report_to=[], use_cpu=True, save_strategy="no", logging_steps=10,
                                      disable_tqdm=True, eval_strategy="steps", eval_steps=steps // 2)
trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=args,
                               train_dataset=Motifs(512), eval_dataset=Motifs(64, seed=1))
result = trainer.train()
weights = sum(float(p.double().sum()) for p in trainer.model.parameters())
json.dump({"loss": result.training_loss, "weights": weights,
           "logged": [h["loss"] for h in trainer.state.log_history if "loss" in h]}, open(sys.argv[3], "w"))
"""


@pytest.mark.parametrize("lr, steps, code", [(1e-3, 80, None), (0.5, 24, "lr.too_high")], ids=["healthy", "lr 0.5"])
def test_an_unmodified_trainer_script_under_nndoctor_watch(tmp_path, lr, steps, code):
    """A script that trains with the HF Trainer and knows nothing of nndoctor (no callback):
    `nndoctor watch` finds the model and its optimizer through the Trainer and Accelerate, names
    the bug, stays silent on the healthy twin, and the run's numbers are those of the plain run."""
    import json
    import subprocess
    import sys
    script = tmp_path / "train.py"
    script.write_text(TRAINER_SCRIPT)
    subprocess.run([sys.executable, str(script), str(lr), str(tmp_path / "plain"), str(tmp_path / "plain.json"), str(steps)],
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    subprocess.run([sys.executable, "-m", "nndoctor.cli", "watch", "--out", str(tmp_path / "report"), str(script),
                    str(lr), str(tmp_path / "watched"), str(tmp_path / "watched.json"), str(steps)],
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    plain, watched = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("plain", "watched"))
    assert watched == plain  # the same losses and final weights, to the last bit
    report = Report.from_json((tmp_path / "report" / "report.json").read_text())
    problems = [f.code for f in report.findings if f.is_problem]
    assert report.meta["steps"] == steps and report.meta["optimizer"] == "AdamW", report.meta
    # the recorded loss of a step is the sum of its two micro-batches' (each divided by 2 by the
    # Trainer): the mean over each logging window of 10 steps is the one the Trainer logs
    losses = report.series["loss"]["value"]
    windows = [sum(losses[i:i + 10]) / 10 for i in range(0, steps - 9, 10)]
    assert windows == pytest.approx(plain["logged"], rel=1e-3)
    if code is None:
        assert problems == [], [(f.code, f.message) for f in report.findings]
    else:
        assert problems and problems[0] == code, problems
