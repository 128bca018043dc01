"""The live-bytes event log of one tracked step, read by depth extrapolation (``extrapolate.py``).

An event is every change of the live tracker that can set a peak: (phase, block, live bytes,
bytes by category, autocast weight copies, the tracker's op counter). A run of registrations
with no storage freed between them, in one phase and one block, is one event: live bytes only
grow within such a run, so its last state is its maximum, and the count of events then grows
with the ops run, not with the parameters registered (the tracker's enter, a foreach op's list).

``block`` is the decoder block a change belongs to: that of the innermost module running, else
(the optimizer phase, the autograd engine's own work) that of a parameter, gradient or optimizer
state the op reads (``None`` when it reads several blocks', as a foreach optimizer op does), else the
block of the op before it in the phase; ``None`` outside blocks.
Reclassifications are logged, so a peak's breakdown is corrected as the tracker corrects its own.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._pytree import tree_flatten


@dataclass
class Event:
    phase: str | None
    block: int | None
    live: int
    cats: dict[str, int]
    copies: int  # autocast weight copies live
    at: int  # the tracker's op counter (what its peak snapshots store)
    seq: int  # order of this event's last update among events and reclassifications


def find_blocks(model: nn.Module, layers: int) -> tuple[str, nn.ModuleList] | None:
    """The one ModuleList of ``layers`` modules of one class (the decoder blocks), with its
    qualified name in ``model``; None when there is not exactly one."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == layers and len({type(b) for b in m}) == 1]
    return found[0] if len(found) == 1 else None


class EventLog:
    """Attach before entering the step's trackers (its op observer must run before the live
    tracker's); ``close`` after."""

    def __init__(self, model: nn.Module, trackers, optimizer, prefix: str) -> None:
        self.live = trackers.live
        self.scope = trackers.scope
        self.model = model
        self.optimizer = optimizer
        self.events: list[Event] = []
        self.reclassified: list[tuple[int, int, int, str, str]] = []  # (seq, created_at, nbytes, old, new)
        self._pattern = re.compile(re.escape(prefix) + r"\.(\d+)(?:\.|$)")
        self._block_of_name: dict[str | None, int | None] = {None: None}
        self._by_storage: dict[int, tuple[int, weakref.ref]] = {}  # id(storage) -> (block, the storage)
        self._seq = 0
        self._n = 0
        self._block: int | None = None
        self._phase: object = "<none yet>"
        self._map_storages()
        self.live.on_change = self._change
        self.live.on_reclassify = self._reclassify
        self.scope.ops.add(self._locate)

    def close(self) -> None:
        self.live.on_change = None
        self.live.on_reclassify = None
        self.scope.ops.remove(self._locate)

    # ---- where a change belongs ----------------------------------------------------------
    def block_of(self, name: str | None) -> int | None:
        if name not in self._block_of_name:
            m = self._pattern.match(name)
            self._block_of_name[name] = int(m.group(1)) if m else None
        return self._block_of_name[name]

    def block_span(self, name: str | None) -> tuple[int, int] | None:
        """Where in ``name`` its block index is written (the timeline's module names), or None."""
        m = self._pattern.match(name) if name is not None else None
        return m.span(1) if m else None

    def _map_storages(self) -> None:
        """Storage -> block for parameters, their gradients and optimizer state (refreshed at
        each phase start: gradients and state appear during the step). Each entry keeps a weak
        reference to its storage: a storage that dies (an optimizer's state tensor replaced each
        step, as Adafactor's ``RMS``) frees its id for a temporary, which must not inherit its block."""
        state = self.optimizer.state if self.optimizer is not None else {}
        for name, p in self.model.named_parameters():
            k = self.block_of(name)
            if k is None:
                continue
            tensors = [p, p.grad] + [v for v in state.get(p, {}).values() if isinstance(v, torch.Tensor)]
            for t in tensors:
                if isinstance(t, torch.Tensor):
                    st = t.untyped_storage()
                    self._by_storage[id(st)] = (k, weakref.ref(st))

    def _block_of_storage(self, t: torch.Tensor) -> int | None:
        st = t.untyped_storage()
        hit = self._by_storage.get(id(st))
        return hit[0] if hit is not None and hit[1]() is st else None

    def _locate(self, func, args, kwargs, out) -> None:
        name = self.scope.current()
        if name is not None:
            self._block = self.block_of(name)
            return
        blocks = {self._block_of_storage(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        blocks.discard(None)
        if len(blocks) == 1:
            self._block = blocks.pop()
        elif blocks:  # a foreach op over many blocks' tensors belongs to none of them
            self._block = None
        # else: the block of the op before (the loss after the head, an optimizer temporary's next op)

    # ---- the log --------------------------------------------------------------------------
    def _change(self) -> None:
        live = self.live
        n = live.device_storages  # paged state registers without a change: not counted
        phase = live._phase
        if phase != self._phase:  # a phase starts: its own event, outside any block
            self._phase = phase
            self._block = None
            self._map_storages()
            self._append(phase, n)
            return
        last = self.events[-1] if self.events else None
        if (last is not None and last.phase == phase and last.block == self._block and n == self._n + 1
                and live.live_bytes >= last.live):
            last.live, last.cats, last.copies, last.at = live.live_bytes, dict(live.current), live.weight_copies, live._ops
            last.seq = self._next()
            self._n = n
            return
        self._append(phase, n)

    def _append(self, phase, n: int) -> None:
        live = self.live
        self.events.append(Event(phase, self._block, live.live_bytes, dict(live.current), live.weight_copies,
                                 live._ops, self._next()))
        self._n = n

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _reclassify(self, rec, category: str) -> None:
        self.reclassified.append((self._next(), rec.created_at, rec.nbytes, rec.category, category))

    def corrected(self, e: Event) -> dict[str, int]:
        """The breakdown at ``e`` as the tracker reports a peak snapshot taken there: storages
        that changed category afterwards, and existed then, counted under their new category."""
        cats = dict(e.cats)
        for seq, created_at, nbytes, old, new in self.reclassified:
            if seq > e.seq and created_at <= e.at and old in cats:
                cats[old] -= nbytes
                cats[new] = cats.get(new, 0) + nbytes
        return cats

    def self_check(self) -> str | None:
        """None when the log reproduces the tracker's own peaks, else what differs."""
        live = self.live
        if not self.events:
            return "no events logged"
        best = max(range(len(self.events)), key=lambda i: (self.events[i].live, -i))
        e = self.events[best]
        if e.live != live.peak.live_bytes or self.corrected(e) != live.peak.by_category:
            return f"the event log's peak {e.live} B differs from the tracker's {live.peak.live_bytes} B"
        if e.copies != live.weight_copies_at_peak or max(x.copies for x in self.events) != live.weight_copies_peak:
            return "the event log's autocast weight copies differ from the tracker's"
        for phase, p in live.phase_peaks.items():
            mine = max((x.live for x in self.events if x.phase == phase), default=None)
            if mine != p.live_bytes:
                return f"the event log's {phase} peak {mine} B differs from the tracker's {p.live_bytes} B"
        return None
