"""Python's cyclic garbage collector during a tracked step: paused, then run at a fixed point.

Tensors held only by reference cycles (a custom ``autograd.Function`` that keeps its input on
``ctx``, hook closures that hold autograd nodes) are freed when the collector happens to run,
and that depends on how many objects the process allocated before: the same cell gave peaks
32 MiB apart from one run to the next, and through the launcher vs directly. So a tracked step
starts from a collected heap, runs with the collector off (what cycles hold stays held until
the step's end: the worst case, as if the collector never ran in between), and ends with one
collection inside the trackers, whose freed bytes are the record's ``info.cyclic_garbage_bytes``
(0 when nothing of the step was held by cycles only).
"""

from __future__ import annotations

import gc


class CyclicGarbage:
    """``with CyclicGarbage() as g: ... g.collect(live)``: the collector off inside, on after."""

    def __init__(self) -> None:
        self.bytes: int | None = None
        self._was_enabled = False

    def __enter__(self) -> "CyclicGarbage":
        gc.collect()  # earlier steps' cycles go now, not at a random point of this step
        self._was_enabled = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc) -> None:
        if self._was_enabled:
            gc.enable()

    def collect(self, live) -> int | None:
        """Run the collector now; the bytes the live tracker saw freed by it (None without one)."""
        before = live.live_bytes if live is not None else None
        gc.collect()
        if before is not None:
            self.bytes = before - live.live_bytes
        return self.bytes

