"""Library noise: bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community:
No module named 'kernels'" is dropped, and only that.

This machine's CPU has no AVX512-BF16, so bitsandbytes never tries the optional kernel here. The
subprocess tests make it try: a ``sitecustomize`` on PYTHONPATH makes
``bitsandbytes.functional.has_avx512bf16`` answer True as the module loads, so bitsandbytes' own
import code runs the branch that logs the message (the control test shows it does, without
lamda_bench). A stub ``kernels`` package whose ``get_kernel`` raises stands for a real failure,
which must still show.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lamda_bench import library_noise

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = library_noise.BNB_KERNELS_MESSAGE

FORCE_AVX512BF16 = '''
import importlib.abc, importlib.machinery, sys

class _Finder(importlib.abc.MetaPathFinder):
    """bitsandbytes.functional.has_avx512bf16 answers True, as on a CPU that has it."""
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module
        def exec_module(module):
            load(module)
            module.has_avx512bf16 = lambda: True
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Finder())
'''

SUITE = """
[suite]
name = "noise"
[defaults]
workload = "linear"
d_in = 32
batch = 1
seq = 8
device = "cpu"
mode = "measure"
steps = 1
warmup = 0
[[sweep]]
method = "lora"
r = 2
"""


def _captured(logger_name: str, exc: BaseException, text: str = MESSAGE + ": %s. Please ...") -> list[str]:
    """Log ``text % exc`` on ``logger_name`` as bitsandbytes does; return what reached a handler."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger(logger_name)
    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning(text, exc)
    finally:
        logger.removeHandler(handler)
    return seen


def test_the_missing_optional_package_is_dropped():
    library_noise.install()
    library_noise.install()  # idempotent
    assert logging.getLogger(library_noise.BNB_CPU_OPS_LOGGER).filters.count(library_noise._FILTER) == 1
    missing = ModuleNotFoundError("No module named 'kernels'", name="kernels")
    assert _captured(library_noise.BNB_CPU_OPS_LOGGER, missing) == []


def test_other_causes_and_other_messages_still_show():
    library_noise.install()
    other_module = ModuleNotFoundError("No module named 'huggingface_hub'", name="huggingface_hub")
    assert len(_captured(library_noise.BNB_CPU_OPS_LOGGER, other_module)) == 1
    assert len(_captured(library_noise.BNB_CPU_OPS_LOGGER, RuntimeError("kernel version 0.9"))) == 1
    assert len(_captured(library_noise.BNB_CPU_OPS_LOGGER, ValueError("x"), "int8 matmul fell back: %s")) == 1
    # the same words on another logger are not ours to drop
    missing = ModuleNotFoundError("No module named 'kernels'", name="kernels")
    assert len(_captured("bitsandbytes.backends.other", missing)) == 1


def _env(tmp_path: Path, stub_kernels: bool) -> dict[str, str]:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FORCE_AVX512BF16)
    if stub_kernels:
        (hook / "kernels").mkdir()
        (hook / "kernels" / "__init__.py").write_text(
            "def get_kernel(*args, **kwargs):\n    raise RuntimeError('hub unreachable')\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(ROOT)])
    return env


@pytest.mark.slow
def test_bitsandbytes_prints_it_without_lamda_bench(tmp_path):
    """Control: the hook really makes bitsandbytes log the line (else the next test proves nothing)."""
    pytest.importorskip("bitsandbytes")
    done = subprocess.run([sys.executable, "-c", "import bitsandbytes"], env=_env(tmp_path, False),
                          capture_output=True, text=True, timeout=300)
    assert f"{MESSAGE}: No module named 'kernels'" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stub_kernels", [False, True], ids=["kernels-missing", "kernels-fails"])
def test_a_run_is_quiet_about_it_and_still_shows_a_real_failure(tmp_path, stub_kernels):
    pytest.importorskip("bitsandbytes")
    suite = tmp_path / "noise.toml"
    suite.write_text(textwrap.dedent(SUITE))
    done = subprocess.run([sys.executable, "-m", "lamda_bench", "run", str(suite), "--out", str(tmp_path / "out"),
                           "--no-progress"], env=_env(tmp_path, stub_kernels), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    if stub_kernels:
        assert f"{MESSAGE}: hub unreachable" in done.stderr  # a real failure still shows
    else:
        assert MESSAGE not in done.stderr
        assert "1 ok" in done.stdout
