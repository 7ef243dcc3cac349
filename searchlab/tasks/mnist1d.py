"""``mnist1d``: MNIST-1D (Greydanus 2020) and a small 1-D ConvNet — the default task.

Data.  Generated offline by the ``mnist1d`` package (``mnist1d.data.make_dataset`` with
the package's default transformation settings and its canonical dataset seed 42; never
``get_dataset``, which tries a download first).  ``make_dataset`` reseeds Python's and
NumPy's *global* RNGs; we save and restore both around the call, so callers see no change.
Generation costs a few seconds, so the arrays are cached in
``data_cache_dir()/mnist1d-<n>-<hash>.npz`` and in memory per process.

Splits (fixed): of ``num_samples`` (default 12,000) signals of length 40, the first
2/3 train (8,000), the next 1/6 validation (2,000; the search signal), the last 1/6 test
(2,000; held out).  ``make_dataset`` already shuffles examples and standardises the data.

Model: the paper's child (section 4.2) transposed to 1-D::

    conv1d(1 -> 32, k=5, stride 2, pad 2) -> BN -> ReLU      # length 40 -> 20
    conv1d(32 -> 32, k=3, stride 2, pad 1) -> BN -> ReLU     # length 20 -> 10
    flatten (32 x 10) -> linear(320 -> 10)                    # the head we add

A flatten + linear head instead of global average pooling, because MNIST-1D digits are
told apart by *where* features occur (with average pooling accuracy is far lower).
Initialisation is PyTorch's default (uniform +-1/sqrt(fan_in) for weights and biases,
BN weight 1 and bias 0).  The stacked implementation (``[K, ...]`` parameters) computes
both convolutions as (batched) matrix products in a ``[positions, K*32]`` layout, which on
CPU is a little faster than ``nn.Conv1d`` for one copy and batches ``K`` copies.
"""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import TASKS, ClassificationTask, Splits, StackedModel, data_cache_dir
from .serial import batch_norm

__all__ = ["MNIST1D", "MNIST1DConvNet", "generate_mnist1d"]

LENGTH = 40          # signal length of MNIST-1D (final_seq_length)
CHANNELS = 32        # filters per conv layer (paper 4.2)
DATASET_SEED = 42    # the mnist1d package's canonical dataset seed
DEFAULT_SAMPLES = 12_000
_FORMAT = 1          # bump when the cached array layout changes

_memory: dict[tuple[int, str], Splits] = {}
_lock = threading.Lock()


def generate_mnist1d(num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x float32 [n, 40], y int64 [n])`` from ``mnist1d.data.make_dataset``, leaving
    the global ``random`` and ``numpy.random`` states as they were."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.train_split = 1.0
    args.seed = DATASET_SEED
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"], dtype=np.int64)


def _cache_file(num_samples: int) -> Path:
    tag = hashlib.sha1(f"mnist1d:{num_samples}:{DATASET_SEED}:{_FORMAT}".encode()).hexdigest()[:10]
    return data_cache_dir() / f"mnist1d-{num_samples}-{tag}.npz"


def _load_arrays(num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    path = _cache_file(num_samples)
    if path.is_file():
        try:
            with np.load(path) as z:
                return z["x"], z["y"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is regenerated below
    x, y = generate_mnist1d(num_samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{threading.get_ident()}.npz")
    np.savez(tmp, x=x, y=y)
    tmp.replace(path)  # atomic: concurrent workers never read half a file
    return x, y


class MNIST1DConvNet(StackedModel):
    """``k`` copies of the two-layer 1-D ConvNet described in the module docstring."""

    param_names: ClassVar[tuple[str, ...]] = (
        "conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias",
        "conv2.weight", "conv2.bias", "bn2.weight", "bn2.bias", "fc.weight", "fc.bias")

    # layouts: conv1.weight [k, C, 5]; conv2.weight [k, 3*C, C] (row j*C + c_in, i.e. tap j
    # of input channel c_in); fc.weight [k, 10*C, 10] (row l*C + c, position l, channel c)

    @classmethod
    def create(cls, k: int, generator: torch.Generator, channels: int = CHANNELS) -> "MNIST1DConvNet":
        c = channels

        def uniform(shape: tuple[int, ...], fan_in: int) -> Tensor:
            return cls.uniform(shape, fan_in, generator)

        one = [
            uniform((c, 5), 5), uniform((c,), 5), torch.ones(c), torch.zeros(c),
            uniform((3 * c, c), 3 * c), uniform((c,), 3 * c), torch.ones(c), torch.zeros(c),
            uniform((10 * c, 10), 10 * c), uniform((10,), 10 * c),
        ]
        return cls(cls.replicate(one, k), cls.bn_buffers(c, k))

    def forward(self, x: Tensor, train: bool) -> Tensor:
        w1, b1, g1, be1, w2, b2, g2, be2, wf, bf = self.params
        rm1, rv1, rm2, rv2 = self.buffers
        k, c = b1.shape
        n = x.shape[0]
        half = LENGTH // 2
        # conv1 on shared input: windows [n*20, 5] @ [5, k*c]
        win = F.pad(x, (2, 2)).unfold(1, 5, 2).reshape(n * half, 5)
        h = torch.addmm(b1.reshape(1, k * c), win, w1.reshape(k * c, 5).t())
        h = F.relu(batch_norm(h, rm1.view(-1), rv1.view(-1), g1.reshape(-1), be1.reshape(-1),
                              training=train, momentum=0.1, eps=1e-5))
        # conv2 per copy (k=3, stride 2, pad 1): output l reads positions 2l-1, 2l, 2l+1.
        # Viewing positions in pairs (2l, 2l+1) makes taps 1 and 2 one matmul over 2c
        # features; tap 0 (position 2l-1, the odd half of pair l-1) is a matmul of the
        # odd halves whose result is shifted by one output position.  No unfold.
        q = half // 2
        pairs = h.view(n, q, 2, k, c).permute(3, 0, 1, 2, 4).reshape(k, n * q, 2 * c)
        h2 = torch.baddbmm(b2.unsqueeze(1), pairs, w2[:, c:, :]).view(k, n, q, c)
        prev = torch.bmm(pairs[:, :, c:], w2[:, :c, :]).view(k, n, q, c)
        h2[:, :, 1:] += prev[:, :, :-1]   # in place: bitwise the same as adding a padded copy
        h2 = h2.permute(1, 2, 0, 3).reshape(n * q, k * c)
        h2 = F.relu(batch_norm(h2, rm2.view(-1), rv2.view(-1), g2.reshape(-1), be2.reshape(-1),
                               training=train, momentum=0.1, eps=1e-5))
        feats = h2.view(n, q, k, c).permute(2, 0, 1, 3).reshape(k, n, q * c)
        return torch.baddbmm(bf.unsqueeze(1), feats, wf)                          # [k, n, 10]


@TASKS.register("mnist1d")
class MNIST1D(ClassificationTask):
    """MNIST-1D with a small 1-D ConvNet (see the module docstring).

    Options:
        num_samples: signals generated (default 12,000; split 2/3 train, 1/6 validation,
            1/6 test).  Smaller values make quick tests; the value goes into the task id.
    """

    name: ClassVar[str] = "mnist1d"
    batched_default: ClassVar[bool] = True
    eval_rows: ClassVar[int] = 700

    def __init__(self, num_samples: int = DEFAULT_SAMPLES) -> None:
        if int(num_samples) < 60:
            raise ValueError(f"num_samples must be >= 60, got {num_samples}")
        self.num_samples = int(num_samples)

    def result_options(self) -> Mapping[str, Any]:
        return {"num_samples": self.num_samples} if self.num_samples != DEFAULT_SAMPLES else {}

    def load(self) -> Splits:
        key = (self.num_samples, str(data_cache_dir()))
        with _lock:
            if key not in _memory:
                x, y = _load_arrays(self.num_samples)
                n = len(y)
                n_val = n_test = n // 6
                n_train = n - n_val - n_test
                xt, yt = torch.from_numpy(x), torch.from_numpy(y)
                _memory[key] = Splits(
                    xt[:n_train], yt[:n_train],
                    xt[n_train:n_train + n_val], yt[n_train:n_train + n_val],
                    xt[n_train + n_val:], yt[n_train + n_val:])
            return _memory[key]

    def build_model(self, k: int, generator: torch.Generator) -> MNIST1DConvNet:
        return MNIST1DConvNet.create(k, generator)
