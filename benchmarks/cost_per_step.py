"""What watching adds to a step, in microseconds, across model sizes.

`overhead.py` gives ratios; on a small model a ratio says little about where the cost is, and
on a shared virtual machine the step time itself drifts by 2x within a minute. Here three
copies of each net train side by side in one process: one watched for the whole run (its
sampled steps, flushes and judging included, as in a real run), two plain. They take turns
in short chunks of steps (plain, watched, plain', ...), and each round compares the watched
chunk with the mean of the plain chunks on either side of it (CPU time, 1 thread): the mean
of those paired differences (± its standard error) is what watching adds per step, and the
same comparison of the two plain copies is the noise floor. A chunk is a multiple of the
sampling interval (20 steps), so each holds its share of sampled steps; the flushes (every 50)
and the judging are spread over the rounds, which the mean (not a median) counts in full.
Watching starts after the first step's examination (`examine=False`): that is paid once per
run (see overhead.py). With `--baseline`, a fourth copy is watched by another checkout's
nndoctor (a worktree of main, say) in the same rounds: two separate runs on this VM differ by
more than most changes do, so a change is only measured against its baseline side by side.

    python benchmarks/cost_per_step.py [--rounds 21] [--nets tiny,res43,res203,res803,mlp,cnn]
                                       [--baseline ../main/src]   # a change against main, side by side
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import nndoctor
from overhead import cnn, mlp, residual_mlp


def tiny():
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


# key -> (name, build, input shape, batch, classes, steps per chunk)
NETS = {"tiny": ("tiny 3-layer", tiny, (8,), 16, 2, 200),
        "res43": ("residual mlp, 43 modules", residual_mlp(10), (784,), 32, 10, 100),
        "res203": ("residual mlp, 203 modules", residual_mlp(50), (784,), 32, 10, 40),
        "res803": ("residual mlp, 803 modules", residual_mlp(200), (784,), 32, 10, 20),
        "mlp": ("mlp 784-512-512-10", mlp, (784,), 128, 10, 40),
        "cnn": ("small cnn", cnn, (1, 28, 28), 128, 10, 20)}


class Copy:
    """One copy of the net with its own optimizer, trained a chunk of steps at a time."""

    def __init__(self, build, x, y):
        torch.manual_seed(0)
        self.model = build()
        self.opt = torch.optim.SGD(self.model.parameters(), 0.01, momentum=0.9)
        self.x, self.y, self.loss_fn = x, y, nn.CrossEntropyLoss()
        self.doctor = None

    def chunk(self, steps: int) -> float:
        """CPU seconds per step over `steps` steps."""
        model, opt, x, y, loss_fn, doctor = self.model, self.opt, self.x, self.y, self.loss_fn, self.doctor
        start = time.process_time()
        for _ in range(steps):
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if doctor is not None:
                doctor.log(loss=loss)
        return (time.process_time() - start) / steps


def measure(build, shape, n, classes, steps, rounds, baseline=None):
    """(plain s/step, added s/step, its standard error, noise floor s/step, and with a
    `baseline` package: what it adds and what this one adds beyond it, each ± its error)."""
    torch.manual_seed(0)
    x, y = torch.randn(n, *shape), torch.randint(0, classes, (n,))
    plain, watched, again = Copy(build, x, y), Copy(build, x, y), Copy(build, x, y)
    watched.doctor = nndoctor.watch(watched.model, watched.opt, examine=False, live=False)
    watched.doctor.attach()
    other = None
    if baseline is not None:
        other = Copy(build, x, y)
        other.doctor = baseline.watch(other.model, other.opt, examine=False, live=False)
        other.doctor.attach()
    for copy in (plain, watched, again, other):
        if copy is not None:
            copy.chunk(steps)  # warm-up (the watcher's first flush and judging are in the rounds)
    added, floor, base, theirs, beyond = [], [], [], [], []
    for _ in range(rounds):
        p1, w, p2, a = plain.chunk(steps), watched.chunk(steps), plain.chunk(steps), again.chunk(steps)
        p3 = plain.chunk(steps)
        added.append(w - (p1 + p2) / 2)
        floor.append(a - (p2 + p3) / 2)
        base.append((p1 + p2 + p3) / 3)
        if other is not None:
            o = other.chunk(steps)
            theirs.append(o - (p2 + p3) / 2)
            beyond.append(added[-1] - theirs[-1])
    watched.doctor.detach()
    if other is not None:
        other.doctor.detach()

    def mean_error(values):
        return (statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5) if values else None
    return (statistics.mean(base), *mean_error(added), statistics.mean(floor), mean_error(theirs), mean_error(beyond))


def load_baseline(src: str):
    """Another checkout's nndoctor (its `src` directory) as the package `nndoctor_baseline`,
    to be measured side by side with this one (its modules import each other relatively)."""
    root = Path(src) / "nndoctor"
    spec = importlib.util.spec_from_file_location("nndoctor_baseline", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    if spec is None or not (root / "__init__.py").is_file():
        raise SystemExit(f"cost_per_step: no nndoctor package under {src}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["nndoctor_baseline"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--baseline", metavar="SRC", help="another checkout's src/ directory (e.g. a "
                        "`git worktree` of main): its watcher runs side by side, and the difference is printed")
    args = parser.parse_args()
    baseline = load_baseline(args.baseline) if args.baseline else None
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, CPU time, mean of {args.rounds} paired rounds")
    for key in args.nets.split(","):
        name, build, shape, n, classes, steps = NETS[key]
        base, added, error, floor, theirs, beyond = measure(build, shape, n, classes, steps, args.rounds, baseline)
        line = (f"{name:26s} plain {base * 1e3:7.3f} ms  +{added * 1e6:6.0f} ± {error * 1e6:4.0f} us/step  "
                f"{1 + added / base:.3f}x  (noise floor {floor * 1e6:+5.0f} us, {1 + floor / base:.3f}x)")
        if baseline is not None:
            line += (f"  baseline +{theirs[0] * 1e6:6.0f} ± {theirs[1] * 1e6:4.0f} us ({1 + theirs[0] / base:.3f}x),"
                     f" this - baseline {beyond[0] * 1e6:+6.0f} ± {beyond[1] * 1e6:4.0f} us")
        print(line, flush=True)


if __name__ == "__main__":
    main()
