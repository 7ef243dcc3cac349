"""Executors (ARCHITECTURE.md, rule 9): order, faults as values, time limits, reseeding, threads.

Conformance tests run over the local executors (``serial``, ``process``); Ray gets the
same checks in tests/test_ray.py (one cluster for all of them).  Injected faults come
from :mod:`searchlab.testing.faults`, importable by spawned workers.
"""

from __future__ import annotations

import functools
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from searchlab.testing import faults
from searchlab.executors import (EXECUTORS, Failure, ProcessExecutor, SerialExecutor, TaskFailed,
                                 item_seed, make_executor)

LOCAL = ["serial", "process"]


@pytest.fixture(scope="module")
def pool():
    """One 2-worker process pool shared by the tests that do not break it on purpose."""
    ex = ProcessExecutor(workers=2, timeout=None, retries=1)
    yield ex
    ex.close()


@pytest.fixture(params=LOCAL)
def executor(request, pool):
    if request.param == "process":
        return pool
    return SerialExecutor()


def as_value(item, failure: Failure):
    return ("FAILED", failure.status, failure.attempts, failure.message)


def test_registry_and_default_choice():
    assert {"serial", "process", "ray"} <= set(EXECUTORS.names())
    assert isinstance(make_executor(None, workers=1), SerialExecutor)
    ex = make_executor(None, workers=2)
    try:
        assert isinstance(ex, ProcessExecutor) and ex.workers == 2 and ex.threads == 1
    finally:
        ex.close()
    with pytest.raises(TypeError):
        make_executor("process", workers=2, no_such_option=1)   # unknown options are errors
    with pytest.raises(ValueError):
        make_executor("serial", workers=3)


def test_map_preserves_submission_order(executor):
    # later items finish first on a pool: results must still come back in item order
    items = [0.4, 0.3, 0.2, 0.1, 0.0, 0.05]
    out = executor.map(functools.partial(faults.sleep_then_echo), items)
    assert out == items
    assert executor.map(faults.square, []) == []
    assert executor.map(faults.square, iter(range(7))) == [x * x for x in range(7)]


def test_exception_becomes_error_with_traceback(executor):
    fn = faults.FaultInjector(faults.square, raise_on=frozenset({"2"}))
    out = executor.map(fn, [1, 2, 3], on_failure=as_value)
    assert out[0] == 1 and out[2] == 9
    tag, status, attempts, message = out[1]
    assert (tag, status, attempts) == ("FAILED", "error", 1)
    assert "Traceback" in message and "RuntimeError: injected failure on '2'" in message
    assert "faults.py" in message        # the worker's frames, not the executor's
    with pytest.raises(TaskFailed) as info:
        executor.map(fn, [2])
    assert info.value.failure.status == "error"


def test_imap_unordered_and_stream(executor):
    seen = dict(executor.imap_unordered(faults.square, range(9)))
    assert seen == {i: i * i for i in range(9)}
    with executor.stream(faults.square) as s:
        tickets = [s.submit(x) for x in (5, 6)]
        assert tickets == [0, 1] and s.pending == 2
        got = dict(s.next_completed() for _ in range(2))
        assert got == {0: 25, 1: 36} and s.pending == 0
        with pytest.raises(RuntimeError):
            s.next_completed()


def test_item_seed_is_process_independent():
    from searchlab.dsl import parse

    items = [3, "g*m", parse("exp(sign(g)*sign(m))*g"), (parse("g"), 7)]
    here = [item_seed(x) for x in items]
    code = ("from searchlab.executors import item_seed; from searchlab.dsl import parse; "
            "print([item_seed(x) for x in [3, 'g*m', parse('exp(sign(g)*sign(m))*g'), "
            "(parse('g'), 7)]])")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert str(here) == there
    assert len(set(here)) == len(here) and all(0 <= s < 2**63 for s in here)


def _reference_draws(item):
    """Independent reference: what fresh generators seeded from the item's seed give."""
    s = item_seed(item)
    return (random.Random(s).random(), float(np.random.RandomState(s % 2**32).random_sample()),
            float(torch.rand((), generator=torch.Generator().manual_seed(s))))


def test_workers_reseeded_per_item(executor):
    items = [11, 12, 11, 13, 12]
    out = executor.map(faults.probe, items)
    for item, o in zip(items, out):
        assert (o["py"], o["np"], o["torch"]) == pytest.approx(_reference_draws(item))


def test_serial_restores_the_callers_rng_state():
    random.seed(5)
    torch.manual_seed(5)
    expected = (random.random(), float(torch.rand(())))
    random.seed(5)
    torch.manual_seed(5)
    SerialExecutor().map(faults.probe, [1, 2])
    assert (random.random(), float(torch.rand(()))) == expected


def test_serial_without_item_seeding_leaves_the_global_rngs_alone():
    """``seed_items=False``: the function draws from the caller's streams (no reseeding),
    as a direct call would, and the draws continue the caller's sequence."""
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    direct = [faults.probe(i) for i in (1, 2)]
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    out = SerialExecutor(seed_items=False).map(faults.probe, [1, 2])
    assert [(o["py"], o["np"], o["torch"]) for o in out] == \
        [(o["py"], o["np"], o["torch"]) for o in direct]
    assert (out[0]["py"], out[0]["np"]) != pytest.approx(_reference_draws(1)[:2])


def test_one_torch_thread_per_worker_unless_configured(pool):
    assert {o["threads"] for o in pool.map(faults.probe, range(4))} == {1}
    with ProcessExecutor(workers=1, threads=2) as ex:
        assert ex.map(faults.probe, [0])[0]["threads"] == 2
    before = torch.get_num_threads()
    assert SerialExecutor(threads=1).map(faults.probe, [0])[0]["threads"] == 1
    assert torch.get_num_threads() == before


def test_process_pool_runs_in_parallel(pool):
    pool.map(faults.square, [1, 2])              # workers up
    t0 = time.perf_counter()
    out = pool.map(faults.sleep_then_echo, [1.0] * 4)
    elapsed = time.perf_counter() - t0
    assert out == [1.0] * 4
    assert elapsed < 3.5, f"4 x 1 s on 2 workers took {elapsed:.1f} s (serial would be 4 s)"
    pids = {o["pid"] for o in pool.map(faults.sleep_probe, [0, 1, 2, 3])}
    assert len(pids) == 2 and os.getpid() not in pids


@pytest.fixture
def faulty_pool(pool):
    """The shared pool with a time limit and retries set for one test (restored after)."""
    saved = pool.timeout, pool.retries
    yield pool
    pool.timeout, pool.retries = saved


def test_dead_worker_costs_only_its_item(faulty_pool):
    ex = faulty_pool
    ex.retries = 1
    fn = faults.FaultInjector(faults.square, crash=frozenset({"3", "6"}))   # os._exit
    out = ex.map(fn, range(8), on_failure=as_value)
    for i in (0, 1, 2, 4, 5, 7):
        assert out[i] == i * i
    for i in (3, 6):
        tag, status, attempts, message = out[i]
        assert (tag, status, attempts) == ("FAILED", "error", 2)    # 1 retry
        assert "worker process exited with code 13" in message
    # the pool is whole again and the search goes on
    assert ex.map(faults.square, range(4)) == [0, 1, 4, 9]
    assert len(ex._pool) == 2


def test_killed_and_segfaulted_workers(faulty_pool):
    ex = faulty_pool
    ex.retries = 0
    fn = faults.FaultInjector(faults.FaultInjector(faults.square, crash=frozenset({"1"}),
                                                   crash_how="sigkill"),
                              crash=frozenset({"2"}), crash_how="segv")
    out = ex.map(fn, [0, 1, 2, 3], on_failure=as_value)
    assert out[0] == 0 and out[3] == 9
    assert out[1][:3] == ("FAILED", "error", 1) and "SIGKILL" in out[1][3]   # like an OOM kill
    assert out[2][:3] == ("FAILED", "error", 1) and "SIGSEGV" in out[2][3]


def test_dead_worker_retried_then_succeeds(faulty_pool, tmp_path):
    ex = faulty_pool
    ex.retries = 1
    fn = faults.FaultInjector(faults.square, crash=frozenset({"4"}), crash_once_dir=str(tmp_path))
    assert ex.map(fn, range(6), on_failure=as_value) == [x * x for x in range(6)]
    assert os.listdir(tmp_path)                     # it did crash once


def test_hung_item_times_out_and_its_worker_is_replaced(faulty_pool):
    ex = faulty_pool
    ex.timeout = 2.0
    fn = faults.FaultInjector(faults.square, hang=frozenset({"2"}), hang_seconds=600)
    ex.map(faults.square, [0, 1])                   # start-up is not part of the limit
    t0 = time.perf_counter()
    out = ex.map(fn, range(6), on_failure=as_value)
    elapsed = time.perf_counter() - t0
    assert [out[i] for i in (0, 1, 3, 4, 5)] == [0, 1, 9, 16, 25]
    tag, status, attempts, message = out[2]
    assert (tag, status, attempts) == ("FAILED", "timeout", 1)   # timeouts are not retried
    assert "time limit of 2 s" in message
    assert 2.0 <= elapsed < 60
    assert ex.map(faults.square, [7, 8]) == [49, 64]


def test_closing_a_stream_abandons_unfinished_items(pool):
    s = pool.stream(faults.sleep_then_echo)
    s.submit(600.0)
    s.submit(0.0)
    assert s.next_completed() == (1, 0.0)
    t0 = time.perf_counter()
    s.close()                                       # kills the worker sleeping 600 s
    assert time.perf_counter() - t0 < 10
    assert pool.map(faults.square, [3]) == [9]      # a fresh stream works


def test_config_shorthands_build_the_right_executor():
    from searchlab.app import build_executor
    from searchlab.config import ConfigError, load_config

    cfg = load_config(["workers=3", "tracking=none"])
    assert cfg.executor.workers == 3
    ex = build_executor(cfg)              # serial with 3 workers: the process pool
    try:
        assert isinstance(ex, ProcessExecutor) and ex.workers == 3
    finally:
        ex.close()
    cfg = load_config(["executor=ray", "ray.address=auto", "workers=8", "tracking=none"])
    ex = build_executor(cfg)              # nothing starts before the first map
    assert type(ex).__name__ == "RayExecutor" and ex.address == "auto" and ex.workers == 8
    with pytest.raises(ConfigError, match="executor=ray"):
        load_config(["ray.address=auto", "tracking=none"])
    with pytest.raises(ConfigError, match="bad executor.options"):
        build_executor(load_config(["executor=process", "executor.options.nope=1",
                                    "tracking=none"]))
