"""``cifar10``: the paper's child network on CIFAR-10 (Bello et al. 2017, section 4.2).

Model (paper: "a small two layer 3x3 ConvNet ... 32 filters with ReLU activations and
batch normalization applied after each convolutional layer"); the paper does not give the
rest, so we add, and document, a 2x2 max-pool after each block and a linear head::

    conv3x3(3 -> 32, pad 1) -> BN -> ReLU -> maxpool 2x2      # 32x32 -> 16x16
    conv3x3(32 -> 32, pad 1) -> BN -> ReLU -> maxpool 2x2     # 16x16 -> 8x8
    flatten (32 x 8 x 8) -> linear(2048 -> 10)                 # head

The pools keep an epoch over 45,000 images at ~10-20 s on 2 CPU cores; the flatten +
linear head reaches ~60 % validation accuracy after one epoch with Adam (global average
pooling would discard where features are and train much slower).  Initialisation is
PyTorch's default; inputs are normalised with the usual CIFAR-10 channel means and
standard deviations and fed in channels-last layout (faster convolutions on CPU).

Data (``data_dir``), any of:

(a) a folder with the official python batches (``data_batch_1`` .. ``data_batch_5``,
    ``test_batch``), or a folder containing ``cifar-10-batches-py/``;
(b) an ImageFolder tree ``train/<class>/*.jpg|png`` and ``test/<class>/...`` (classes in
    alphabetical order, as torchvision's ImageFolder), e.g. a JPEG copy of CIFAR-10;
(c) a ``.tar.gz``/``.tgz``/``.tar`` archive of (a) (the official ``cifar-10-python.tar.gz``)
    or of (b) (e.g. ``path/to/cifar10-jpeg.tar.gz``, a JPEG copy);
(d) with ``download=True`` only: the official archive, fetched into ``data_dir``
    (default ``data_cache_dir()/cifar10``) and checked against its published MD5.

Decoded images are cached as uint8 arrays in ``data_cache_dir()/cifar10-<hash>.npz``
(decoding 60,000 JPEGs costs ~10 s) and in memory per process.  Missing data raises
:class:`~searchlab.tasks.base.DataNotFoundError` naming the path and these formats.

Splits (fixed): validation = 5,000 images of the official training set chosen by a fixed
permutation (seed 0), training = the other 45,000, test = the official 10,000 test
images.  ``max_examples`` keeps only the first ``ceil(max_examples/10)`` images per class
(in file order) of the training set and of the test set (for quick tests); validation is
then ``min(5000, n/10)`` images.  Image copies (b, c) change pixels slightly (JPEG), so
the task id records the source kind: ``cifar10`` for the official batches,
``cifar10+source=images`` for image folders.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import tarfile
import threading
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from .base import (
    TASKS,
    ClassificationTask,
    DataNotFoundError,
    Splits,
    StackedModel,
    data_cache_dir,
)
from .layers import conv_bn_relu_pool

__all__ = ["CIFAR10", "CIFAR10ConvNet", "load_cifar10_arrays", "ACCEPTED_FORMATS"]

CHANNELS = 32
CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
VAL_SIZE = 5_000
SPLIT_SEED = 0
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
_FORMAT = 1  # bump when the cached array layout changes
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".webp")
_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)

ACCEPTED_FORMATS = (
    "(a) a folder with the official CIFAR-10 python batches (data_batch_1..5, test_batch) "
    "or one containing cifar-10-batches-py/; (b) an ImageFolder tree train/<class>/*.jpg "
    "and test/<class>/*.jpg; (c) a .tar.gz/.tgz/.tar archive of (a) or (b), e.g. the "
    "official cifar-10-python.tar.gz or the JPEG copy cifar10-jpeg.tar.gz; or (d) "
    "download=True (CLI: --download) to fetch the official archive into the folder")

_memory: dict[str, dict[str, np.ndarray]] = {}
_lock = threading.Lock()


# --------------------------------------------------------------------------------------
# reading the formats
# --------------------------------------------------------------------------------------
def _detect(path: Path) -> str:
    """``batches`` | ``images`` | ``archive`` | ``missing``."""
    if path.is_file():
        name = path.name.lower()
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            return "archive"
        return "missing"
    if path.is_dir():
        if all((path / b).is_file() for b in _BATCHES) or \
                all((path / "cifar-10-batches-py" / b).is_file() for b in _BATCHES):
            return "batches"
        if (path / "train").is_dir() and (path / "test").is_dir():
            return "images"
        archives = sorted(p for p in path.iterdir()
                          if p.is_file() and p.name.lower().endswith((".tar.gz", ".tgz", ".tar")))
        if len(archives) == 1:
            return "archive"
    return "missing"


def _balanced_head(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    """Indices of the first ``per_class`` examples of each class, in original order."""
    if per_class is None:
        return np.arange(len(labels))
    keep = np.zeros(len(labels), dtype=bool)
    for c in range(len(CLASSES)):
        keep[np.flatnonzero(labels == c)[:per_class]] = True
    return np.flatnonzero(keep)


def _from_batches(read: Any, per_class: int | None) -> dict[str, np.ndarray]:
    """``read(name) -> bytes`` of a python batch file."""
    xs, ys = [], []
    for name in _BATCHES[:5]:
        d = pickle.loads(read(name), encoding="bytes")
        xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[b"labels"], dtype=np.int64))
    xtr, ytr = np.concatenate(xs), np.concatenate(ys)
    d = pickle.loads(read("test_batch"), encoding="bytes")
    xte = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    yte = np.asarray(d[b"labels"], dtype=np.int64)
    i, j = _balanced_head(ytr, per_class), _balanced_head(yte, per_class)
    return {"x_train": xtr[i], "y_train": ytr[i], "x_test": xte[j], "y_test": yte[j]}


def _decode(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if arr.shape != (32, 32, 3):
        raise ValueError(f"{where}: expected a 32x32 image, got {arr.shape[1]}x{arr.shape[0]}")
    return arr


def _from_images(files: dict[str, dict[str, list[tuple[str, Any]]]], origin: str,
                 per_class: int | None) -> dict[str, np.ndarray]:
    """``files[split][class] = [(name, read), ...]`` with ``read() -> bytes``."""
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        classes = sorted(files.get(split, {}))
        if len(classes) != len(CLASSES):
            raise DataNotFoundError(
                f"CIFAR-10 image tree at '{origin}' has {len(classes)} class folders under "
                f"{split}/ ({', '.join(classes) or 'none'}); expected 10. Accepted: {ACCEPTED_FORMATS}")
        images, labels = [], []
        for label, cls in enumerate(classes):
            items = sorted(files[split][cls], key=lambda t: t[0])
            if per_class is not None:
                items = items[:per_class]
            for name, read in items:
                images.append(_decode(read(), f"{origin}:{split}/{cls}/{name}"))
                labels.append(label)
        x = np.stack(images).transpose(0, 3, 1, 2) if images else np.zeros((0, 3, 32, 32), np.uint8)
        out[f"x_{split}"] = np.ascontiguousarray(x)
        out[f"y_{split}"] = np.asarray(labels, dtype=np.int64)
    return out


def _image_tree(root: Path) -> dict[str, dict[str, list[tuple[str, Any]]]]:
    files: dict[str, dict[str, list[tuple[str, Any]]]] = {}
    for split in ("train", "test"):
        for cls_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            entries = [e for e in os.scandir(cls_dir)
                       if e.is_file() and e.name.lower().endswith(_IMAGE_SUFFIXES)]
            files.setdefault(split, {})[cls_dir.name] = [
                (e.name, (lambda p=e.path: Path(p).read_bytes())) for e in entries]
    return files


def _from_archive(path: Path, per_class: int | None) -> dict[str, np.ndarray]:
    """Read an archive in one streaming pass.  With ``per_class`` only the bytes of the
    first ``per_class`` names of each class are kept (a bounded max-heap per class)."""
    import heapq

    batches: dict[str, bytes] = {}
    heaps: dict[tuple[str, str], list[tuple[Any, str, bytes]]] = {}
    for member_name, read in _tar_members(path):
        parts = [p for p in member_name.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts:
            continue
        if parts[-1] in _BATCHES:
            batches[parts[-1]] = read()
            continue
        # .../<train|test>/<class>/<image file>
        if (len(parts) < 3 or parts[-3] not in ("train", "test")
                or not parts[-1].lower().endswith(_IMAGE_SUFFIXES)):
            continue
        heap = heaps.setdefault((parts[-3], parts[-2]), [])
        name = parts[-1]
        if per_class is not None and len(heap) >= per_class and _Desc(name) <= heap[0][0]:
            continue  # not among the first per_class names: never read
        item = (_Desc(name), name, read())
        if per_class is not None and len(heap) >= per_class:
            heapq.heapreplace(heap, item)
        else:
            heapq.heappush(heap, item)
    if all(b in batches for b in _BATCHES):
        return _from_batches(batches.__getitem__, per_class)
    if heaps:
        files: dict[str, dict[str, list[tuple[str, Any]]]] = {}
        for (split, cls), heap in heaps.items():
            files.setdefault(split, {})[cls] = [(name, (lambda d=data: d)) for _, name, data in heap]
        return _from_images(files, str(path), per_class)
    raise DataNotFoundError(
        f"archive '{path}' holds neither the CIFAR-10 python batches nor an image tree "
        f"train/<class>/..., test/<class>/.... Accepted: {ACCEPTED_FORMATS}")


def _tar_members(path: Path) -> Iterable[tuple[str, Any]]:
    """``(name, read)`` of the regular files of a (gzipped) tar archive.

    Python's ``tarfile`` spends ~0.1 ms per header, a second per 10,000 members; plain
    ustar/GNU archives (names up to 100 chars, ustar prefixes, GNU long names, pax
    ``path`` records) are parsed here directly from the decompressed bytes; anything else
    falls back to ``tarfile``."""
    import gzip

    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    out: list[tuple[str, Any]] = []
    pos, n = 0, len(raw)
    long_name: str | None = None
    try:
        while pos + 512 <= n:
            header = raw[pos:pos + 512]
            if header == b"\0" * 512:
                break
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            kind = header[156:157]
            name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            if header[257:262] == b"ustar":
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
                if prefix:
                    name = f"{prefix}/{name}"
            start = pos + 512
            pos = start + (size + 511) // 512 * 512
            if kind == b"L":  # GNU long name of the next member
                long_name = raw[start:start + size].split(b"\0", 1)[0].decode("utf-8", "replace")
                continue
            if kind == b"x":  # pax extended header: may carry the path
                for rec in raw[start:start + size].decode("utf-8", "replace").splitlines():
                    if " path=" in rec:
                        long_name = rec.split(" path=", 1)[1]
                continue
            if kind == b"g":
                continue
            if long_name is not None:
                name, long_name = long_name, None
            if kind in (b"0", b"\0", b"7"):
                out.append((name, (lambda a=start, b=start + size: raw[a:b])))
    except (ValueError, UnicodeDecodeError):
        out = []
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    f = tar.extractfile(member)
                    if f is not None:
                        data = f.read()
                        out.append((member.name, (lambda d=data: d)))
    return out


class _Desc:
    """A name ordered in reverse, so ``heapq`` (a min-heap) keeps the smallest names."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __lt__(self, other: "_Desc") -> bool:
        return self.name > other.name

    def __le__(self, other: "_Desc") -> bool:
        return self.name >= other.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.name == other.name


def _download(folder: Path) -> Path:
    """Fetch the official archive into ``folder`` (only when the user asked for it)."""
    import urllib.request

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "cifar-10-python.tar.gz"
    if not target.is_file():
        tmp = target.with_suffix(".part")
        urllib.request.urlretrieve(URL, tmp)  # noqa: S310 (fixed https URL)
        digest = hashlib.md5(tmp.read_bytes()).hexdigest()  # noqa: S324 (published checksum)
        if digest != MD5:
            tmp.unlink(missing_ok=True)
            raise OSError(f"downloaded {URL} has MD5 {digest}, expected {MD5}")
        tmp.replace(target)
    return target


def _fingerprint_source(path: Path, kind: str) -> str:
    """Cheap identity of a data source (path, sizes, mtimes) for the array cache key."""
    items: list[str] = [kind, str(path.resolve())]

    def stat(p: Path) -> str:
        s = p.stat()
        return f"{p.name}:{s.st_size}:{s.st_mtime_ns}"

    if kind == "archive":
        items.append(stat(path))
    elif kind == "batches":
        base = path if (path / _BATCHES[0]).is_file() else path / "cifar-10-batches-py"
        items += [stat(base / b) for b in _BATCHES]
    else:
        for split in ("train", "test"):
            items += [stat(p) for p in sorted((path / split).iterdir()) if p.is_dir()]
    return hashlib.sha1("|".join(items).encode()).hexdigest()[:16]


def resolve_source(data_dir: str | os.PathLike[str] | None, download: bool = False) -> tuple[Path, str]:
    """``(path, kind)`` of the CIFAR-10 data to read; raises :class:`DataNotFoundError`."""
    path = Path(data_dir).expanduser() if data_dir is not None else data_cache_dir() / "cifar10"
    kind = _detect(path)
    if kind == "missing" and download:
        folder = path if not path.suffix else path.parent
        path, kind = _download(folder), "archive"
    if kind == "missing":
        where = "does not exist" if not path.exists() else "holds no CIFAR-10 data"
        raise DataNotFoundError(
            f"CIFAR-10 data not found: '{path}' {where}. Pass data_dir= (CLI: --data-dir) "
            f"pointing to one of: {ACCEPTED_FORMATS}.")
    if kind == "archive" and path.is_dir():
        path = next(p for p in sorted(path.iterdir())
                    if p.is_file() and p.name.lower().endswith((".tar.gz", ".tgz", ".tar")))
    return path, kind


def load_cifar10_arrays(data_dir: str | os.PathLike[str] | None = None, *,
                        max_examples: int | None = None,
                        download: bool = False) -> dict[str, np.ndarray]:
    """Decoded CIFAR-10: ``x_train, x_test`` uint8 ``[n, 3, 32, 32]``, ``y_*`` int64.

    Cached on disk and in memory (keyed by the source's path, sizes and mtimes)."""
    path, kind = resolve_source(data_dir, download)
    per_class = None if max_examples is None else max(1, math.ceil(max_examples / len(CLASSES)))
    tag = hashlib.sha1(f"{_fingerprint_source(path, kind)}:{per_class}:{_FORMAT}".encode()).hexdigest()[:16]
    with _lock:
        if tag in _memory:
            return _memory[tag]
        cache = data_cache_dir() / f"cifar10-{tag}.npz"
        arrays: dict[str, np.ndarray] | None = None
        if cache.is_file():
            try:
                with np.load(cache) as z:
                    arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            except (OSError, ValueError, KeyError):
                arrays = None
        if arrays is None:
            if kind == "batches":
                base = path if (path / _BATCHES[0]).is_file() else path / "cifar-10-batches-py"
                arrays = _from_batches(lambda n: (base / n).read_bytes(), per_class)
            elif kind == "images":
                arrays = _from_images(_image_tree(path), str(path), per_class)
            else:
                arrays = _from_archive(path, per_class)
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez(tmp, **arrays)
            tmp.replace(cache)
        _memory[tag] = arrays
        return arrays


# --------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------
class CIFAR10ConvNet(StackedModel):
    """``k`` copies of the paper's two-layer ConvNet (module docstring).

    Each block is :func:`~searchlab.tasks.layers.conv_bn_relu_pool` (the same function as
    ``Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d``, with fewer memory passes).  The copies'
    convolutions run one copy at a time: on CPU (oneDNN) one convolution with ``k*32``
    output channels on the shared input, or a grouped one (``groups=k``) for the second
    layer, measured 1.2-4x slower than ``k`` separate ones (``bench/evaluator.py``,
    BENCHMARKS.md); only the head, the loss and the rule's update are batched over copies.
    """

    param_names: ClassVar[tuple[str, ...]] = (
        "conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias",
        "conv2.weight", "conv2.bias", "bn2.weight", "bn2.bias", "fc.weight", "fc.bias")
    # fc.weight is [k, 32*8*8, 10] (row = c*64 + y*8 + x: nn.Flatten order, transposed)

    @classmethod
    def create(cls, k: int, generator: torch.Generator, channels: int = CHANNELS) -> "CIFAR10ConvNet":
        c = channels

        def uniform(shape: tuple[int, ...], fan_in: int) -> Tensor:
            return cls.uniform(shape, fan_in, generator)

        one = [
            uniform((c, 3, 3, 3), 27), uniform((c,), 27), torch.ones(c), torch.zeros(c),
            uniform((c, c, 3, 3), 9 * c), uniform((c,), 9 * c), torch.ones(c), torch.zeros(c),
            uniform((64 * c, 10), 64 * c), uniform((10,), 64 * c),
        ]
        return cls(cls.replicate(one, k), cls.bn_buffers(c, k))

    def forward(self, x: Tensor, train: bool) -> Tensor:
        w1, b1, g1, be1, w2, b2, g2, be2, wf, bf = self.params
        rm1, rv1, rm2, rv2 = self.buffers
        k, c = b1.shape
        n = x.shape[0]
        feats = []
        for i in range(k):  # per copy: see the class docstring
            h = conv_bn_relu_pool(x, w1[i], b1[i], g1[i], be1[i], rm1[i], rv1[i], train=train)
            h = conv_bn_relu_pool(h, w2[i], b2[i], g2[i], be2[i], rm2[i], rv2[i], train=train)
            feats.append(h.reshape(n, c * 64))                    # nn.Flatten order
        if k == 1:
            return torch.addmm(bf, feats[0], wf[0]).unsqueeze(0)
        return torch.baddbmm(bf.unsqueeze(1), torch.stack(feats), wf)  # [k, n, 10]


@TASKS.register("cifar10")
class CIFAR10(ClassificationTask):
    """CIFAR-10 with the paper's small ConvNet (see the module docstring).

    Options:
        data_dir: where the data is (formats (a)-(c) of the module docstring); default
            ``data_cache_dir()/cifar10``.
        download: fetch the official archive into ``data_dir`` if no data is there
            (never done unless asked).
        max_examples: keep only the first ``ceil(max_examples/10)`` images per class of
            the training and test sets (quick tests and benchmarks).
    """

    name: ClassVar[str] = "cifar10"
    # measured (bench/evaluator.py, BENCHMARKS.md): the copies cannot share convolution
    # work on CPU, so a batched sweep is within noise of one lr at a time (0.74x vs 0.76x
    # the plain loop) and holds 7 copies' activations; the sweep runs one lr at a time
    batched_default: ClassVar[bool] = False
    # convolutions over 32x32 images are big enough for intra-op threads to pay
    preferred_threads: ClassVar[int | None] = None
    eval_rows: ClassVar[int] = 200  # 32x32x32 activations: ~290 us/image at 100-250, 420 at 1000

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, download: bool = False,
                 max_examples: int | None = None) -> None:
        if max_examples is not None and int(max_examples) < 20:
            raise ValueError(f"max_examples must be >= 20, got {max_examples}")
        self.data_dir = data_dir
        self.download = bool(download)
        self.max_examples = None if max_examples is None else int(max_examples)
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in STD]).view(1, 3, 1, 1)
        self._shift = torch.tensor([-m / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
        self._splits: Splits | None = None

    def __getstate__(self) -> dict[str, Any]:  # ship options, not data, to workers
        state = dict(self.__dict__)
        state["_splits"] = None
        return state

    def _source_kind(self) -> str | None:
        path = Path(self.data_dir).expanduser() if self.data_dir is not None else data_cache_dir() / "cifar10"
        kind = _detect(path)
        if kind == "archive":
            name = path.name if path.is_file() else ""
            # the official python archive holds batches; any other archive is an image copy
            return "batches" if name == "cifar-10-python.tar.gz" else "images"
        return kind if kind != "missing" else None

    def result_options(self) -> Mapping[str, Any]:
        out: dict[str, Any] = {}
        if self._source_kind() == "images":
            out["source"] = "images"
        if self.max_examples is not None:
            out["max_examples"] = self.max_examples
        return out

    def load(self) -> Splits:
        if self._splits is not None:
            return self._splits
        arrays = load_cifar10_arrays(self.data_dir, max_examples=self.max_examples,
                                     download=self.download)
        xtr, ytr = arrays["x_train"], arrays["y_train"]
        n = len(ytr)
        n_val = min(VAL_SIZE, n // 10)
        perm = np.random.default_rng(SPLIT_SEED).permutation(n)
        val, train = np.sort(perm[:n_val]), perm[n_val:]
        t = torch.from_numpy
        self._splits = Splits(t(xtr[train]), t(ytr[train]), t(xtr[val]), t(ytr[val]),
                              t(arrays["x_test"]), t(arrays["y_test"]))
        return self._splits

    def prepare(self, x: Tensor) -> Tensor:
        """uint8 ``[n, 3, 32, 32]`` -> normalised float32, channels-last."""
        out = torch.addcmul(self._shift, x.to(torch.float32), self._scale)
        return out.contiguous(memory_format=torch.channels_last)

    def build_model(self, k: int, generator: torch.Generator) -> CIFAR10ConvNet:
        return CIFAR10ConvNet.create(k, generator)
