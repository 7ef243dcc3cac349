"""Child tasks (searchlab.tasks): data generation/decoding, splits, models, problems.

The Task interface checks that every registered task must pass are
:func:`searchlab.testing.conformance.check_task` (run here over ``TASKS``, and shown to
fail for tasks broken on purpose).  The rest compares with an independent reference:
torch.nn modules for the stacked models, PIL/pickle reads of the same files for CIFAR-10,
textbook minima for the problems, the global RNG state before/after for MNIST-1D
generation.
"""

from __future__ import annotations

import io
import math
import pickle
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from searchlab.tasks import TASKS, DataNotFoundError, get_task
from searchlab.tasks import cifar10 as cifar_mod
from searchlab.tasks import mnist1d as m1d_mod
from searchlab.tasks.base import ClassificationTask, Splits, StackedModel
from searchlab.tasks.cifar10 import CIFAR10ConvNet
from searchlab.tasks.mnist1d import MNIST1DConvNet
from searchlab.tasks.problems import ORDERS, Rosenbrock, build_problems, normalised_score
from searchlab.testing.conformance import check_task

JPEG_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
SMALL = 1200  # MNIST-1D signals for quick tests (800 train / 200 val / 200 test)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    # one data cache per test session (generation/decoding happens once), never ~/.cache
    d = tmp_path_factory.getbasetemp() / "searchlab-cache"
    monkeypatch.setenv("SEARCHLAB_CACHE", str(d))
    return d


def test_registry_lists_the_tasks() -> None:
    assert {"mnist1d", "cifar10", "rosenbrock", "ensemble"} <= set(TASKS.names())
    with pytest.raises(KeyError, match="unknown task"):
        get_task("imagenet")


# --- conformance ----------------------------------------------------------------------------
#: small instances of the built-in tasks (cifar10: skipped by check_task without the data)
CONFORMANCE_OPTIONS = {"mnist1d": {"num_samples": SMALL},
                       "cifar10": {"data_dir": JPEG_TAR, "max_examples": 100}}


@pytest.mark.parametrize("name", TASKS.names())
def test_task_conformance(name: str) -> None:
    check_task(name, **CONFORMANCE_OPTIONS.get(name, {}))


class LinearNet(StackedModel):
    """``k`` copies of a linear classifier of 4 features."""

    @classmethod
    def create(cls, k: int, generator: torch.Generator) -> "LinearNet":
        one = [cls.uniform((4, 3), 4, generator), cls.uniform((3,), 4, generator)]
        return cls(cls.replicate(one, k), [])

    def forward(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        w, b = self.params
        return torch.baddbmm(b.unsqueeze(1), x.expand(self.k, *x.shape), w)


class Blobs(ClassificationTask):
    """A correct outside task: three Gaussian blobs in 4-D, 90/30/30 examples."""

    name = "blobs"
    num_classes = 3

    def load(self) -> Splits:
        gen = torch.Generator().manual_seed(0)
        y = torch.arange(150) % 3
        x = torch.randn(150, 4, generator=gen) + 2.0 * F.one_hot(y, 4).float()
        return Splits(x[:90], y[:90], x[90:120], y[90:120], x[120:], y[120:])

    def build_model(self, k: int, generator: torch.Generator) -> LinearNet:
        return LinearNet.create(k, generator)


class Leaky(Blobs):  # validation split = training examples
    def load(self) -> Splits:
        s = super().load()
        return Splits(s.train_x, s.train_y, s.train_x[:30], s.train_y[:30], s.test_x, s.test_y)


class Unseeded(Blobs):  # weights from torch's global RNG
    def build_model(self, k: int, generator: torch.Generator) -> LinearNet:
        return LinearNet.create(k, torch.default_generator)


class Unlabelled(Blobs):  # a result option that is not in the id
    def result_options(self) -> dict[str, int]:
        return {"examples": 150}

    @property
    def id(self) -> str:
        return self.name + "+size=150"


class FixedStart(Rosenbrock):  # the same starting point for every seed
    def initial_points(self, seed: int, stream: str = "val") -> list[torch.Tensor]:
        return super().initial_points(0, stream)


def test_check_task_passes_for_an_outside_task() -> None:
    check_task(Blobs)
    check_task(Blobs())


BROKEN_TASKS = [
    (Leaky, "30 val inputs also appear in the training split"),
    (Unseeded, "param 0 differs between two models from one seed"),
    (Unlabelled, "does not encode the result options"),
    (FixedStart, r"initial points of \(seed 0, 'val'\) and \(seed 1, 'val'\) are equal"),
]


@pytest.mark.parametrize("broken,message", BROKEN_TASKS, ids=[b.__name__ for b, _ in BROKEN_TASKS])
def test_check_task_fails_for_broken_tasks(broken: type, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_task(broken)


def test_check_task_skips_a_task_whose_data_is_missing(tmp_path: Path) -> None:
    with pytest.raises(pytest.skip.Exception, match="data not available"):
        check_task("cifar10", data_dir=tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError):
        check_task("cifar10", data_dir=tmp_path / "nowhere", missing_data="raise")


# --- MNIST-1D -----------------------------------------------------------------------------
def test_mnist1d_generation_leaves_global_rng_untouched() -> None:
    random.seed(123)
    np.random.seed(456)
    py_before, np_before = random.getstate(), np.random.get_state()
    x, y = m1d_mod.generate_mnist1d(120)
    assert random.getstate() == py_before
    np_after = np.random.get_state()
    assert np_after[0] == np_before[0] and np.array_equal(np_after[1], np_before[1])
    assert np_after[2:] == np_before[2:]
    assert x.shape == (120, 40) and x.dtype == np.float32 and sorted(set(y.tolist())) == list(range(10))


def test_mnist1d_splits_are_fixed_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    task = get_task("mnist1d", num_samples=SMALL)
    s = task.load()
    assert s.sizes() == {"train": 800, "val": 200, "test": 200}
    assert task.id == f"mnist1d+num_samples={SMALL}" and get_task("mnist1d").id == "mnist1d"
    # disjoint splits: test_task_conformance
    # a second load in a fresh process reads the on-disk arrays: generation never runs again
    m1d_mod._memory.clear()

    def boom(n: int) -> None:
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(m1d_mod, "generate_mnist1d", boom)
    s2 = get_task("mnist1d", num_samples=SMALL).load()
    assert torch.equal(s2.train_x, s.train_x) and torch.equal(s2.test_y, s.test_y)


def _mnist1d_reference(model: MNIST1DConvNet, k: int) -> nn.Module:
    """The same network written with torch.nn layers, weights copied from copy ``k``."""
    w1, b1, g1, be1, w2, b2, g2, be2, wf, bf = [p.detach()[k] for p in model.params]
    c = b1.shape[0]
    net = nn.Sequential(nn.Unflatten(1, (1, 40)), nn.Conv1d(1, c, 5, 2, 2), nn.BatchNorm1d(c),
                        nn.ReLU(), nn.Conv1d(c, c, 3, 2, 1), nn.BatchNorm1d(c), nn.ReLU(),
                        nn.Flatten(), nn.Linear(c * 10, 10))
    with torch.no_grad():
        net[1].weight.copy_(w1.unsqueeze(1))
        net[1].bias.copy_(b1)
        net[2].weight.copy_(g1)
        net[2].bias.copy_(be1)
        net[4].weight.copy_(w2.view(3, c, c).permute(2, 1, 0))   # row j*c+cin, col cout
        net[4].bias.copy_(b2)
        net[5].weight.copy_(g2)
        net[5].bias.copy_(be2)
        net[8].weight.copy_(wf.view(10, c, 10).permute(2, 1, 0).reshape(10, c * 10))
        net[8].bias.copy_(bf)
    return net


def test_mnist1d_stacked_model_matches_torch_nn_layers() -> None:
    gen = torch.Generator().manual_seed(0)
    model = MNIST1DConvNet.create(3, gen)
    with torch.no_grad():  # make the copies differ
        for i, p in enumerate(model.params):
            p.add_(0.05 * torch.randn(p.shape, generator=gen) * torch.arange(3).view(-1, *[1] * (p.dim() - 1)))
    x = torch.randn(16, 40, generator=gen)
    y = torch.randint(0, 10, (16,), generator=gen)
    for train in (True, False):
        out = model.forward(x, train=train)
        for k in range(3):
            ref = _mnist1d_reference(model, k).train(train)
            if not train:  # running stats after the training-mode pass above
                ref[2].running_mean.copy_(model.buffers[0][k]); ref[2].running_var.copy_(model.buffers[1][k])
                ref[5].running_mean.copy_(model.buffers[2][k]); ref[5].running_var.copy_(model.buffers[3][k])
            torch.testing.assert_close(out[k], ref(x), rtol=1e-4, atol=1e-5)
    # gradients of the summed per-copy losses are each copy's own gradient
    losses = model.losses(x, y)
    grads = torch.autograd.grad(losses.sum(), model.params)
    ref = _mnist1d_reference(model, 1).train(True)
    F.cross_entropy(ref(x), y).backward()
    torch.testing.assert_close(grads[0][1], ref[1].weight.grad.squeeze(1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[8][1], ref[8].weight.grad.view(10, -1, 10).permute(2, 1, 0).reshape(-1, 10),
                               rtol=1e-4, atol=1e-6)


def _cifar_reference(model: CIFAR10ConvNet, k: int) -> nn.Sequential:
    """Copy ``k`` of the stacked model as plain torch.nn layers (the independent reference)."""
    w1, b1, g1, be1, w2, b2, g2, be2, wf, bf = [p.detach()[k] for p in model.params]
    c = b1.shape[0]
    ref = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(c * 64, 10)).to(w1.dtype)
    with torch.no_grad():
        for mod, (w, b) in zip((ref[0], ref[1], ref[4], ref[5]), ((w1, b1), (g1, be1), (w2, b2), (g2, be2))):
            mod.weight.copy_(w)
            mod.bias.copy_(b)
        ref[9].weight.copy_(wf.t())
        ref[9].bias.copy_(bf)
    return ref


@pytest.mark.parametrize("k", [1, 2])
def test_cifar_stacked_model_matches_torch_nn_layers(k: int) -> None:
    """Outputs, gradients and running statistics of every copy equal nn.Conv2d ->
    nn.BatchNorm2d -> nn.ReLU -> nn.MaxPool2d layers, including negative and near-zero
    batch-norm weights (the fused block flips those channels' convolutions)."""
    gen = torch.Generator().manual_seed(1)
    model = CIFAR10ConvNet.create(k, gen, channels=8)
    with torch.no_grad():
        for p in model.params:  # copies differ; batch-norm weights of both signs, one near zero
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
        model.params[2][:, 0] = 1e-3
        model.params[2][:, 2] = -0.4
        model.params[6][:, 1] = -0.7
    x = torch.randn(6, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (6,), generator=gen)
    refs = [_cifar_reference(model, i).train(True) for i in range(k)]
    assert any((model.params[2] < 0).flatten()) and any((model.params[6] < 0).flatten())
    grads = torch.autograd.grad(model.losses(x, y).sum(), model.params)
    for i, ref in enumerate(refs):
        ref_grads = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
        mods = [ref[0], ref[1], ref[4], ref[5]]
        ours = [grads[j][i] for j in range(8)]
        theirs = [g for g in ref_grads[:8]]
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(grads[8][i], ref_grads[8].t(), rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(grads[9][i], ref_grads[9], rtol=1e-3, atol=1e-5)
        # running statistics after the one training-mode pass
        rm1, rv1, rm2, rv2 = (b[i] for b in model.buffers)
        torch.testing.assert_close(rm1, mods[1].running_mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(rv1, mods[1].running_var, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(rm2, mods[3].running_mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(rv2, mods[3].running_var, rtol=1e-4, atol=1e-6)
    # evaluation mode uses the running statistics
    with torch.no_grad():
        out = model.forward(x, train=False)
        for i, ref in enumerate(refs):
            torch.testing.assert_close(out[i], ref.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_fused_block_matches_batch_norm_relu_maxpool_in_float64(layout: str) -> None:
    """The fused conv/BN/ReLU/pool block against F.conv2d, F.batch_norm, F.relu and
    F.max_pool2d in float64: output, all five gradients, running statistics, eval mode;
    and exact ties in every pooling window (a constant input) route like F.max_pool2d."""
    from searchlab.tasks.layers import conv_bn_relu_pool

    gen = torch.Generator().manual_seed(5)
    d = dict(dtype=torch.float64)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for constant in (False, True):
        x = (torch.zeros(4, 3, 8, 8, **d) if constant else torch.randn(4, 3, 8, 8, generator=gen, **d))
        x = x.contiguous(memory_format=fmt).requires_grad_(True)
        w = torch.randn(6, 3, 3, 3, generator=gen, **d).requires_grad_(True)
        b = torch.randn(6, generator=gen, **d).requires_grad_(True)
        g = torch.tensor([1.3, -0.8, 1e-3, 0.5, -2.0, 0.9], **d).requires_grad_(True)
        be = torch.randn(6, generator=gen, **d).requires_grad_(True)
        rm, rv = torch.randn(6, generator=gen, **d), torch.rand(6, generator=gen, **d) + 0.5
        rm_ref, rv_ref = rm.clone(), rv.clone()
        out = conv_bn_relu_pool(x, w, b, g, be, rm, rv, train=True)
        ref = F.max_pool2d(F.relu(F.batch_norm(F.conv2d(x, w, b, padding=1), rm_ref, rv_ref, g, be,
                                               training=True, momentum=0.1, eps=1e-5)), 2)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        dout = torch.randn(out.shape, generator=gen, **d)
        ours = torch.autograd.grad(out, (x, w, b, g, be), dout)
        theirs = torch.autograd.grad(ref, (x, w, b, g, be), dout)
        for name, a, t in zip("x w b gamma beta".split(), ours, theirs):
            torch.testing.assert_close(a, t, rtol=1e-8, atol=1e-8, msg=lambda m: f"d{name}: {m}")
        torch.testing.assert_close(rm, rm_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rv, rv_ref, rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            torch.testing.assert_close(
                conv_bn_relu_pool(x, w, b, g, be, rm, rv, train=False),
                F.max_pool2d(F.relu(F.batch_norm(F.conv2d(x, w, b, padding=1), rm, rv, g, be,
                                                 training=False, eps=1e-5)), 2), rtol=1e-10, atol=1e-10)


def test_models_init_like_pytorch_bounds() -> None:
    m = MNIST1DConvNet.create(4, torch.Generator().manual_seed(3))   # equal copies: conformance
    assert float(m.params[0].detach().abs().max()) <= 1 / math.sqrt(5)          # fan_in 5
    assert float(m.params[8].detach().abs().max()) <= 1 / math.sqrt(320)        # fan_in 320


# --- CIFAR-10 -------------------------------------------------------------------------------
def test_cifar_missing_data_names_path_and_formats(tmp_path: Path) -> None:
    where = tmp_path / "nowhere"
    task = get_task("cifar10", data_dir=where)
    with pytest.raises(DataNotFoundError) as err:
        task.load()
    msg = str(err.value)
    assert str(where) in msg and "python batches" in msg and "ImageFolder" in msg and ".tar.gz" in msg
    assert "download" in msg


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_cifar_reads_an_image_tree_archive_in_imagefolder_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    classes = sorted(cifar_mod.CLASSES, reverse=True)  # written in a different order
    expected: dict[str, dict[str, list[np.ndarray]]] = {"train": {}, "test": {}}
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split, n in (("test", 2), ("train", 3)):
            for cls in classes:
                for i in reversed(range(n)):
                    img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                    expected[split].setdefault(cls, []).insert(0, img)
                    data = _png(img)
                    info = tarfile.TarInfo(f"root/{split}/{cls}/{i:04d}.png")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    arrays = cifar_mod.load_cifar10_arrays(archive)
    assert arrays["x_train"].shape == (30, 3, 32, 32) and arrays["x_test"].shape == (20, 3, 32, 32)
    # label = alphabetical class index (torchvision ImageFolder), files in name order
    for split, n in (("train", 3), ("test", 2)):
        for label, cls in enumerate(sorted(cifar_mod.CLASSES)):
            rows = np.flatnonzero(arrays[f"y_{split}"] == label)
            assert len(rows) == n
            for j, row in enumerate(rows):
                np.testing.assert_array_equal(arrays[f"x_{split}"][row].transpose(1, 2, 0),
                                              expected[split][cls][j])
    task = get_task("cifar10", data_dir=archive)
    assert task.id == "cifar10+source=images"
    s = task.load()
    assert s.sizes() == {"train": 27, "val": 3, "test": 20}


def test_cifar_reads_python_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    stored = {}
    for name in cifar_mod._BATCHES:
        data = rng.integers(0, 256, size=(20, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=20)]
        stored[name] = (data, labels)
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
    arrays = cifar_mod.load_cifar10_arrays(tmp_path)
    want = np.concatenate([stored[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(arrays["x_train"], want)
    np.testing.assert_array_equal(arrays["y_test"], stored["test_batch"][1])
    assert get_task("cifar10", data_dir=tmp_path).id == "cifar10"


@pytest.mark.skipif(not JPEG_TAR.is_file(), reason="shared CIFAR-10 JPEG copy not present")
def test_cifar_jpeg_copy_small_subset_matches_pil_decoding() -> None:
    from PIL import Image

    arrays = cifar_mod.load_cifar10_arrays(JPEG_TAR, max_examples=100)
    assert arrays["x_train"].shape == (100, 3, 32, 32) and arrays["x_test"].shape == (100, 3, 32, 32)
    assert np.bincount(arrays["y_train"]).tolist() == [10] * 10
    with tarfile.open(JPEG_TAR) as tar:  # an early member: no need to scan the archive
        member = next(m for m in tar if m.name.endswith("test/airplane/0003.jpg"))
        ref = np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
    row = np.flatnonzero(arrays["y_test"] == 0)[3]  # airplane: label 0
    np.testing.assert_array_equal(arrays["x_test"][row].transpose(1, 2, 0), ref)
    # normalised, channels-last model inputs
    task = get_task("cifar10", data_dir=JPEG_TAR, max_examples=100)
    x = task.prepare(torch.from_numpy(arrays["x_train"][:4]))
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    want = (arrays["x_train"][:4, 0] / 255.0 - cifar_mod.MEAN[0]) / cifar_mod.STD[0]
    np.testing.assert_allclose(x[:, 0].numpy(), want, rtol=1e-5, atol=1e-5)


# --- problems -------------------------------------------------------------------------------
# value_and_grad against autograd, for every problem of the ensemble: test_task_conformance
def test_problem_minima() -> None:
    ps = {p.name: p for p in build_problems()}
    t = lambda *v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    for name, xstar in (("rosenbrock", t(1, 1)), ("beale", t(3, 0.5)), ("booth", t(1, 3)),
                        ("matyas", t(0, 0)), ("styblinski_tang", t(-2.903534, -2.903534))):
        assert abs(float(ps[name].f(xstar)) - ps[name].f_star) < 1e-9, name
    # the numerically found minima agree with L-BFGS from a different start
    for name in ("log_sum_exp", "logistic_regression"):
        p = ps[name]
        x = torch.full((p.dim,), 0.7, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([x], lr=1, max_iter=500, tolerance_grad=1e-14,
                                tolerance_change=1e-16, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            v = p.f(x)
            v.backward()
            return v

        opt.step(closure)
        assert abs(float(p.f(x.detach())) - p.f_star) < 1e-9, name
        assert p.f_star <= float(p.f(torch.zeros(p.dim, dtype=torch.float64)))


def test_normalised_score() -> None:
    f0 = torch.tensor([101.0, 101.0, 101.0, 101.0], dtype=torch.float64)
    f = torch.tensor([1.1, 1.0 + 1e-4, 500.0, math.nan], dtype=torch.float64)
    s = normalised_score(f0, f, 1.0)
    # gap 100 -> 0.1 is 3 orders of magnitude: 3/6; 100 -> 1e-4 is 6: 1; worse: 0; NaN: 0
    torch.testing.assert_close(s, torch.tensor([3 / ORDERS, 1.0, 0.0, 0.0], dtype=torch.float64), rtol=1e-9, atol=1e-9)


def _fused_block_case_check(n: int, cin: int, c: int, hw: int, gammas: list[float], ints: bool,
                            seed: int) -> None:
    from searchlab.tasks.layers import conv_bn_relu_pool

    gen = torch.Generator().manual_seed(seed)
    d = dict(dtype=torch.float64)
    if ints:  # integer inputs and weights: exact ties inside pooling windows are common
        x = torch.randint(-1, 2, (n, cin, hw, hw), generator=gen).to(torch.float64)
        w = torch.randint(-1, 2, (c, cin, 3, 3), generator=gen).to(torch.float64)
    else:
        x = torch.randn(n, cin, hw, hw, generator=gen, **d)
        w = torch.randn(c, cin, 3, 3, generator=gen, **d)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w.requires_grad_(True)
    b = torch.randn(c, generator=gen, **d).requires_grad_(True)
    g = torch.tensor(gammas[:c], **d).requires_grad_(True)
    be = torch.randn(c, generator=gen, **d).requires_grad_(True)
    rm, rv = torch.zeros(c, **d), torch.ones(c, **d)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    out = conv_bn_relu_pool(x, w, b, g, be, rm, rv, train=True)
    ref = F.max_pool2d(F.relu(F.batch_norm(F.conv2d(x, w, b, padding=1), rm_ref, rv_ref, g, be,
                                           training=True)), 2)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close((rm, rv), (rm_ref, rv_ref), rtol=1e-10, atol=1e-10)
    dout = torch.randn(out.shape, generator=gen, **d)
    ours = torch.autograd.grad(out, (x, w, b, g, be), dout)
    theirs = torch.autograd.grad(ref, (x, w, b, g, be), dout)
    for a, t in zip(ours[2:], theirs[2:]):  # bias, gamma, beta: sums, blind to routing
        torch.testing.assert_close(a, t, rtol=1e-7, atol=1e-7)
    # x and w depend on which element of a pooling window gets the gradient: both take
    # the first maximum, ours of z, the reference of its rounded batch-norm outputs; an
    # ulp of rounding (in the convolution or the batch norm) can make or split a tie.
    # Where the choices differ, the two elements must tie in (sign-flipped) z up to
    # rounding; only then is a difference allowed.
    with torch.no_grad():
        z = F.conv2d(x, w, b, padding=1)
        flip = torch.where(g >= 0, 1.0, -1.0).to(z.dtype).view(1, -1, 1, 1)
        pre = F.batch_norm(z, None, None, g, be, training=True)
        _, idx_ref = F.max_pool2d_with_indices(F.relu(pre), 2)
        _, idx_ours = F.max_pool2d_with_indices(z * flip, 2)
        live = out > 0  # elsewhere the ReLU stops the gradient whichever element is chosen
        flat = (z * flip).flatten(2)
        differ = live & (idx_ref != idx_ours)
        torch.testing.assert_close(flat.gather(2, idx_ref.flatten(2))[differ.flatten(2)],
                                   flat.gather(2, idx_ours.flatten(2))[differ.flatten(2)],
                                   rtol=1e-12, atol=1e-12)
    if not bool(differ.any()):
        for a, t in zip(ours[:2], theirs[:2]):
            torch.testing.assert_close(a, t, rtol=1e-7, atol=1e-7)


def test_fused_block_property_random_shapes_signs_and_ties() -> None:
    """Hypothesis: shapes, batch-norm weights of either sign and integer inputs (exact ties
    in pooling windows, constant channels) against the torch.nn.functional composition."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    nonzero = st.one_of(st.floats(0.01, 3.0), st.floats(-3.0, -0.01))

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(n=st.integers(1, 3), cin=st.integers(1, 3), c=st.integers(1, 4),
           hw=st.sampled_from([2, 4, 6]), gammas=st.lists(nonzero, min_size=4, max_size=4),
           ints=st.booleans(), seed=st.integers(0, 2**31 - 1))
    def check(n: int, cin: int, c: int, hw: int, gammas: list[float], ints: bool, seed: int) -> None:
        _fused_block_case_check(n, cin, c, hw, gammas, ints, seed)

    check()
