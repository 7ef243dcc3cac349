"""``searchlab demo``: parse a few rules and train a tiny model with PowerSign vs SGD.

    searchlab demo [--steps 300] [--lr 0.1] [--seed 0]

Prints each rule's text, canonical key, token form and the state it reads, then trains
a small MLP on seeded synthetic data with PowerSign (the dedicated class and the same
rule compiled by ``RuleOptimizer``), AddSign and SGD, printing the training losses and,
at the end, how long it took.  About 6 s of CPU time, two thirds of it torch's one-off
start-up (importing torch, and the compiler stack torch.optim loads with its first
optimizer); about 10 s of wall time on a 2-core machine, more when it is busy.  Nothing is
downloaded or written.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

#: rules shown by the demo: the paper's PowerSign and AddSign (section 5), a decayed
#: variant, and rules of Table 6 (appendix 8.2)
DEMO_RULES: tuple[tuple[str, str], ...] = (
    ("PowerSign", "exp(sign(g)*sign(m))*g"),
    ("AddSign", "(1+sign(g)*sign(m))*g"),
    ("AddSign-ld", "(1+ld*sign(g)*sign(m))*g"),
    ("Table 6", "clip(m, 1e-4)*exp(v)"),
    ("Table 6", "m*(1+eps)*sigmoid(1e-4*w)"),
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="parse a few rules and train a tiny model with PowerSign vs SGD",
                       description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="full-batch training steps (default 300)")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate of every optimizer (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the model (default 0)")
    return p


def _data(seed: int, n: int = 512, dim: int = 10, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels from a random two-layer teacher network: learnable, not linearly trivial."""
    import torch  # here, not at import: `searchlab --help` stays fast

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen)
    w1 = torch.randn(dim, 16, generator=gen)
    w2 = torch.randn(16, classes, generator=gen)
    y = (torch.tanh(x @ w1) @ w2).argmax(dim=1)
    return x, y


def _model(seed: int, dim: int = 10, classes: int = 3) -> torch.nn.Module:
    import torch  # here, not at import: `searchlab --help` stays fast

    gen = torch.Generator().manual_seed(seed + 1)
    model = torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, classes))
    with torch.no_grad():  # seeded init, independent of the global RNG
        for p in model.parameters():
            bound = 1.0 / (p.shape[-1] ** 0.5)
            p.uniform_(-bound, bound, generator=gen)
    return model


def _train(make_opt: Callable[[Any], torch.optim.Optimizer], steps: int, seed: int,
           data: tuple[torch.Tensor, torch.Tensor]) -> tuple[list[float], float]:
    import torch  # here, not at import: `searchlab --help` stays fast

    x, y = data
    model = _model(seed)
    opt = make_opt(model.parameters())
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        acc = (model(x).argmax(dim=1) == y).float().mean().item()
    return losses, acc


def _warm_up() -> None:
    """torch's one-off start-up: the first ``torch.optim.Optimizer`` imports torch's
    compiler stack (``torch._dynamo``, ~2 s of CPU); done here, so the per-optimizer
    seconds of the table measure training only."""
    import torch

    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    import torch  # here, not at import: `searchlab --help` stays fast

    from searchlab.dsl import parse

    print("Rules (text -> canonical key, tokens, state read):")
    for label, text in DEMO_RULES:
        rule = parse(text)
        try:
            tokens = " ".join(rule.to_tokens())
        except ValueError:
            tokens = "(outside the token grammar)"
        reads = ", ".join(sorted(rule.reads)) or "nothing"
        print(f"  {label:<10} {rule}")
        print(f"  {'':<10}   key    {rule.key}")
        print(f"  {'':<10}   tokens {tokens}")
        print(f"  {'':<10}   reads  {reads}")

    steps, lr, seed = args.steps, args.lr, args.seed
    if steps < 1 or not lr > 0:
        print("demo: --steps must be >= 1 and --lr > 0")
        return 2
    data = _data(seed)
    _warm_up()
    startup = time.perf_counter() - t0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only add synchronisation cost
    try:
        code = _compare(data, steps, lr, seed)
    finally:
        torch.set_num_threads(threads)
    print(f"\ndemo: {time.perf_counter() - t0:.1f} s, {startup:.1f} s of it torch's one-off "
          "start-up (import and optimizer machinery)")
    return code


def _compare(data: tuple[torch.Tensor, torch.Tensor], steps: int, lr: float, seed: int) -> int:
    import torch  # here, not at import: `searchlab --help` stays fast

    from searchlab.optim import AddSign, PowerSign, RuleOptimizer

    runs: list[tuple[str, Callable[[Any], torch.optim.Optimizer]]] = [
        ("PowerSign", lambda p: PowerSign(p, lr=lr)),
        ("PowerSign (rule)", lambda p: RuleOptimizer(p, "exp(sign(g)*sign(m))*g", lr=lr)),
        ("AddSign", lambda p: AddSign(p, lr=lr)),
        ("SGD", lambda p: torch.optim.SGD(p, lr=lr)),
    ]
    print(f"\nTraining a 10-32-3 MLP on {len(data[0])} synthetic examples (seed {seed}), "
          f"{steps} full-batch steps, lr {lr}:")
    marks = sorted({0, steps // 4, steps // 2, (3 * steps) // 4, steps - 1})
    header = "  optimizer          " + "".join(f"{'step ' + str(s + 1):>11}" for s in marks)
    print(header + "   train acc   seconds")
    results: dict[str, list[float]] = {}
    for name, make in runs:
        t0 = time.perf_counter()
        losses, acc = _train(make, steps, seed, data)
        results[name] = losses
        cells = "".join(f"{losses[s]:>11.4f}" for s in marks)
        print(f"  {name:<18} {cells}   {acc:>9.3f}   {time.perf_counter() - t0:7.2f}")
    same = results["PowerSign"] == results["PowerSign (rule)"]
    print(f"\nPowerSign class and RuleOptimizer('exp(sign(g)*sign(m))*g') losses identical: {same}")
    better = results["PowerSign"][-1] < results["SGD"][-1]
    print(f"PowerSign final loss {results['PowerSign'][-1]:.4f} vs SGD {results['SGD'][-1]:.4f}"
          f" ({'lower' if better else 'not lower'} at the same lr)")
    return 0
