"""Batch norm that rounds the same with any number of torch threads.

With more than one torch thread, PyTorch's CPU batch norm on a ``[rows, channels]`` input
(the mnist1d child's layout) splits the rows between the threads, sums each part into a
per-thread buffer and then adds the buffers: the channel means and variances, and the
backward pass's per-channel sums, round differently with 1 and with 2 threads.  A child
network trained at a large lr amplifies that last bit into another reward (mnist1d
``averaged``: up to 0.02 between 1 and 2 threads, BENCHMARKS.md, "Reward noise").

Measured by logging a hash of every ATen op's output during one mnist1d evaluation with 1
and with 2 threads: batch norm forward is the first op whose output differs, and when
``native_batch_norm`` and ``native_batch_norm_backward`` run on one thread, every op of
the 2-thread evaluation (matrix products, element-wise ops, reductions, the rule's update)
gives the 1-thread bits, and so the 1-thread reward.  :func:`batch_norm` does exactly that:
the same two ATen ops as :func:`torch.nn.functional.batch_norm`, each run in a one-thread
region (switching the thread count costs under a microsecond), so it is bit for bit
``F.batch_norm`` with one thread, and the rest of the network keeps its threads.  With one
thread it *is* ``F.batch_norm`` (no wrapper).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..threads import one_thread

__all__ = ["batch_norm"]


class _SerialBatchNorm(torch.autograd.Function):
    """``native_batch_norm`` and its backward, each on one thread (the ops, arguments and
    saved tensors of ``F.batch_norm``'s own autograd node)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                running_var: Tensor, training: bool, momentum: float, eps: float) -> Tensor:
        with one_thread():
            out, save_mean, save_invstd = torch.ops.aten.native_batch_norm(
                x, weight, bias, running_mean, running_var, training, momentum, eps)
        ctx.save_for_backward(x, weight, running_mean, running_var, save_mean, save_invstd)
        ctx.training, ctx.eps = training, eps
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, running_mean, running_var, save_mean, save_invstd = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        with one_thread():
            gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
                grad, x, weight, running_mean, running_var, save_mean,
                save_invstd, ctx.training, ctx.eps, mask)
        return gx, gw, gb, None, None, None, None, None


def batch_norm(x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor,
               bias: Tensor, *, training: bool, momentum: float, eps: float) -> Tensor:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)``
    whose result does not depend on the number of torch threads (module docstring)."""
    if torch.get_num_threads() == 1:
        return F.batch_norm(x, running_mean, running_var, weight, bias, training=training,
                            momentum=momentum, eps=eps)
    return _SerialBatchNorm.apply(x, weight, bias, running_mean, running_var, training,
                                  momentum, eps)
