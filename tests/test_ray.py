"""The Ray executor on a real local Ray cluster (``ray.init(num_cpus=2)``), one cluster for
the whole module: order, reseeding, threads, faults as values, a search end to end."""

from __future__ import annotations

import os
import time

import pytest

pytest.importorskip("ray")

from searchlab.testing import faults
from searchlab.executors import Failure, RayExecutor, SerialExecutor, item_seed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_ex():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ex = RayExecutor(workers=2, timeout=None, retries=1, object_store_mb=100)
    yield ex
    ex.close()


def as_value(item, failure: Failure):
    return ("FAILED", failure.status, failure.attempts, failure.message)


def test_local_cluster_on_loopback_and_order(ray_ex):
    import ray

    items = [0.6, 0.3, 0.0, 0.1]
    assert ray_ex.map(faults.sleep_then_echo, items) == items      # submission order
    assert ray.is_initialized()
    ctx = ray.get_runtime_context()
    assert ctx.gcs_address.startswith("127.0.0.1:"), ctx.gcs_address
    assert ray.cluster_resources().get("CPU") == 2
    assert ray_ex.map(faults.square, []) == []


def test_reseeded_and_one_thread_like_serial(ray_ex):
    items = [21, 22, 21]
    remote = ray_ex.map(faults.probe, items)
    local = SerialExecutor().map(faults.probe, items)
    for a, b in zip(remote, local):
        assert (a["py"], a["np"], a["torch"]) == (b["py"], b["np"], b["torch"])
        assert a["threads"] == 1 and a["pid"] != os.getpid()
    assert remote[0]["py"] == remote[2]["py"]


def test_faults_become_values(ray_ex):
    ray_ex.timeout = 3.0
    try:
        fn = faults.FaultInjector(faults.square, crash=frozenset({"3"}), hang=frozenset({"5"}),
                                  raise_on=frozenset({"7"}), hang_seconds=600)
        t0 = time.perf_counter()
        out = ray_ex.map(fn, range(9), on_failure=as_value)
        assert time.perf_counter() - t0 < 120
    finally:
        ray_ex.timeout = None
    for i in (0, 1, 2, 4, 6, 8):
        assert out[i] == i * i
    assert out[3][:3] == ("FAILED", "error", 2) and "WorkerCrashedError" in out[3][3]
    assert out[5][:3] == ("FAILED", "timeout", 1) and "time limit of 3 s" in out[5][3]
    assert out[7][:3] == ("FAILED", "error", 1)
    assert "RuntimeError: injected failure on '7'" in out[7][3] and "Traceback" in out[7][3]
    assert ray_ex.map(faults.square, [4, 5]) == [16, 25]        # the cluster carries on


def test_search_end_to_end_matches_serial(ray_ex):
    from searchlab.runner import run_search
    from searchlab.testing.toy import ToyEvaluator

    ev = ToyEvaluator()
    a = run_search("evolution", ev, budget=24, batch_size=4, seed=3, executor=ray_ex)
    b = run_search("evolution", ev, budget=24, batch_size=4, seed=3, executor=SerialExecutor())
    assert a.unique == 24 and len(set(a.keys)) == 24
    assert a.keys == b.keys
    assert [r.reward for r in a.results] == [r.reward for r in b.results]
    assert a.best_rule == b.best_rule


def test_close_shuts_down_only_what_it_started(ray_ex):
    import ray

    ray_ex.map(faults.square, [1])          # ray_ex started the cluster
    guest = RayExecutor(workers=1)
    assert guest.map(faults.square, [3]) == [9]
    guest.close()
    assert ray.is_initialized()             # the guest did not start it: still up
    assert item_seed(1) == item_seed(1)
