"""Overhead of watching: plain loop vs `nndoctor.watch` in the same process.

Repetitions are interleaved, in a shuffled order each round, so machine noise hits all
variants alike. Time is this process's CPU time (`time.process_time`), which
other processes on a shared machine do not inflate; ratios of medians and of best runs are
printed, and the second plain variant shows the noise floor. CPU, 1 thread, batch 128.

    python benchmarks/overhead.py [--steps 200] [--repeats 9]

With `cockpit-for-pytorch` importable (install it only in a throwaway venv), Cockpit's
economy and business configurations run side by side, tracking every step as its README's
loop does; they are timed over `--cockpit-steps` steps (its per-step cost is flat, and a
second per step on the MLP would make the full count take an hour).
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings

import torch
from torch import nn

import nndoctor


def mlp():
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


NETS = {"mlp 784-512-512-10": (mlp, (784,)), "cnn 2conv+fc, 28x28": (cnn, (1, 28, 28))}
# "plain (again)" measures the noise floor: its ratio to "plain" is what the machine alone does
VARIANTS = {"plain": None, "plain (again)": None, "watch (default)": {},
            "watch (every step)": {"sample_every": 1, "flush_every": 1}}
try:  # Cockpit side by side, where it is installed (only ever in a throwaway venv, never in CI)
    import cockpit  # noqa: F401
    VARIANTS.update({"cockpit (economy)": "economy", "cockpit (business)": "business"})
except ImportError:
    pass


def time_steps(build, shape, steps: int, options, cockpit_steps: int) -> float:
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9)
    x = torch.randn(128, *shape)
    y = torch.randint(0, 10, (128,))
    loss_fn = nn.CrossEntropyLoss()

    def loop(doctor=None):
        for _ in range(steps):
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if doctor is not None:
                doctor.log(loss=loss)

    if isinstance(options, str):
        return time_cockpit(model, opt, x, y, min(steps, cockpit_steps), options)
    loop()  # warm-up outside the timing
    start = time.process_time()
    if options is None:
        loop()
    else:
        with nndoctor.watch(model, opt, **options) as doctor:
            loop(doctor)
        doctor.report()
    return (time.process_time() - start) / steps * 1000


def time_cockpit(model, opt, x, y, steps: int, config: str) -> float:
    """Cockpit's own loop (its README), tracking every step with the given configuration."""
    from backpack import extend
    from cockpit import Cockpit
    from cockpit.utils.configuration import configuration
    warnings.filterwarnings("ignore", message="Full backward hook")  # BackPACK's hooks on the first layer
    model = extend(model)
    loss_fn, individual = extend(nn.CrossEntropyLoss()), nn.CrossEntropyLoss(reduction="none")
    doctor = Cockpit(model.parameters(), quantities=configuration(config))

    def step(i):
        out = model(x)
        loss, losses = loss_fn(out, y), individual(out, y)
        opt.zero_grad()
        with doctor(i, info={"batch_size": len(x), "individual_losses": losses, "loss": loss, "optimizer": opt}):
            loss.backward(create_graph=doctor.create_graph(i))
        opt.step()

    step(0)  # warm-up
    start = time.process_time()
    for i in range(1, steps + 1):
        step(i)
    return (time.process_time() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cockpit-steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    random.seed(0)
    print(f"torch {torch.__version__}, 1 thread, batch 128, {args.steps} steps x {args.repeats} interleaved repeats")
    for net, (build, shape) in NETS.items():
        times = {v: [] for v in VARIANTS}
        order = list(VARIANTS)
        for _ in range(args.repeats):
            random.shuffle(order)  # no variant always follows the heavy one
            for variant in order:
                times[variant].append(time_steps(build, shape, args.steps, VARIANTS[variant], args.cockpit_steps))
        plain, plain_best = statistics.median(times["plain"]), min(times["plain"])
        for variant in VARIANTS:
            ms, best = statistics.median(times[variant]), min(times[variant])
            print(f"{net:22s} {variant:20s} {ms:8.2f} ms/step  median {ms / plain:5.3f}x  best {best / plain_best:5.3f}x plain")


if __name__ == "__main__":
    main()
