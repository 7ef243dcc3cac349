"""Why population batching pays little on mnist1d: the cost of one training step of K
stacked copies of the child network, per copy, as K grows (issue "Train many rules in
one pass").

    .venv/bin/python bench/copy_scaling.py                  # mnist1d, K = 1 .. 56
    .venv/bin/python bench/copy_scaling.py --task cifar10 --data-dir PATH --ks 1,2,4,7

For each K: one forward + backward of a batch of 100 (the protocol's batch size) through
K copies (``StackedModel.losses`` + ``torch.autograd.grad``, as ``CopyTrainer._step``
does), best of 3 repetitions of 20 steps, one torch thread; the FLOPs of that step
(``torch.utils.flop_counter``, matrix products) and the achieved GFLOP/s, next to this
machine's fp32 matrix-multiply rate on one thread.  A population of R rules turns the
final runs' K = 1..2 steps into K = R..2R steps; it can only gain what the per-copy cost
falls between those.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import searchlab  # noqa: E402,F401  (first: it pins torch's kernels and numpy's OpenBLAS, searchlab.kernels)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import matmul_rate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mnist1d")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--ks", default="1,2,4,7,14,28,56")
    args = ap.parse_args(argv)

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from searchlab.tasks.base import get_task

    torch.set_num_threads(1)
    task = get_task(args.task, **({"data_dir": args.data_dir} if args.data_dir else {}))
    splits = task.load()
    xb, yb = task.prepare(splits.train_x[:100]), splits.train_y[:100]
    rate = matmul_rate()
    print(f"# {args.task}: one training step (batch 100) of K stacked copies, 1 torch thread; "
          f"load {os.getloadavg()[0]:.1f}; fp32 matmul {rate:.1f} GFLOP/s")
    print("| K | ms per step | ms per copy-step | vs K=1 | MFLOP per copy-step | GFLOP/s | of matmul rate |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for k in [int(x) for x in args.ks.split(",")]:
        model = task.build_model(k, torch.Generator().manual_seed(0))

        def step() -> None:
            losses = model.losses(xb, yb)
            torch.autograd.grad(losses.sum(), model.params)

        counter = FlopCounterMode(display=False)
        with counter:
            step()
        for _ in range(3):
            step()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(20):
                step()
            best = min(best, (time.perf_counter() - t0) / 20)
        per = best / k
        base = base or per
        flops = counter.get_total_flops() / k
        print(f"| {k} | {best * 1e3:.2f} | {per * 1e3:.3f} | {base / per:.2f}x | "
              f"{flops / 1e6:.1f} | {flops / per / 1e9:.1f} | {flops / per / 1e9 / rate:.0%} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
