"""The step's allocation stream at the target depth, laid out from depth probes, so that an
extrapolated estimate replays the allocator over exactly the stream a full trace would give.

The caching allocator's reserved peak is not affine in depth (a block's small tensors fill 2 MiB
segments unevenly), so it cannot be fitted like a record field; the stream it is computed from
can be laid out instead. Each event of a probe's allocation log carries its decoder block
(``runner/events.py`` ``AllocTagger``). Per phase, the events split as the live-bytes events do
(``runner/extrapolate.py`` ``_split``): events before the blocks, one segment per block visited
(in sweeps: forward 0..d-1, backward d-1..0, the optimizer's foreach lists once per sweep), and
events after. A death names the storage it frees by where that storage was born: a segment of a
block at a block offset (-1, 0, +1) from the dying event's, or a place outside the blocks.

Certification, per answer, to the event:
- the middle blocks of the deepest probe (1, 2, 3 of 5) log the same events with the same
  references, so any of them stands for every middle block of the target;
- the stream laid out at depth 4 from the depth-5 probe equals the depth-4 probe's own stream
  (sizes, order, and which birth each death frees).
Anything else raises NotCertified and the estimate is traced in full.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..measure.alloc_log import BORN, DIED, PHASE, AllocationLog
from ..runner.extrapolate import NotCertified

LO, MID, HI = "lo", "mid", "hi"


@dataclass
class _Sweep:
    """One pass over the blocks: up (0 .. d-1) or down; ``shared``: it starts at the neighbour of
    the block the pass before it ended on (0, 1, .., d-1, d-2, .., 0: a list freed from its end right
    after it was made in block order), and so has no segment for that block."""

    pre: list[int]  # token indices
    segs: dict[int, list[int]]  # block -> token indices
    post: list[int]
    ascending: bool | None
    shared: bool = False

    def blocks(self, depth: int) -> range:
        if self.ascending:
            return range(1 if self.shared else 0, depth)
        return range(depth - 2 if self.shared else depth - 1, -1, -1)


def _runs(log: AllocationLog) -> list[list[int]]:
    runs: list[list[int]] = [[]]
    for i, e in enumerate(log.events):
        if e[0] == PHASE and (runs[-1] or len(runs) > 1):
            runs.append([])
        runs[-1].append(i)
    return runs


def _sweeps(log: AllocationLog, run: list[int], depth: int, where: str) -> list[_Sweep]:
    tags = log.tags
    marked = [i for i in run if tags[i] is not None]
    if not marked:
        return [_Sweep(list(run), {}, [], None)]
    order, starts = [], []
    pos = {i: n for n, i in enumerate(run)}
    for i in marked:
        if not order or order[-1] != tags[i]:
            order.append(tags[i])
            starts.append(pos[i])
    last = pos[marked[-1]]
    bounds = list(zip(starts, starts[1:] + [last + 1]))
    sweeps: list[_Sweep] = []
    i = 0
    while i < len(order):
        ended = None if not sweeps else (depth - 1 if sweeps[-1].ascending else 0)
        sweep = _Sweep([], {}, [], ascending=order[i] == 0 or (ended == 0 and order[i] == 1),
                       shared=ended is not None and abs(order[i] - ended) == 1)
        expected = list(sweep.blocks(depth))
        if order[i:i + len(expected)] != expected:
            raise NotCertified(f"{where}: allocations visit the blocks in the order {order[:12]} at depth {depth}, "
                               "not in sweeps")
        sweep.segs = {b: run[a:e] for b, (a, e) in zip(expected, bounds[i:i + len(expected)])}
        sweeps.append(sweep)
        i += len(expected)
    sweeps[0].pre, sweeps[-1].post = run[:starts[0]], run[last + 1:]
    return sweeps


class _Layout:
    """One probe's stream, split, with each birth's place and each token's description."""

    def __init__(self, log: AllocationLog, depth: int, what: str) -> None:
        if log.tags is None or len(log.tags) != len(log.events):
            raise NotCertified(f"{what}: the allocation log at depth {depth} carries no block tags")
        self.log, self.depth = log, depth
        self.runs = [_sweeps(log, run, depth, f"{what}, phase run {r}") for r, run in enumerate(_runs(log))]
        self.place: dict[int, tuple] = {}  # serial -> (run, sweep, region, block or None, position)
        self.where: dict[int, tuple] = {}  # token index -> (run, sweep, region, block or None, position)
        for r, sweeps in enumerate(self.runs):
            for k, sw in enumerate(sweeps):
                for region, blocks in (("pre", {None: sw.pre}), ("seg", sw.segs), ("post", {None: sw.post})):
                    for b, idx in blocks.items():
                        for p, i in enumerate(idx):
                            self.where[i] = (r, k, region, b, p)
                            e = log.events[i]
                            if e[0] == BORN:
                                self.place[e[1]] = (r, k, region, b, p)

    def kind(self, block: int) -> str:
        return LO if block == 0 else HI if block == self.depth - 1 else MID

    def describe(self, i: int) -> tuple:
        """Token ``i`` without its serial: what it is, and (a death) where the storage it frees was born."""
        e = self.log.events[i]
        if e[0] == PHASE:
            return ("phase", e[1])
        if e[0] == BORN:
            return ("born", e[2], self.log.existing.get(e[1]))
        at = self.place.get(e[1])
        if at is None:
            raise NotCertified(f"a death of a storage born before the step's log at depth {self.depth}")
        r, k, region, b, p = at
        if region != "seg":
            return ("died", "abs", r, k, region, p)
        here = self.where[i]
        if here[2] == "seg":
            delta = b - here[3]
            if abs(delta) <= 1:  # a neighbour's or its own: laid out by offset (``_lay_out``'s templates)
                return ("died", "rel", r, k, delta, p)
            if self.kind(b) == MID:
                raise NotCertified(f"a storage freed {abs(delta)} blocks from where it was born")
            return ("died", "end", r, k, self.kind(b), p)
        if self.kind(b) == MID:
            raise NotCertified("a middle block's storage freed outside the blocks")
        return ("died", "end", r, k, self.kind(b), p)


def _shape(lay: _Layout) -> list:
    return [[(len(sw.pre), len(sw.post), sw.ascending, sw.shared) for sw in sweeps] for sweeps in lay.runs]


def render(logs: dict[int, AllocationLog], target: int, what: str = "allocations") -> AllocationLog:
    """The allocation log at ``target`` from the probes' tagged logs (deepest probe's blocks as
    templates), certified as the module docstring says; or NotCertified."""
    depths = sorted(logs)
    if len(depths) < 2 or depths[-1] < 5:
        raise NotCertified(f"{what}: laying out a stream needs a probe of depth 5 or more and another")
    deep = _Layout(logs[depths[-1]], depths[-1], what)
    _check_middles(deep, what)
    for d in depths[:-1]:
        if d < 4:
            continue
        mine = _Layout(logs[d], d, what)
        if _shape(mine) != _shape(deep):
            raise NotCertified(f"{what}: the phases' allocations do not align between depths {d} and {deep.depth}")
        if _canonical(_lay_out(deep, d, what)) != _canonical(logs[d]):
            raise NotCertified(f"{what}: the stream laid out at depth {d} from depth {deep.depth} differs from "
                               f"the depth-{d} probe's own")
    return _lay_out(deep, target, what)


def _check_middles(lay: _Layout, what: str) -> None:
    """The middle blocks log the same events (kinds and sizes), and block 2, which stands for every
    middle block whose neighbours are middle blocks too, frees what block 1 and block 3 free
    wherever their references stay among the middle blocks."""
    for r, sweeps in enumerate(lay.runs):
        for k, sw in enumerate(sweeps):
            if not sw.segs:
                continue
            desc = {b: [lay.describe(i) for i in sw.segs[b]] for b in (1, 2, 3)}
            sizes = {b: [d[:2] if d[0] != "died" else ("died",) for d in desc[b]] for b in desc}
            if not sizes[1] == sizes[2] == sizes[3]:
                raise NotCertified(f"{what}: the middle blocks' allocations differ (phase run {r}, sweep {k})")
            for b, inner in ((1, (0, 1)), (3, (-1, 0))):
                for mine, theirs in zip(desc[2], desc[b]):
                    if theirs[:2] == ("died", "rel") and theirs[4] in inner and mine != theirs:
                        raise NotCertified(f"{what}: middle blocks 2 and {b} free different storages "
                                           f"(phase run {r}, sweep {k})")


def _lay_out(lay: _Layout, target: int, what: str) -> AllocationLog:
    """The stream at ``target``: the probe's events outside the blocks, and each block's segment
    from its template (``template``)."""
    out = AllocationLog()
    born: dict[tuple, int] = {}  # target place -> new serial
    src_log = lay.log

    def template(b: int) -> int:
        """The probe block laid out as target block ``b``: first, second, (middle), second to last,
        last, so that each block's neighbours are laid out from its template's neighbours."""
        if b in (0, 1):
            return b
        if b >= target - 2:
            return lay.depth - (target - b)
        return 2

    def emit(i: int, place: tuple, block: int | None) -> None:
        e = src_log.events[i]
        if e[0] == PHASE:
            out.events.append(e)
            return
        if e[0] == BORN:
            s = out._next
            out._next += 1
            out.events.append((BORN, s, e[2]))
            if e[1] in src_log.existing:
                out.existing[s] = src_log.existing[e[1]]
            born[place] = s
            return
        d = lay.describe(i)
        if d[1] == "abs":
            key = (d[2], d[3], d[4], None, d[5])
        elif d[1] == "end":
            key = (d[2], d[3], "seg", 0 if d[4] == LO else target - 1, d[5])
        else:
            key = (d[2], d[3], "seg", block + d[4], d[5])
        s = born.get(key)
        if s is None:
            raise NotCertified(f"{what}: at depth {target} a death frees a storage not yet born")
        out.events.append((DIED, s, 0))

    for r, sweeps in enumerate(lay.runs):
        for k, sw in enumerate(sweeps):
            for p, i in enumerate(sw.pre):
                emit(i, (r, k, "pre", None, p), None)
            if sw.segs:
                for b in sw.blocks(target):
                    for p, i in enumerate(sw.segs[template(b)]):
                        emit(i, (r, k, "seg", b, p), b)
            for p, i in enumerate(sw.post):
                emit(i, (r, k, "post", None, p), None)
    return out


def _canonical(log: AllocationLog) -> list[tuple]:
    """The stream without serial numbers: each death names the birth it frees by its order."""
    order: dict[int, int] = {}
    out = []
    for e in log.events:
        if e[0] == BORN:
            order[e[1]] = len(order)
            out.append((BORN, e[2], log.existing.get(e[1])))
        elif e[0] == DIED:
            out.append((DIED, order.get(e[1], -1)))
        else:
            out.append(e)
    return out
