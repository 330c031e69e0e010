"""What watching adds to a step, in microseconds, across model sizes.

`overhead.py` gives ratios; on a small model a ratio says little about where the cost is, and
on a shared virtual machine the step time itself drifts by 2x within a minute. Here each net
runs plain, watched and plain again, 9 rounds interleaved, and the best round of each is
compared (CPU time, 1 thread): the difference is what watching adds per step (its sampled
steps and flushes averaged in), the second plain run the noise floor. Watching starts after
the first step's examination (`examine=False`): that is paid once per run (see overhead.py).

    python benchmarks/cost_per_step.py
"""
from __future__ import annotations

import time

import torch
from torch import nn

import nndoctor
from overhead import mlp, residual_mlp


def tiny():
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


# name -> (build, input shape, batch, classes, steps per round)
NETS = {"tiny 3-layer": (tiny, (8,), 16, 2, 1000),
        "residual mlp, 43 modules": (residual_mlp(10), (784,), 32, 10, 300),
        "residual mlp, 203 modules": (residual_mlp(50), (784,), 32, 10, 150),
        "residual mlp, 803 modules": (residual_mlp(200), (784,), 32, 10, 40),
        "mlp 784-512-512-10": (mlp, (784,), 128, 10, 100)}
ROUNDS = 9


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, CPU time, best of {ROUNDS} interleaved rounds")
    for name, (build, shape, n, classes, steps) in NETS.items():
        torch.manual_seed(0)
        model = build()
        opt = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9)
        x, y = torch.randn(n, *shape), torch.randint(0, classes, (n,))
        loss_fn = nn.CrossEntropyLoss()

        def loop(k, doctor=None):
            for _ in range(k):
                loss = loss_fn(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if doctor is not None:
                    doctor.log(loss=loss)

        loop(5)
        plain, watched, again = [], [], []
        for _ in range(ROUNDS):
            start = time.process_time()
            loop(steps)
            plain.append((time.process_time() - start) / steps)
            with nndoctor.watch(model, opt, examine=False, live=False) as doctor:
                start = time.process_time()
                loop(steps, doctor)
                watched.append((time.process_time() - start) / steps)
            start = time.process_time()
            loop(steps)
            again.append((time.process_time() - start) / steps)
        p, w = min(plain), min(watched)
        print(f"{name:26s} plain {p * 1e3:7.3f} ms  watched {w * 1e3:7.3f} ms  +{(w - p) * 1e6:5.0f} us/step  "
              f"{w / p:.3f}x  (noise floor {min(again) / p:.3f}x)", flush=True)


if __name__ == "__main__":
    main()
