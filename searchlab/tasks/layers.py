"""``conv -> batch norm -> ReLU -> 2x2 max-pool`` as one block with few memory passes.

The CIFAR-10 child (:mod:`searchlab.tasks.cifar10`) spends most of a training step not
in its convolutions but in the element-wise layers after the first one: batch norm, ReLU
and max-pool each read and write the 13 MB activation (100 images x 32 x 32 x 32) in the
forward pass and again, several times, in the backward pass (``bench/evaluator.py``;
PyTorch's CPU ``var_mean`` alone takes longer than the convolution).  The block computes
the same function with fewer passes over the full-size tensor, using that a per-channel
affine map with a non-negative slope and ReLU are both monotone, so they commute with
max-pooling::

    maxpool(relu(a*(z - mean)*rstd + beta)) == relu(a*(maxpool(z) - mean)*rstd + beta)  (a >= 0)

Channels whose batch-norm weight ``gamma`` is negative flip the sign of their
convolution's weight and bias instead (``z' = -z``: same variance, negated mean), so the
slope ``a = |gamma|`` is never negative and the identity holds for every channel.

Forward: the convolution, one pass for the channel means, two for the centered
variances, one max-pool; the affine map and ReLU then run on the pooled quarter.
Backward (a hand-written :class:`torch.autograd.Function`): the ReLU mask and all sums
on the quarter, then ``dz = scatter(dpool) + A + B*z`` per channel (the max-pool scatter
and two in-place passes).  Gradients equal the composition of ``F.batch_norm``,
``F.relu`` and ``F.max_pool2d`` (ties in a pooling window go to the first maximum, as
``F.max_pool2d``), running statistics are updated as ``F.batch_norm`` does (momentum,
unbiased variance); ``tests/test_tasks.py`` checks all of it against that composition in
float64.  One difference, at a kink: where ``gamma`` is exactly 0 every value of a
pooling window ties, and the gradient of ``gamma`` takes ``xhat`` at the window's largest
``z`` where the composition takes its first element (both are subgradients there).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["conv_bn_relu_pool"]


def _rows(t: Tensor) -> Tensor:
    """A channels-last ``[n, c, h, w]`` tensor as its ``[n*h*w, c]`` matrix (a view)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _per_channel(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)


class _BNReLUPool(torch.autograd.Function):
    """``maxpool2x2(relu(a*(z - mean)*rstd + beta))`` with batch statistics, ``a >= 0``.

    Returns the pooled output and the batch mean and (biased) variance of ``z``.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, a: Tensor, beta: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        z = z.contiguous(memory_format=torch.channels_last)
        rows = _rows(z)
        m = rows.shape[0]
        mean = rows.sum(0) / m
        var = (rows - mean).square_().sum(0) / m
        rstd = torch.rsqrt(var + eps)
        s = a * rstd
        pz, idx = F.max_pool2d_with_indices(z, 2)
        out = torch.addcmul(_per_channel(beta - s * mean), pz, _per_channel(s)).relu_()
        ctx.save_for_backward(z, pz, idx, out, a, mean, rstd)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx: Any, dout: Tensor, _dmean: Any, _dvar: Any) -> tuple[Tensor, Tensor, Tensor, None]:
        z, pz, idx, out, a, mean, rstd = ctx.saved_tensors
        m = z.numel() // z.shape[1]
        du = torch.ops.aten.threshold_backward(dout, out, 0)      # through the ReLU
        du_rows = _rows(du.contiguous(memory_format=torch.channels_last))
        sum_du = du_rows.sum(0)                                    # = d beta
        sum_du_xhat = ((du_rows * _rows(pz)).sum(0) - mean * sum_du) * rstd   # = d a
        s = a * rstd
        dz = torch.ops.aten.max_pool2d_with_indices_backward(
            du * _per_channel(s), z, [2, 2], [2, 2], [0, 0], [1, 1], False, idx)
        # the batch statistics depend on every element of z:
        # d mean = -s*sum(du); d var = -a*rstd^2/2 * sum(du*xhat)
        d_var = -0.5 * a * rstd * rstd * sum_du_xhat
        b = 2.0 * d_var / m
        c = -s * sum_du / m - b * mean
        dz.addcmul_(z, _per_channel(b)).add_(_per_channel(c))
        return dz, sum_du_xhat, sum_du, None


def conv_bn_relu_pool(x: Tensor, weight: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor,
                      running_mean: Tensor, running_var: Tensor, *, train: bool,
                      momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``max_pool2d(relu(batch_norm(conv2d(x, weight, bias, padding=1))), 2)``.

    ``train``: batch statistics, ``running_mean``/``running_var`` updated in place (as
    ``F.batch_norm(training=True)``); otherwise the running statistics are used.  Inputs
    in channels-last layout give channels-last outputs (the fast layout on CPU).
    """
    fmt = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
           and not x.is_contiguous() else torch.contiguous_format)
    sign = torch.where(gamma.detach() >= 0, 1.0, -1.0).to(gamma.dtype)
    # weights in the input's memory format: mixed formats make oneDNN reorder per call
    w = (weight * sign.view(-1, 1, 1, 1)).contiguous(memory_format=fmt)
    z = F.conv2d(x, w, bias * sign, padding=1)                  # = sign * conv(x)
    a = gamma * sign                                            # |gamma|, gradient sign*d|gamma|
    if train:
        out, mean, var = _BNReLUPool.apply(z, a, beta, eps)
        with torch.no_grad():
            m = z.numel() // z.shape[1]
            running_mean.lerp_(mean * sign, momentum)
            running_var.lerp_(var * (m / max(m - 1, 1)), momentum)
        return out
    s = a * torch.rsqrt(running_var + eps)
    pz = F.max_pool2d(z, 2)
    return torch.addcmul(_per_channel(beta - s * sign * running_mean), pz, _per_channel(s)).relu_()
