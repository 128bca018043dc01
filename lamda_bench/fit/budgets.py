"""Memory budgets for ``lamda-bench fit``: sizes, named cards, and the margin policy.

A budget is either a size (``24GiB``, ``24GB``, ``81559MiB``, ``25769803776``) or a card name
(``H100-80GB``). Units are taken literally: GiB/MiB/KiB are powers of 2, GB/MB/KB powers of 10,
so ``24GB`` is 24e9 bytes (22.35 GiB), not 24 GiB; every answer prints the budget in bytes and
GiB so a mismatch shows.

The margin policy (one rule for every answer, recorded in ``fit.json``):

    fits  <=>  estimate memory.peak + margin <= budget

- ``workspace`` (always): the 64 MiB the CUDA caching allocator holds beyond every tensor the
  step creates (the cuBLAS/cuBLASLt workspaces). Measured on the H100: CUDA
  ``max_memory_allocated`` minus the estimate's peak was 64.0 MiB on 16 of 17 LLaMA2-7B cells and
  on all 4 bare-linear cells (``reports/gpu/agreement.md``).
- ``device`` (named cards only): device memory the driver and the CUDA context take outside
  PyTorch's allocator, which a card's nvidia-smi total includes. Measured on the H100 as NVML
  ``used`` minus ``max_memory_reserved``: 1231-1345 MiB over the 21 measured cells of
  ``reports/gpu/measured``; the largest is used, for every card (other cards' contexts differ).
  A plain size is taken as memory PyTorch may allocate, so no device margin is added.
- ``reserve`` (``--reserve``, default 0): extra room the user holds back, e.g. for the
  allocator's cached-but-unused blocks (``max_memory_reserved`` minus ``max_memory_allocated`` was
  0.5-2.3 GiB on the H100 cells), other processes, or a longer run.

Not covered: fragmentation beyond what the allocator can release and retry, and any memory the
estimate does not see (it follows the step's tensors exactly; see the agreement report).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from ..errors import UserError

MIB = 2**20
GIB = 2**30
WORKSPACE_BYTES = 64 * MIB
DEVICE_OVERHEAD_BYTES = 1345 * MIB
WORKSPACE_SOURCE = ("CUDA max_memory_allocated minus the estimate's peak on the H100: 64.0 MiB "
                    "(reports/gpu/agreement.md)")
DEVICE_OVERHEAD_SOURCE = ("NVML used minus CUDA max_memory_reserved on the H100: 1231-1345 MiB over 21 cells "
                          "(reports/gpu/measured), the largest taken")


@dataclass(frozen=True)
class Card:
    """A card by name: its total memory as nvidia-smi reports it (MiB), and where that is from."""

    name: str
    total_mib: int
    source: str


_COMMON = "nvidia-smi total as commonly reported for this card; not measured by this project"
# Totals seen in public nvidia-smi outputs ("NNNNNMiB" after "/" in the Memory-Usage column;
# each figure below was found in several independent logs), not measured by this project.
_SEEN = "nvidia-smi Memory-Usage total in public logs of this card; not measured by this project"
CARDS = {c.name.lower(): c for c in (
    Card("H100-80GB", 81559, "nvidia-smi total on the H100 80GB HBM3 that measured reports/gpu"),
    Card("H200-141GB", 143771, _SEEN),  # H200 SXM 141 GB HBM3e: 143771MiB
    Card("B200", 183359, _SEEN),  # B200 180 GB HBM3e (1000 W SXM): 183359MiB
    Card("A100-80GB", 81920, _COMMON),
    Card("A100-40GB", 40960, _COMMON),
    Card("L40S-48GB", 46068, _SEEN),  # L40S (and A40) 48 GB GDDR6: 46068MiB
    Card("A6000-48GB", 49140, _SEEN),  # RTX A6000 48 GB GDDR6: 49140MiB
    Card("RTX4090-24GB", 24564, _COMMON),
    Card("RTX3090-24GB", 24576, _SEEN),  # GeForce RTX 3090 24 GB GDDR6X: 24576MiB
    Card("RTX5090-32GB", 32607, _SEEN),  # GeForce RTX 5090 32 GB GDDR7: 32607MiB
    Card("A10G-24GB", 23028, _SEEN),  # AWS g5 A10G 24 GB: 23028MiB
    Card("L4-24GB", 23034, _COMMON),
    Card("T4-16GB", 15360, _SEEN),  # T4 16 GB GDDR6: 15360MiB
    # MI300X 192 GB HBM3: rocm-smi "VRAM Total Memory (B)" in public logs is 205822885888 to
    # 206158430208 B (196288-196608 MiB) across hosts; the smallest is taken. The device margin
    # (the CUDA context measured on the H100) is applied to it too: ROCm's own is not measured.
    Card("MI300X", 196288, "rocm-smi VRAM total in public logs, 196288-196608 MiB across hosts, the smallest "
                           "taken; not measured by this project (device margin: the H100's CUDA figure)"),
)}

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
    device: int = 0
    reserve: int = 0

    @property
    def margin(self) -> int:
        return self.workspace + self.device + self.reserve

    @property
    def usable(self) -> int:
        """The most an estimate's peak may be."""
        return self.bytes - self.margin

    def fits(self, peak: int) -> bool:
        return peak + self.margin <= self.bytes

    def policy(self) -> str:
        parts = [f"workspace {self.workspace} B"]
        if self.device:
            parts.append(f"device overhead {self.device} B")
        if self.reserve:
            parts.append(f"reserve {self.reserve} B")
        return f"estimate memory.peak + margin ({' + '.join(parts)}) <= budget {self.bytes} B"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(margin=self.margin, usable=self.usable, policy=self.policy(),
                 workspace_source=WORKSPACE_SOURCE,
                 device_source=DEVICE_OVERHEAD_SOURCE if self.device else None)
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


def parse_budget(text: str, reserve: int = 0) -> Budget:
    """A card name (``H100-80GB``, case-insensitive) or a size; must leave room above the margin."""
    card = CARDS.get(str(text).strip().lower())
    if card is None and _looks_like_card(text):
        from ..hints import did_you_mean

        names = [c.name for c in CARDS.values()]
        raise BudgetError(f"--budget {text!r}: unknown card{did_you_mean(text, names)}; known cards: "
                          f"{', '.join(names)}, or give a size (24GiB, 24GB, 81559MiB, bytes)")
    if card is not None:
        budget = Budget(text=text, bytes=card.total_mib * MIB, card=card.name, source=card.source,
                        device=DEVICE_OVERHEAD_BYTES, reserve=reserve)
    else:
        try:
            size = parse_size(text, "--budget")
        except BudgetError:
            if str(text).strip().startswith("-"):
                raise
            names = ", ".join(c.name for c in CARDS.values())
            raise BudgetError(f"--budget {text!r}: not a size (24GiB, 24GB, 81559MiB, bytes) "
                              f"nor a known card ({names})") from None
        budget = Budget(text=text, bytes=size, card=None, source="given as a size", reserve=reserve)
    if budget.usable <= 0:
        raise BudgetError(f"--budget {text!r}: {budget.bytes} B leaves nothing above the margin of "
                          f"{budget.margin} B")
    return budget
