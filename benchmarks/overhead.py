"""Overhead of watching: plain loop vs `nndoctor.watch` in the same process.

Repetitions are interleaved, in a shuffled order each round, so machine noise hits all
variants alike. Time is this process's CPU time (`time.process_time`), which other
processes on a shared machine do not inflate; ratios of medians and of best runs are
printed, and the second plain variant shows the noise floor. CPU, 1 thread. Timed: the
training steps under watching, as in a long run: one watcher stays attached through every
repeat (its sampled steps, flushes and judging included; attaching, the first flush's
judging in the warm-up, and the final report, paid once per run, not). Use a multiple of
the flush interval (50) for --steps, so each repeat holds its share of flushes.

Nets: the MLP 784-512-512-10 and the small CNN (batch 128), residual MLPs of 43, 203 and 803
modules (width 32, batch 32: small modules, where a per-module cost would show), and a small
transformer language model (2 layers, d=64, batch 16 x 32 tokens), eager and through
`torch.compile`; for the compiled one, the graphs Dynamo compiled after warm-up are counted
for each variant (watching must add none).

    python benchmarks/overhead.py [--steps 100] [--repeats 5] [--nets mlp,cnn,...]

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


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm, self.linear, self.act = nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU()

    def forward(self, x):
        return x + self.act(self.linear(self.norm(x)))


def residual_mlp(blocks: int, width: int = 32):
    """3 + 4 * blocks modules: blocks=10, 50, 200 give 43, 203, 803."""
    return lambda: nn.Sequential(nn.Linear(784, width), *[Block(width) for _ in range(blocks)], nn.Linear(width, 10))


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 64, d: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens))).flatten(0, 1)


def batch(shape, n=128, classes=10):
    return torch.randn(n, *shape), torch.randint(0, classes, (n,))


def tokens():
    x = torch.randint(0, 64, (16, 32))
    return x, torch.roll(x, -1, 1).flatten()


# name -> (build, data, compiled)
NETS = {
    "mlp 784-512-512-10": (mlp, lambda: batch((784,)), False),
    "cnn 2conv+fc, 28x28": (cnn, lambda: batch((1, 28, 28)), False),
    **{f"residual mlp, {3 + 4 * b} modules": (residual_mlp(b), lambda: batch((784,), n=32), False)
       for b in (10, 50, 200)},
    "transformer, eager": (TinyLM, tokens, False),
    "transformer, compiled": (TinyLM, tokens, True),
}
# "plain (again)" measures the noise floor: its ratio to "plain" is what the machine alone does
# "watch (default)" times the steps after the first: the first step's examination (the
# pre-flight checks on the captured case) is paid once per run, and is timed on its own
VARIANTS = {"plain": None, "plain (again)": None, "watch (default)": {"examine": False, "live": False}}
try:  # Cockpit side by side, where it is installed (only ever in a throwaway venv, never in CI)
    import cockpit  # noqa: F401
    VARIANTS.update({"cockpit (economy)": "economy", "cockpit (business)": "business"})
except ImportError:
    pass


class Setup:
    """One variant's model, optimizer and batch, built once and reused by every repeat (a
    compiled model compiles once, in the warm-up); a watched one keeps its watcher attached."""

    def __init__(self, build, data, compiled: bool):
        torch.manual_seed(0)
        self.model = build()
        self.opt = torch.optim.SGD(self.model.parameters(), 0.01, momentum=0.9)
        self.x, self.y = data()
        self.run = torch.compile(self.model) if compiled else self.model
        self.loss_fn = nn.CrossEntropyLoss()
        self.graphs_after_warmup = 0
        self.doctor = None

    def loop(self, steps: int, doctor=None) -> None:
        for _ in range(steps):
            loss = self.loss_fn(self.run(self.x), self.y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            if doctor is not None:
                doctor.log(loss=loss)


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def time_steps(setup: Setup, steps: int, options, cockpit_steps: int) -> float:
    if isinstance(options, str):
        return time_cockpit(setup.model, setup.opt, setup.x, setup.y, min(steps, cockpit_steps), options)
    graphs = compiled_graphs()
    start = time.process_time()
    setup.loop(steps, setup.doctor)  # watched: its sampled steps, flushes and judging included
    elapsed = time.process_time() - start
    setup.graphs_after_warmup += compiled_graphs() - graphs
    return elapsed / steps * 1000


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
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cockpit-steps", type=int, default=10)
    parser.add_argument("--nets", default="", help="comma-separated name prefixes (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    random.seed(0)
    wanted = [n.strip() for n in args.nets.split(",") if n.strip()]
    print(f"torch {torch.__version__}, 1 thread, CPU time, {args.steps} steps x {args.repeats} interleaved repeats")
    print("watch: the steps after the first; pre-flight: the first step's examination, once per run")
    print(f"{'net':30s} {'variant':18s} {'ms/step':>8s} {'median':>7s} {'best':>7s} {'graphs':>6s}")
    for net, (build, data, compiled) in NETS.items():
        if wanted and not any(net.startswith(w) for w in wanted):
            continue
        setups = {v: Setup(build, data, compiled) for v in VARIANTS}
        for variant, setup in setups.items():  # warm-up (and compilation) outside the timing
            if isinstance(VARIANTS[variant], dict):  # attached once; compiled with its hooks in place
                setup.doctor = nndoctor.watch(setup.model, setup.opt, **VARIANTS[variant])
                setup.doctor.attach()
                setup.loop(51, setup.doctor)  # past the first flush, whose judging always runs
            else:
                setup.loop(3)
        times = {v: [] for v in VARIANTS}
        order = list(VARIANTS)
        for _ in range(args.repeats):
            random.shuffle(order)  # no variant always follows the heavy one
            for variant in order:
                times[variant].append(time_steps(setups[variant], args.steps, VARIANTS[variant], args.cockpit_steps))
        for setup in setups.values():
            if setup.doctor is not None:
                setup.doctor.detach()
        preflight = [first_step_examination(Setup(build, data, compiled)) for _ in range(3)]
        plain, plain_best = statistics.median(times["plain"]), min(times["plain"])
        for variant in VARIANTS:
            ms, best = statistics.median(times[variant]), min(times[variant])
            graphs = str(setups[variant].graphs_after_warmup) if compiled else "-"
            print(f"{net:30s} {variant:18s} {ms:8.2f} {ms / plain:6.3f}x {best / plain_best:6.3f}x {graphs:>6s}",
                  flush=True)
        print(f"{net:30s} {'pre-flight, once':18s} {statistics.median(preflight) * 1000:8.0f} ms", flush=True)


def first_step_examination(setup: Setup) -> float:
    """CPU seconds of the first step's examination: one watched step with it, less one without."""
    setup.loop(3)
    spent = []
    for examine in (True, False):
        with nndoctor.watch(setup.model, setup.opt, examine=examine, live=False) as doctor:
            start = time.process_time()
            setup.loop(1, doctor)
            spent.append(time.process_time() - start)
    return spent[0] - spent[1]


if __name__ == "__main__":
    main()
