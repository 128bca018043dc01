"""Memory budgets for ``lamda-bench fit``: sizes, named cards, and the margin policy.

A budget is either a size (``24GiB``, ``24GB``, ``81559MiB``, ``25769803776``) or a card name
(``H100-80GB``). Units are taken literally: GiB/MiB/KiB are powers of 2, GB/MB/KB powers of 10,
so ``24GB`` is 24e9 bytes (22.35 GiB), not 24 GiB; every answer prints the budget in bytes and
GiB so a mismatch shows.

Two policies, one per answer, recorded in ``fit.json``:

- **On a card's terms** (a card budget, or a size with ``--card``): each probe replays the CUDA
  caching allocator's model over its run (``lamda_bench/card``: cell keys ``card`` and
  ``allocator``), and

      fits  <=>  memory.device_peak + reserve <= budget

  where ``device_peak`` is the predicted ``max_memory_reserved`` (the BLAS workspaces included)
  plus the card's context: what nvidia-smi would show at the step's worst moment. No flat margin.
  On the 17 LLaMA2-7B cells measured on the H100 the device peak was within 1.9% of NVML's used
  memory (docs/card-memory.md).
- **A plain size** is taken as memory PyTorch may allocate:

      fits  <=>  estimate memory.peak + workspace + reserve <= budget

  ``workspace``: the 64 MiB the CUDA caching allocator holds beyond every tensor the step creates
  (the cuBLAS workspaces), measured on the H100 as CUDA ``max_memory_allocated`` minus the
  estimate's peak (``reports/gpu/agreement.md``). The allocator's cached blocks (0.5-2.3 GiB on the
  H100 cells) are not counted: name a card (``--card``) to have them modelled.

``reserve`` (``--reserve``, default 0): extra room the user holds back (other processes, a longer run).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from ..errors import UserError

MIB = 2**20
GIB = 2**30
WORKSPACE_BYTES = 64 * MIB
WORKSPACE_SOURCE = ("CUDA max_memory_allocated minus the estimate's peak on the H100: 64.0 MiB "
                    "(reports/gpu/agreement.md)")


from ..card.cards import CARDS, Card  # noqa: F401 - the card table, one place (lamda_bench/card)

_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


class BudgetError(UserError):
    """A budget or size that cannot be read (one line)."""


@dataclass(frozen=True)
class Budget:
    """What the planner fits against: ``bytes`` of device memory, less ``margin()``."""

    text: str
    bytes: int
    card: str | None
    source: str
    workspace: int = WORKSPACE_BYTES
    reserve: int = 0
    on_card: str | None = None  # the card's terms: each probe's memory.device_peak (lamda_bench/card), no flat margin
    allocator: str = "default"  # with on_card: the caching allocator's settings the probes replay

    @property
    def margin(self) -> int:
        return self.workspace + self.reserve

    @property
    def usable(self) -> int:
        """The most an estimate's peak may be."""
        return self.bytes - self.margin

    def fits(self, peak: int) -> bool:
        return peak + self.margin <= self.bytes

    def policy(self) -> str:
        if self.on_card:
            held = f" + reserve {self.reserve} B" if self.reserve else ""
            return (f"estimate memory.device_peak on {self.on_card} (the caching allocator's reserved peak, its "
                    f"BLAS workspaces included, replayed with allocator settings {self.allocator!r}, + the card's "
                    f"context){held} <= budget {self.bytes} B")
        parts = [f"workspace {self.workspace} B"]
        if self.reserve:
            parts.append(f"reserve {self.reserve} B")
        return f"estimate memory.peak + margin ({' + '.join(parts)}) <= budget {self.bytes} B"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(margin=self.margin, usable=self.usable, policy=self.policy(),
                 workspace_source=WORKSPACE_SOURCE if self.workspace else None)
        return d


def _looks_like_card(text: str) -> bool:
    """A name rather than a size: it does not start with a number or a sign."""
    return bool(re.match(r"^\s*[A-Za-z]", str(text))) and not _SIZE_RE.match(str(text))


def parse_size(text: str, what: str = "size") -> int:
    """'24GiB' -> 25769803776; '24GB' -> 24000000000; '1024' -> 1024 bytes."""
    if str(text).strip().startswith("-"):
        raise BudgetError(f"{what} {text!r}: a size cannot be negative; expected a size like 24GiB, 24GB, "
                          "81559MiB or a number of bytes")
    match = _SIZE_RE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise BudgetError(f"{what} {text!r}: expected a size like 24GiB, 24GB, 81559MiB or a number of bytes"
                          f" (GiB/MiB = 2^30/2^20 bytes, GB/MB = 10^9/10^6 bytes)")
    value = float(match.group(1)) * _UNITS[unit]
    return int(value)


def parse_budget(text: str, reserve: int = 0, card_terms: str | None = None, allocator: str = "default") -> Budget:
    """A card name (``H100-80GB``, case-insensitive) or a size; must leave room above the margin.

    A card is taken on its own terms (``on_card``): each probe's ``memory.device_peak``, the
    allocator model's reserved peak plus the card's context, against the card's total, no flat
    margin. A size is taken as memory PyTorch may allocate (tensor peak + the 64 MiB workspace
    margin), unless ``card_terms`` names the card whose allocator and context to assume (``--card``)."""
    if card_terms is not None:
        card_terms = CARDS[card_terms.strip().lower()].name if card_terms.strip().lower() in CARDS else None
    card = CARDS.get(str(text).strip().lower())
    if card is None and _looks_like_card(text):
        from ..hints import did_you_mean

        names = [c.name for c in CARDS.values()]
        raise BudgetError(f"--budget {text!r}: unknown card{did_you_mean(text, names)}; known cards: "
                          f"{', '.join(names)}, or give a size (24GiB, 24GB, 81559MiB, bytes)")
    if card is not None:
        budget = Budget(text=text, bytes=card.total_mib * MIB, card=card.name, source=card.source,
                        workspace=0, reserve=reserve, on_card=card.name, allocator=allocator)
    else:
        try:
            size = parse_size(text, "--budget")
        except BudgetError:
            if str(text).strip().startswith("-"):
                raise
            names = ", ".join(c.name for c in CARDS.values())
            raise BudgetError(f"--budget {text!r}: not a size (24GiB, 24GB, 81559MiB, bytes) "
                              f"nor a known card ({names})") from None
        if card_terms is not None:
            budget = Budget(text=text, bytes=size, card=None, source=f"given as a size; {card_terms}'s allocator, "
                            "workspaces and context assumed", workspace=0, reserve=reserve, on_card=card_terms,
                            allocator=allocator)
        else:
            budget = Budget(text=text, bytes=size, card=None, source="given as a size", reserve=reserve)
    if budget.usable <= 0:
        raise BudgetError(f"--budget {text!r}: {budget.bytes} B leaves nothing above the margin of "
                          f"{budget.margin} B")
    return budget
