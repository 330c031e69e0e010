"""Which LR range-test suggestion rule trains best on our networks?

    python benchmarks/lr_rules.py [--seeds 0 1 2]

For every healthy zoo base trained by the standard loop, runs `find_lr`, then trains the
base from the same initial weights at each rule's suggested rate (steepest, valley, min/10)
and at the hand-tuned rate of the base, and prints the final validation loss of each.
A rule is judged by its validation loss relative to the hand-tuned rate (geometric mean
over the bases) and by how often it is within 10% of the best of the four.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch

from nndoctor import find_lr, zoo
from nndoctor.repair.lr_finder import RULES
from nndoctor.zoo.loops import evaluate, fit

BASES = ["mlp-digits", "mlp-digits/sgd-momentum", "mlp-digits/tanh", "mlp-digits/functional", "cnn-digits",
         "cnn-digits/sgd-momentum", "mlp-diabetes", "mlp-cancer", "mlp-rings", "lstm-sequence", "transformer-pointer"]


def val_loss_at(name: str, seed: int, lr: float | None) -> float:
    setup = zoo.get(name).build(seed)
    if lr is not None:
        peak = max(g["lr"] for g in setup.optimizer.param_groups)
        for g in setup.optimizer.param_groups:
            g["lr"] = g["lr"] * lr / peak
    fit(setup, seed)
    value = float(evaluate(setup.model, setup.loss_fn, setup.val_data))
    return value if math.isfinite(value) else float("inf")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ratios = {r: [] for r in RULES}
    wins = {r: 0 for r in RULES}
    rows = 0
    print("| base | seed | tuned lr (val loss) | " + " | ".join(f"{r} lr (val loss)" for r in RULES) + " |")
    print("|---|---|---|" + "---|" * len(RULES))
    for name in BASES:
        for seed in args.seeds:
            setup = zoo.get(name).build(seed)
            tuned = max(g["lr"] for g in setup.optimizer.param_groups)
            found = find_lr(setup.model, setup.train_data, loss_fn=setup.loss_fn, optimizer=setup.optimizer,
                            batch_size=setup.batch_size, seed=seed)
            base = val_loss_at(name, seed, None)
            cells, losses = [], {}
            for rule in RULES:
                lr = found.suggestions[rule]
                losses[rule] = val_loss_at(name, seed, lr) if lr else float("inf")
                cells.append(f"{lr:.2g} ({losses[rule]:.3g})" if lr else "- (-)")
            best = min(min(losses.values()), base)
            for rule in RULES:
                ratios[rule].append(losses[rule] / base)
                wins[rule] += losses[rule] <= 1.1 * best
            rows += 1
            print(f"| {name} | {seed} | {tuned:.2g} ({base:.3g}) | " + " | ".join(cells) + " |")
            sys.stdout.flush()
    print()
    print("| rule | geometric mean of val loss / tuned | median | within 10% of the best |")
    print("|---|---|---|---|")
    for rule in RULES:
        finite = [r for r in ratios[rule] if math.isfinite(r) and r > 0]
        gmean = math.exp(sum(math.log(r) for r in finite) / len(finite)) if finite else float("inf")
        median = sorted(ratios[rule])[len(ratios[rule]) // 2]
        failed = len(ratios[rule]) - len(finite)
        print(f"| {rule} | {gmean:.2f}{f' ({failed} diverged)' if failed else ''} | {median:.2f} | {wins[rule]}/{rows} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
