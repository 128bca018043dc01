"""Imported once by the fork server (``forkserver.py``), never by the launcher itself: the
modules a cell would otherwise import on every start.

Imports only (then the heap is frozen, below): no tensor is created and no torch op runs here, so no thread pool exists when
the server forks, and CUDA is never initialised. transformers loads model classes lazily,
so the model modules of every workload family are named explicitly. A module that fails to
import is skipped (the cell then imports it itself and reports the error in its record).
"""

from __future__ import annotations

import gc
import importlib

MODULES = (
    "torch",
    "torch._subclasses.fake_tensor",
    "torch.utils.flop_counter",
    "torch.utils.checkpoint",
    "torch._subclasses.schema_check_mode",
    "torch.profiler._cupti_monitor",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "transformers.models.deberta_v2.modeling_deberta_v2",
    "transformers.models.bart.modeling_bart",
    "transformers.models.bert.modeling_bert",
    "peft",
    "peft.utils.transformers_weight_conversion",
    "lamda_bench.runner",
    "lamda_bench.model.fake",
    "lamda_bench.measure",
    "lamda_bench.methods",
    "lamda_bench.results.files",
)

loaded: list[str] = []
failed: dict[str, str] = {}
for _name in MODULES:
    try:
        importlib.import_module(_name)
        loaded.append(_name)
    except Exception as _e:  # noqa: BLE001 - a cell will meet (and record) the same error
        failed[_name] = f"{type(_e).__name__}: {_e}"

# Out of the cyclic collector's sight, in the server and so in every child it forks (see
# child.freeze_heap; frozen objects are also not touched by collections, so their pages stay
# shared with the server rather than copied on write).
gc.collect()
gc.freeze()
