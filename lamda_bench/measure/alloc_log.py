"""The order in which a step's storages are born and die, with their exact sizes: the input of
the CUDA caching allocator's model (``lamda_bench/card``).

The live-bytes tracker (``live.py``) already sees every device storage come and go; when a log
is attached (``LiveMemoryTracker.alloc_log``) it tells it each birth and death as it happens.
Storages alive when the tracker entered (weights, the input batch, optimizer state, gradients)
are logged first, marked ``existing``, with their category: a replay of a whole run allocates
them where the run would (weights at load, optimizer state in the first step's optimizer phase).
Paged optimizer state lives outside the caching allocator and is never logged.

A depth probe also tags each event with the decoder block it belongs to (``tagger``, given by
``runner/events.py``), so that ``card/render.py`` can lay the stream out at the target depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BORN, DIED, PHASE = 0, 1, 2


@dataclass
class AllocationLog:
    """``events``: ``(BORN, serial, nbytes)``, ``(DIED, serial, 0)`` or ``(PHASE, name, 0)`` in
    order; ``existing``: serial -> category of the storages alive when tracking began;
    ``tags``: with a tagger, each event's block (None outside the blocks), parallel to ``events``."""

    events: list[tuple] = field(default_factory=list)
    existing: dict[int, str] = field(default_factory=dict)
    tags: list[int | None] | None = None
    tagger: Any = None  # runner/events.py AllocTagger: tag_birth(tensor, existing), tag_death(birth tag)
    closed: bool = False  # the tracker exited: deaths after it (weakref callbacks) are not the step's
    _next: int = 0
    _birth_tag: dict[int, int | None] = field(default_factory=dict)

    def born(self, nbytes: int, category: str, existing: bool = False, tensor: Any = None) -> int:
        serial = self._next
        self._next += 1
        if not self.closed:
            self.events.append((BORN, serial, nbytes))
            if existing:
                self.existing[serial] = category
            if self.tagger is not None:
                tag = self.tagger.tag_birth(tensor, existing)
                self._birth_tag[serial] = tag
                self._tag(tag)
        return serial

    def died(self, serial: int) -> None:
        if not self.closed:
            self.events.append((DIED, serial, 0))
            if self.tagger is not None:
                self._tag(self.tagger.tag_death(self._birth_tag.get(serial)))

    def phase(self, name: str) -> None:
        if not self.closed:
            self.events.append((PHASE, name, 0))
            if self.tagger is not None:
                self.tagger.phase_started()
                self._tag(None)

    def op_ended(self) -> None:
        """What runs next is no op's (a Python loop over parameters): the tagger forgets the last op."""
        if self.tagger is not None and not self.closed:
            self.tagger.phase_started()

    def _tag(self, tag: int | None) -> None:
        if self.tags is None:
            self.tags = [None] * (len(self.events) - 1)
        self.tags.append(tag)

    def close(self) -> None:
        """The step is over: nothing more is logged, and the tagger (which holds the step's model and
        trackers) is let go, as is the per-storage tag map."""
        self.closed = True
        self.tagger = None
        self._birth_tag = {}
