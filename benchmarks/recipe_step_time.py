"""Seconds a training step of one of our recipes, eager and with speed switches, on this machine.

    python benchmarks/recipe_step_time.py                                   # experiment=mnist_cpu, 2 threads
    python benchmarks/recipe_step_time.py --variants "" "module.compile=default" "module.channels_last=true"

Each variant is the recipe plus train.py overrides, stepped as the bake-off steps ours (benchmarks/bakeoff_contenders.py:
compute_loss, backward, clipping, Adam, EMA). The first steps (compilation, if any) are timed apart; then the mean of
``--steps`` steps. Prints a table: what the speed switches buy a fixed wall-clock budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bakeoff_contenders import Setup, build_ours  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", nargs="+", default=["experiment=mnist_cpu"])
    p.add_argument("--variants", nargs="+", default=["", "module.compile=default", "module.channels_last=true"],
                   help="extra overrides a row ('' = the recipe as it is)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--warmup", type=int, default=2, help="first steps, timed apart (compilation)")
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = Setup(args.image_size, 1, args.batch, 60000, torch.device("cpu"), 0)
    x0 = torch.rand(args.batch, 1, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    print(f"| variant of {' '.join(args.recipe)} | first {args.warmup} steps (s) | ms a step | steps in 600 s |")
    print("|---|---|---|---|")
    for variant in args.variants:
        contender = build_ours(setup, [*args.recipe, *variant.split()])
        start = time.perf_counter()
        for _ in range(args.warmup):
            contender.train_step(x0)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.steps):
            contender.train_step(x0)
        step = (time.perf_counter() - start) / args.steps
        steps_600 = args.warmup + max(0.0, 600 - first) / step
        print(f"| {variant or 'eager (the recipe)'} | {first:.1f} | {step * 1000:.0f} | {steps_600:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
