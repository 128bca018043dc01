"""CPU-kernel dropout priced as CUDA's: the time model's one rewrite of a traced op list (pure, no torch).

An estimate on a torch build that cannot fake CUDA tensors traces the CPU kernels
(``model/fake.py``, ``measure/cuda_kernels.py``); dropout is the one CPU decomposition whose
kernels differ from CUDA's in count and bytes (``cuda_dropout``).
"""

from __future__ import annotations

_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def cuda_dropout(ops: list[dict]) -> list[dict]:
    """The op list with each CPU-kernel dropout priced as CUDA's fused one.

    A trace on CPU kernels (a torch build that cannot fake CUDA tensors, ``model/fake.py``) runs
    ``aten::dropout`` as ``noise = empty_like(x).bernoulli_(1 - p); noise.div_(1 - p); x * noise``
    and its backward as ``grad * noise``; on CUDA it is one ``native_dropout`` kernel (reads x,
    writes the output and a bool mask) and one ``native_dropout_backward`` (reads grad and the
    mask, writes the grad): aten/src/ATen/native/Dropout.cpp ``is_fused_kernel_acceptable``
    (``measure/cuda_kernels.py`` says the same for the saved bytes). Matched by count: per
    ``bernoulli_`` call one ``div_`` of the noise and one ``mul`` reading twice the noise's bytes
    in the same phase; per dropout that runs backward (the forward calls, or the recomputed ones
    under checkpointing) one backward ``mul`` of that size. A trace on CUDA kernels has no
    ``bernoulli_`` and comes back unchanged."""
    out = [dict(op) for op in ops]
    added = []

    def take(pred, n: int) -> int:
        """Remove up to n calls of ops matching pred; how many were removed."""
        left = n
        for op in out:
            if left and pred(op) and op["count"] > 0:
                k = min(left, op["count"])
                op["count"] -= k
                left -= k
        return n - left

    noises = [op for op in out if op["name"] == "bernoulli_" and op["kind"] != "none"]
    backward_calls = {}
    for noise in noises:
        b, dtype, phase, n = noise["bytes_written"], noise["dtype"], noise["phase"], noise["count"]
        mask = b // _ITEMSIZE.get(dtype, 4)
        noise["count"] = 0
        take(lambda o: o["name"] == "div_" and o["phase"] == phase and o["dtype"] == dtype and o["bytes_written"] == b, n)
        n = take(lambda o: o["name"] == "mul" and o["phase"] == phase and o["dtype"] == dtype
                 and o["bytes_read"] == 2 * b and o["bytes_written"] == b, n)
        added.append({**noise, "name": "native_dropout", "count": n, "bytes_read": b, "bytes_written": b + mask})
        calls = backward_calls.setdefault((b, dtype), {"forward": 0, "backward": 0})
        calls["backward" if phase == "backward" else "forward"] += n
    for (b, dtype), calls in backward_calls.items():
        # the calls whose backward runs: the recomputed ones when checkpointing recomputes, else the forward ones
        n = calls["backward"] or calls["forward"]
        mask = b // _ITEMSIZE.get(dtype, 4)
        template = next(o for o in noises if o["bytes_written"] == b and o["dtype"] == dtype)
        n = take(lambda o: o["name"] == "mul" and o["phase"] == "backward" and o["dtype"] == dtype
                 and o["bytes_read"] == 2 * b and o["bytes_written"] == b, n)
        added.append({**template, "name": "native_dropout_backward", "phase": "backward", "count": n,
                      "bytes_read": b + mask, "bytes_written": b})
    return [op for op in out + added if op["count"] > 0]
