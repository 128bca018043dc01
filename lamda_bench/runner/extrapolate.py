"""From records and event logs at a few probe depths to the record at the target depth, or a
one-line reason why not (``NotCertified``). Exact arithmetic (``Fraction``) throughout.

* A record field (a number, or a list or dict of them) must be affine in depth: the line through
  the first two probes must give every other probe to the byte; it is then evaluated at the
  target. Anything else that changes with depth is refused.
* A peak is a maximum over the step's live-bytes events, never a line through peaks. The events
  of each probe are aligned: per phase, the events before the first block, the first block
  visited, the blocks between, the last block visited, and the events after. Each aligned event
  must be affine: outside the middle blocks in the depth ``d``; the ``j``-th event of the middle
  block visited ``t``-th in ``t`` and ``d`` (a + b t + c d), fitted on three points and checked
  on every other (six middle visits at depths 3, 4, 5). At the target depth each aligned event's
  largest value is at the first or the last middle block, and the peak is the largest of them (the
  first in step order among equals, as the tracker keeps it); its breakdown by category and the
  autocast copies there are extrapolated the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable


class NotCertified(Exception):
    """The probes do not certify the extrapolation; the message says which figure and why."""


# ---- record fields ---------------------------------------------------------------------


def line(depths: list[int], values: list[int], target: int, what: str) -> int:
    d0, v0 = depths[0], values[0]
    slope = Fraction(values[1] - v0, depths[1] - d0)
    for d, v in zip(depths[2:], values[2:]):
        if v0 + slope * (d - d0) != v:
            raise NotCertified(f"{what} is not affine in depth ({values} at depths {depths})")
    out = v0 + slope * (target - d0)
    if out.denominator != 1:
        raise NotCertified(f"{what}: the line through the probes is not an integer at depth {target}")
    return int(out)


def tree(values: list[Any], depths: list[int], target: int, path: str) -> Any:
    """Extrapolate one record value (dicts and lists recursively) to ``target``."""
    a = values[0]
    if isinstance(a, dict):
        if any(not isinstance(v, dict) or list(v) != list(a) for v in values):
            raise NotCertified(f"{path}: its keys change with depth")
        return {k: tree([v[k] for v in values], depths, target, f"{path}.{k}") for k in a}
    if isinstance(a, list):
        if any(not isinstance(v, list) or len(v) != len(a) for v in values):
            raise NotCertified(f"{path}: its length changes with depth")
        return [tree([v[i] for v in values], depths, target, f"{path}[{i}]") for i in range(len(a))]
    if all(type(v) is type(a) and v == a for v in values):
        return a
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return line(depths, values, target, path)
    raise NotCertified(f"{path} changes with depth and is not an integer ({values!r})")


# ---- events ----------------------------------------------------------------------------


@dataclass
class Aligned:
    """One aligned event: its place in the step and its event at each probe point
    (``(t, depth)`` for a block's event, ``(0, depth)`` outside blocks)."""

    order: tuple  # (phase run, region 0 before / 1 blocks / 2 after, j)
    phase: str | None
    in_block: bool
    points: dict[tuple[int, int], Any]  # -> events.Event
    log_of: dict[int, Any]  # depth -> EventLog (for corrected breakdowns)
    ascending: bool | None = None  # the phase visits the blocks 0, 1, ... (False: from the last)


def _runs(events: list) -> list[tuple[Any, list]]:
    runs: list[tuple[Any, list]] = []
    for e in events:
        if runs and runs[-1][0] == e.phase:
            runs[-1][1].append(e)
        else:
            runs.append((e.phase, [e]))
    return runs


def _split(events: list, depth: int, where: str) -> list[tuple]:
    """(before, [events of each block visited], after, ascending) per sweep over the blocks:
    a phase sweeps them once (forward, backward) or once per parameter group (an optimizer)."""
    marked = [i for i, e in enumerate(events) if e.block is not None]
    if not marked:
        return [(events, [], [], None)]
    order, starts = [], []
    for i in marked:
        if not order or order[-1] != events[i].block:
            order.append(events[i].block)
            starts.append(i)
    sweep = list(range(depth)) if order[0] == 0 else list(range(depth))[::-1]
    if len(order) % depth or order != sweep * (len(order) // depth):
        raise NotCertified(f"{where}: blocks visited in the order {order[:12]} at depth {depth}, not in sweeps")
    last = marked[-1]
    segments = [events[s:e] for s, e in zip(starts, starts[1:] + [last + 1])]
    sweeps = len(order) // depth
    out = []
    for k in range(sweeps):
        out.append((events[:starts[0]] if k == 0 else [], segments[k * depth:(k + 1) * depth],
                    events[last + 1:] if k == sweeps - 1 else [], order[0] == 0))
    return out


def align(logs: dict[int, Any], what: str) -> list[Aligned]:
    """The aligned events of one tracked step, from its log at each probe depth. The first and
    the last block a phase visits are aligned on their own (the first block's input needs no
    gradient; the last feeds the head), the blocks between them together."""
    split = {}
    for d, log in logs.items():
        split[d] = [(phase, *sweep) for phase, ev in _runs(log.events)
                    for sweep in _split(ev, d, f"{what}, phase {phase}")]
    depths = sorted(split)

    def shape(d):
        return [(p, len(pre), len(post), asc, len(segs[0]) if segs else 0, len(segs[-1]) if segs else 0)
                for p, pre, segs, post, asc in split[d]]

    for d in depths:
        if shape(d) != shape(depths[0]):
            raise NotCertified(f"{what}: the phases' events do not align between depths {depths[0]} and {d}")
    out: list[Aligned] = []
    for ri, (phase, pre0, segs0, post0, asc) in enumerate(split[depths[0]]):
        lengths = {len(s) for d in depths for s in split[d][ri][2][1:-1]}
        if len(lengths) > 1:
            raise NotCertified(f"{what}, phase {phase}: blocks log different numbers of events {sorted(lengths)}")
        regions = [(0, len(pre0), lambda d: split[d][ri][1])]
        if segs0:
            regions += [(1, len(segs0[0]), lambda d: split[d][ri][2][0]),
                        (3, len(segs0[-1]), lambda d: split[d][ri][2][-1])]
        regions.append((4, len(post0), lambda d: split[d][ri][3]))
        for region, count, events_at in regions:
            for j in range(count):
                pts = {(0, d): events_at(d)[j] for d in depths}
                out.append(Aligned((ri, region, j), phase, False, pts, logs, asc))
        for j in range(lengths.pop() if lengths else 0):
            pts = {(t, d): split[d][ri][2][t][j] for d in depths for t in range(1, d - 1)}
            out.append(Aligned((ri, 2, j), phase, True, pts, logs, asc))
    return out


def _plane(a: Aligned, value: Callable[[Any, int], int], what: str):
    """(f0, ft, fd) with value = f0 + ft t + fd d at every probe point, or NotCertified."""
    pts = {k: value(e, k[1]) for k, e in a.points.items()}
    depths = sorted({d for _, d in pts})
    d1, d2 = depths[0], depths[1]
    t0 = min(t for t, _ in pts)
    fd = Fraction(pts[(t0, d2)] - pts[(t0, d1)], d2 - d1)
    ft = Fraction(pts[(t0 + 1, d2)] - pts[(t0, d2)]) if a.in_block else Fraction(0)
    f0 = pts[(t0, d1)] - ft * t0 - fd * d1
    for (t, d), v in pts.items():
        if f0 + ft * t + fd * d != v:
            raise NotCertified(f"{what}: event {a.order} of phase {a.phase} is not affine in depth "
                               f"(at block {t} of {d}: {v})")
    return f0, ft, fd


def _at(plane, t: int, depth: int, what: str) -> int:
    f0, ft, fd = plane
    v = f0 + ft * t + fd * depth
    if v.denominator != 1:
        raise NotCertified(f"{what}: not an integer at depth {depth}")
    return int(v)


@dataclass
class StepAtDepth:
    live_bytes: int
    by_category: dict[str, int]
    copies_at_peak: int
    copies_peak: int
    phase_peaks: dict[str, int]
    phase_breakdowns: dict[str, dict[str, int]]  # the breakdown at each phase's peak (per-rank records)


def _breakdown(a: Aligned, t: int, target: int, what: str) -> dict[str, int]:
    """The bytes by category at aligned event ``a`` (block ``t``) at ``target``, corrected as the
    tracker corrects a peak snapshot, each category affine like the event itself."""
    corrected = {id(e): a.log_of[k[1]].corrected(e) for k, e in a.points.items()}
    cats0 = list(next(iter(corrected.values())))
    if any(list(c) != cats0 for c in corrected.values()):
        raise NotCertified(f"{what}: the peak's categories change with depth")
    planes = {cat: _plane(a, lambda e, d, cat=cat: corrected[id(e)][cat], f"{what} ({cat} at the peak)")
              for cat in cats0}
    return {cat: _at(p, t, target, what) for cat, p in planes.items()}


def step_at(logs: dict[int, Any], target: int, what: str) -> StepAtDepth:
    """The step's peak, its breakdown and its phase peaks (with theirs) at ``target``, from its
    probe logs. Among equal values the first event in step order wins, as the tracker keeps it."""
    events = align(logs, what)
    best = None  # (value, key, aligned, t, copies plane)
    phase_best: dict[str, tuple] = {}
    copies_peak = 0
    for a in events:
        live = _plane(a, lambda e, d: e.live, what)
        copies = _plane(a, lambda e, d: e.copies, f"{what} (autocast weight copies)")
        t = 0  # outside the middle blocks: depth only
        if a.in_block:  # the middle blocks visited 1 .. target-2: the largest at an end
            t = target - 2 if live[1] > 0 else 1
        value = _at(live, t, target, what)
        ends = (1, target - 2) if a.in_block else (0,)
        copies_peak = max(copies_peak, *(_at(copies, u, target, what) for u in ends))
        key = (a.order[0], a.order[1], t, a.order[2])
        if a.phase is not None:
            held = phase_best.get(a.phase)
            if held is None or value > held[0] or (value == held[0] and key < held[1]):
                phase_best[a.phase] = (value, key, a, t)
        if best is None or value > best[0] or (value == best[0] and key < best[1]):
            best = (value, key, a, t, copies)
    value, _, a, t, copies = best
    return StepAtDepth(value, _breakdown(a, t, target, what), _at(copies, t, target, what), copies_peak,
                       {phase: b[0] for phase, b in phase_best.items()},
                       {phase: _breakdown(b[2], b[3], target, f"{what}, phase {phase}")
                        for phase, b in phase_best.items()})


# ---- the module-boundary timeline ------------------------------------------------------------


def timeline_at(timelines: dict[int, list[dict]], block_span: Callable[[str | None], tuple[int, int] | None],
                target: int, what: str) -> list[dict]:
    """The instrumented step's module-boundary timeline (``live.LiveMemoryTracker.timeline``) at
    ``target``, every entry of every block, from the probes' timelines. Entries are aligned as
    events are (``align``); each one's live bytes and every category must be affine, and its
    phase, event and module name (block index aside) the same at every probe point.
    ``block_span``: where a module name writes its block index (``EventLog.block_span``)."""
    from .events import Event

    logs, templates = {}, {}
    for d, entries in timelines.items():
        events = []
        for i, x in enumerate(entries):
            span = block_span(x["module"])
            module = x["module"] if span is None else x["module"][:span[0]] + "{block}" + x["module"][span[1]:]
            events.append(Event(x["phase"], None if span is None else int(x["module"][span[0]:span[1]]),
                                x["live_bytes"], x["by_category"], 0, i, i))
            templates[d, i] = (x["phase"], x["event"], module)
        logs[d] = _Timeline(events)
    out = []
    for a in align(logs, what):
        (_, d0), e0 = next(iter(a.points.items()))
        phase, event, module = templates[d0, e0.at]
        for (t, d), e in a.points.items():
            if templates[d, e.at] != (phase, event, module) or list(e.cats) != list(e0.cats):
                raise NotCertified(f"{what}: timeline entry {a.order} differs between probe points")
        live = _plane(a, lambda e, d: e.live, f"{what} (timeline)")
        cats = {c: _plane(a, lambda e, d, c=c: e.cats[c], f"{what} (timeline, {c})") for c in e0.cats}
        for t in (range(1, target - 1) if a.in_block else (0,)):
            name = module if e0.block is None else module.replace("{block}", str(_target_block(a, t, target)))
            out.append(((a.order[0], a.order[1], t, a.order[2]),
                        {"phase": phase, "module": name, "event": event,
                         "live_bytes": _at(live, t, target, what),
                         "by_category": {c: _at(p, t, target, what) for c, p in cats.items()}}))
    out.sort(key=lambda kv: kv[0])
    return [x for _, x in out]


@dataclass
class _Timeline:
    events: list  # what ``align`` reads of an event log

    def corrected(self, e) -> dict[str, int]:
        return dict(e.cats)


def _target_block(a: Aligned, t: int, target: int) -> int:
    """The index at ``target`` of the block an entry of ``a`` belongs to: the same place in the
    sweep (the middle block visited ``t``-th, or the first or the last block visited)."""
    if a.order[1] == 2:
        return t if a.ascending else target - 1 - t
    first = a.order[1] == 1
    return (0 if first else target - 1) if a.ascending else (target - 1 if first else 0)
