"""What a card shows for one cell: the step's allocations replayed through the caching
allocator's model (``allocator.py``) over the whole run, plus the hidden workspaces
(``hidden.py``) and the card's context (``cards.py``).

The run is rebuilt from the instrumented step's allocation log (``measure/alloc_log.py``):

1. the storages alive before the step, in the order the tracker met them (weights, then the input
   batch), as a run allocates them at load;
2. the hidden workspaces (the BLAS handles are warmed before the first step);
3. step 1: the step's births and deaths, with the optimizer state that existed before it born at
   the start of its optimizer phase (torch's optimizers create their state lazily, in the first
   ``step()``);
4. steps 2 .. W + 1 + S: the same births and deaths again, on the allocator as step 1 left it:
   where a step's freed blocks are reused is where fragmentation shows.

Every step replays the instrumented step's allocations (a method whose steps differ, LaMDA's
gradual freezing, is replayed at its instrumented step's shape; ``info.allocator`` says so).
A storage born in one step and alive at its end takes the place of the existing storage of the
same size that died in that step (Adafactor's replaced state), else it stays allocated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..measure.alloc_log import BORN, DIED, PHASE, AllocationLog
from .allocator import CachingAllocatorModel, SimulatedOutOfMemory, parse_settings
from .cards import Card, context_bytes, get_card
from .hidden import NOT_MODELLED, hidden_allocations

MODEL_VERSION = 1  # bump when a rule of the replay or a table entry changes what it predicts
DEFERRED = ("optimizer",)  # existing categories a run creates during its first step, not at load


@dataclass
class CardMemory:
    """The replay's answer for one cell on one card."""

    reserved_peak: int
    device_peak: int
    oom: bool
    info: dict = field(default_factory=dict)

    def memory_fields(self) -> dict:
        return {"reserved_peak": self.reserved_peak, "device_peak": self.device_peak}


def card_memory(log: AllocationLog, card_name: str, allocator: str, steps: int, linalg_at_init: bool,
                capacity: bool = True) -> CardMemory:
    """Replay ``steps`` steps of ``log`` on ``card_name`` with the allocator settings ``allocator``
    (PYTORCH_CUDA_ALLOC_CONF syntax). ``capacity`` limits the allocator to the card's memory less its
    context (the OOM retry then runs as torch's does); depth probes replay without it."""
    card = get_card(card_name)
    settings = parse_settings(allocator)
    context, context_source = context_bytes(card, linalg_at_init)
    limit = card.total_bytes - context if capacity else None
    model = CachingAllocatorModel(settings, capacity=limit)
    hidden = hidden_allocations(card)
    oom: SimulatedOutOfMemory | None = None
    replayed = 0
    try:
        replayed = _replay_run(model, log, hidden, steps)
    except SimulatedOutOfMemory as e:
        oom = e
    info = {
        "card": card.name,
        "settings": settings.to_dict(),
        "model_version": MODEL_VERSION,
        "steps_replayed": replayed,
        "steps_in_run": steps,
        "events_per_step": sum(1 for e in log.events if e[0] != PHASE) - len(log.existing),
        "hidden": [{"label": h.label, "bytes": h.nbytes, "source": h.source} for h in hidden],
        "context_bytes": context,
        "context_source": context_source,
        "capacity": limit,
        "alloc_retries": model.num_alloc_retries,
        "assumptions": [
            "every step replays the instrumented step's allocations, in the traced order",
            "existing storages are allocated in the order the tracker met them (weights, inputs), "
            "optimizer state at the start of step 1's optimizer phase",
            "one device, one stream",
        ],
        "not_modelled": list(NOT_MODELLED),
    }
    reserved = model.max_reserved
    if oom is not None:  # the peak is at least what the failed request needed on top of what was reserved
        reserved = max(reserved, oom.reserved + oom.alloc_size)
        info["oom"] = (f"does not fit: a {oom.nbytes}-byte allocation needed {oom.alloc_size} B more with "
                       f"{oom.reserved} B reserved, past the {limit} B the card leaves the allocator (its memory "
                       "less the context), after the allocator's release-and-retry; reserved_peak is that lower "
                       "bound")
    return CardMemory(reserved_peak=reserved, device_peak=reserved + context, oom=oom is not None, info=info)


def _replay_run(model: CachingAllocatorModel, log: AllocationLog, hidden, steps: int) -> int:
    """Drive ``model`` through the run; returns the number of steps replayed."""
    events = log.events
    existing = log.existing
    first = 0  # the step's own events start after the existing storages' births
    while first < len(events) and events[first][0] == BORN and events[first][1] in existing:
        first += 1
    deferred = [s for s in _born_order(events[:first]) if existing[s] in DEFERRED]
    sizes = {e[1]: e[2] for e in events[:first]}
    key = iter(range(1 << 62))
    holder: dict[int, int] = {}  # an existing storage's serial -> the allocator key that holds it now
    for serial in _born_order(events[:first]):
        if existing[serial] not in DEFERRED:
            holder[serial] = next(key)
            model.malloc(holder[serial], sizes[serial])
    for h in hidden:
        model.malloc(next(key), h.nbytes)
    body = events[first:]
    for step in range(1, steps + 1):
        live: dict[int, int] = {}  # serial born this step -> key
        born_size: dict[int, int] = {}
        died_existing: list[int] = []
        for kind, serial, nbytes in body:
            if kind == BORN:
                k = next(key)
                live[serial] = k
                born_size[serial] = nbytes
                model.malloc(k, nbytes)
            elif kind == DIED:
                if serial in live:
                    model.free(live.pop(serial))
                elif serial in holder:
                    model.free(holder.pop(serial))
                    died_existing.append(serial)
            elif serial == "optimizer" and step == 1:
                for s in deferred:
                    holder[s] = next(key)
                    model.malloc(holder[s], sizes[s])
        # survivors take the place of existing storages of the same size that died this step
        for serial, k in live.items():
            match = next((d for d in died_existing if sizes.get(d) == born_size[serial]), None)
            if match is not None:
                died_existing.remove(match)
                holder[match] = k
        if step == 1:  # deferred state whose step had no optimizer phase (none traced): allocate now
            for s in deferred:
                if s not in holder:
                    holder[s] = next(key)
                    model.malloc(holder[s], sizes[s])
    return steps


def _born_order(events) -> list[int]:
    return [e[1] for e in events if e[0] == BORN]
