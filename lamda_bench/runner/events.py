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
        self.alloc_tagger: "AllocTagger | None" = None  # a card's allocation log's tagger (set by step.py)
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
        if self.alloc_tagger is not None:
            self.alloc_tagger.close()

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


class AllocTagger:
    """Tags each event of the step's allocation log (``measure/alloc_log.py``) with its decoder
    block, for ``card/render.py``. An event inside a module belongs to that module's block (None
    outside the blocks). Outside every module, a birth belongs to the one block whose parameters,
    gradients or state its op reads (a foreach op over many blocks' tensors gives its k-th output
    the block of its first list's k-th tensor), else to the block of the op before it; a death, to
    the block its storage was born in (temporaries dropped after a foreach op, gradients set to
    None). An existing storage belongs to its parameter's block. Its op observer must run before
    the live tracker's: attach before entering the trackers, as the EventLog."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.block: int | None = None  # the op's, outside modules
        self.last: int | None = None  # the block of the phase's last event tagged with one
        self._list: list[int | None] | None = None
        self._k = 0
        log.scope.ops.add(self._locate)

    def close(self) -> None:
        self.log.scope.ops.remove(self._locate)

    def phase_started(self) -> None:
        self.block, self.last, self._list = None, None, None

    def _module(self) -> tuple[bool, int | None]:
        name = self.log.scope.current()
        return (name is not None, self.log.block_of(name) if name is not None else None)

    def _locate(self, func, args, kwargs, out) -> None:
        log = self.log
        self._list, self._k = None, 0
        if log.scope.current() is not None:
            return
        blocks = {log._block_of_storage(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        blocks.discard(None)
        if len(blocks) == 1:
            self.block = blocks.pop()
        elif blocks:
            self.block = None
            first = args[0] if args else None
            if "_foreach_" in str(func) and isinstance(first, (list, tuple)):
                self._list = [log._block_of_storage(t) if isinstance(t, torch.Tensor) else None for t in first]

    def _seen(self, tag: int | None) -> int | None:
        if tag is not None:
            self.last = tag
        return tag

    def tag_birth(self, tensor, existing: bool) -> int | None:
        if existing:
            return self.log._block_of_storage(tensor) if isinstance(tensor, torch.Tensor) else None
        inside, block = self._module()
        if inside:
            return self._seen(block)
        if self._list is not None and self._k < len(self._list):
            self._k += 1
            return self._seen(self._list[self._k - 1])
        return self._seen(self.block)

    def tag_death(self, birth_tag: int | None) -> int | None:
        """Inside a block: that block. Inside a module outside the blocks (the model's own forward
        between two blocks, the final norm): the block of the phase's last tagged event, for a
        block's storage (the previous block's output, freed once the next block returned). Outside
        every module: the op's block, else the block the storage was born in."""
        inside, block = self._module()
        if inside:
            if block is None and birth_tag is not None:
                return self.last
            return self._seen(block)
        return self._seen(self.block if self.block is not None else birth_tag)
