"""Library messages that do not concern a lamda-bench user, dropped by name; nothing else.

bitsandbytes (0.50) logs, at import on a CPU with AVX512-BF16, "Failed to load CPU
gemm_4bit_forward from kernels-community: No module named 'kernels'": it tried an optional
kernel that the ``kernels`` package would download from the Hugging Face Hub, and uses its own
CPU implementation instead. lamda-bench never downloads anything, estimates run bitsandbytes'
fake kernels, and the import happens in every run (PEFT imports bitsandbytes when installed),
so a newcomer read "Failed" on every run that was fine.

The filter sits on that one logger and drops that one message only when the cause is the
missing ``kernels`` package; any other failure to load it, and every other warning of
bitsandbytes or any other library, still shows. ``install()`` runs when ``lamda_bench`` is
imported (before anything imports bitsandbytes: the CLI, the fork server, a spawned cell, a
Ray worker), costs only ``logging``, and is idempotent.
"""

from __future__ import annotations

import logging

BNB_CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"
OPTIONAL_PACKAGE = "kernels"


class _OptionalKernelsMissing(logging.Filter):
    """Drops bitsandbytes' notice that the optional Hub-kernels package is not installed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(BNB_KERNELS_MESSAGE):
            return True
        cause = record.args[0] if isinstance(record.args, tuple) and record.args else None
        missing = isinstance(cause, ModuleNotFoundError) and cause.name == OPTIONAL_PACKAGE
        return not missing


_FILTER = _OptionalKernelsMissing()


def install() -> None:
    """Attach the filter to bitsandbytes' CPU-ops logger (created here if not yet imported)."""
    logger = logging.getLogger(BNB_CPU_OPS_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
