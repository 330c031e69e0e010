"""Overhead of each integration, measured like benchmarks/overhead.py: in one process, the
variants interleaved in a shuffled order each round, CPU time, 1 thread, batch 128, MLP
784-512-512-10. Each adapter is compared with the same training without it:

- `nndoctor watch` (the global hooks of the script runner) and `tensorboard=` vs the plain loop;
- the Lightning DoctorCallback vs the same `Trainer.fit`;
- the Hugging Face DoctorCallback vs the same `Trainer.train`.

    python benchmarks/integrations.py [--steps 100] [--repeats 5]

Frameworks that are not installed are left out. (DDP is not timed here: its exchange runs
once per flush, every 50 steps, and on 2 CPU processes its cost is dominated by the
all-reduce of DDP itself.)
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import warnings

import torch
from torch import nn

import nndoctor
from nndoctor.integrations.script import ScriptWatcher
from overhead import mlp

BATCH = 128


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(BATCH * 8, 784, generator=g), torch.randint(0, 10, (BATCH * 8,), generator=g)


def plain(steps: int, variant: str) -> float:
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9)
    X, y = data()
    loss_fn = nn.CrossEntropyLoss()

    def loop(doctor=None):
        for i in range(steps):
            j = (i % 8) * BATCH
            loss = loss_fn(model(X[j:j + BATCH]), y[j:j + BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if doctor is not None:
                doctor.log(loss=loss)

    loop()  # warm-up outside the timing
    start = time.process_time()
    if variant.startswith("plain"):
        loop()
    elif variant == "nndoctor watch SCRIPT":
        watcher = ScriptWatcher()
        watcher.install()
        try:
            loop()
            watcher.report(None)
        finally:
            watcher.remove()
    else:
        options = {"tensorboard": tempfile.mkdtemp()} if "tensorboard" in variant else {}
        with nndoctor.watch(model, opt, **options) as doctor:
            loop(doctor)
        doctor.report()
    return (time.process_time() - start) / steps * 1000


def lightning(steps: int, variant: str) -> float:
    import lightning.pytorch as pl
    from nndoctor.integrations.lightning import DoctorCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), 0.01, momentum=0.9)

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data()), batch_size=BATCH)
    callbacks = [DoctorCallback(out=None, print_report=False)] if "doctor" in variant else []
    trainer = pl.Trainer(max_steps=steps, callbacks=callbacks, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, accelerator="cpu")
    start = time.process_time()
    trainer.fit(Module(), loader)
    return (time.process_time() - start) / steps * 1000


def hugging_face(steps: int, variant: str) -> float:
    import transformers
    from nndoctor.integrations.transformers import DoctorCallback

    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x, labels):
            return {"loss": nn.functional.cross_entropy(self.net(x), labels)}

    class Pairs(torch.utils.data.Dataset):
        def __init__(self):
            self.X, self.y = data()

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {"x": self.X[i], "labels": self.y[i]}

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=BATCH,
                                              learning_rate=0.01, report_to=[], use_cpu=True, save_strategy="no",
                                              logging_steps=10 ** 6, disable_tqdm=True, dataloader_num_workers=0)
        callbacks = [DoctorCallback(out=os.path.join(out, "r"), print_report=False)] if "doctor" in variant else []
        trainer = transformers.Trainer(model=WithLoss(), args=args, train_dataset=Pairs(), callbacks=callbacks)
        start = time.process_time()
        trainer.train()
        return (time.process_time() - start) / steps * 1000


def available(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    random.seed(0)
    # (baseline, variant, timing function)
    pairs = [("plain", "plain (again)", plain), ("plain", "watch (default)", plain),
             ("plain", "nndoctor watch SCRIPT", plain)]
    if available("tensorboard"):
        pairs.append(("plain", "watch + tensorboard", plain))
    if available("lightning"):
        pairs.append(("lightning fit", "lightning fit + doctor", lightning))
    if available("transformers") and available("accelerate"):
        pairs.append(("HF train", "HF train + doctor", hugging_face))
    run = {name: fn for base, name, fn in pairs for name in (base, name)}
    times = {name: [] for name in run}
    print(f"torch {torch.__version__}, 1 thread, batch {BATCH}, MLP 784-512-512-10, "
          f"{args.steps} steps x {args.repeats} interleaved repeats (CPU time)")
    for _ in range(args.repeats):
        order = list(run)
        random.shuffle(order)
        for name in order:
            times[name].append(run[name](args.steps, name))
    for base, name, _ in pairs:
        ms, base_ms = statistics.median(times[name]), statistics.median(times[base])
        best = min(times[name]) / min(times[base])
        print(f"{name:24s} {ms:7.2f} ms/step  vs {base:14s} {base_ms:7.2f}  median {ms / base_ms:5.3f}x  best {best:5.3f}x")


if __name__ == "__main__":
    main()
