"""Torch intra-op threads: run a block on one thread.

Two users: batch norm in the task networks (``searchlab.tasks.serial``: its sums would
split by thread and round otherwise) and the search controllers (``strategies``: their
batches of ~10 rules x 10 tokens only pay synchronisation for extra threads; on a loaded
2-core machine one thread was ~10x faster, and results stop depending on the machine's
thread count).  Switching the count costs under a microsecond.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["one_thread"]


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread; restore the count after."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
