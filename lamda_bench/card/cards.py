"""The cards a cell can stand for: memory as nvidia-smi reports it, the architecture (which
decides the hidden workspaces), and the memory a card shows beyond PyTorch's allocator.

One table, one entry per card, each figure with its source. ``fit --budget CARD`` and the
``card`` cell key read it; the step-time rates live beside it in ``rates.py``.

What a card shows at the worst moment of a step (``memory.device_peak``):

    device_peak = the allocator model's max reserved (hidden workspaces included, ``hidden.py``)
                  + the CUDA context and what the driver loads (``context_bytes``)

The context was measured on one card only (the H100 of ``reports/gpu/measured``: NVML used minus
``max_memory_reserved``); every other card takes the H100's figure and says so
(``context_measured = False``). A consumer card's bare context is smaller (public figures with
lazy module loading: 256-430 MiB, pytorch#107667, #109888), so there it overstates.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

MIB = 2**20

# NVML used minus CUDA max_memory_reserved, H100 80GB HBM3, driver 580.159.04, CUDA 13.0,
# torch 2.11.0+cu130, reports/gpu/measured: 1246.8125 MiB on every LLaMA2-7B cell whose method
# initialises without linear algebra on the device (LoRA r16/r64, VeRA, full: 9 cells), and
# 1342.8-1344.8 MiB where the init ran torch.linalg.svd on the device (LaMDA, PiSSA: 7 cells):
# cuSOLVER's handle and kernels, +96 MiB (LINALG_CONTEXT_BYTES). The bare-linear cells read
# 16 MiB less (fewer kernel modules loaded lazily); the transformer figure is the one used.
H100_CONTEXT_BYTES = int(1246.8125 * MIB)
LINALG_CONTEXT_BYTES = 96 * MIB
CONTEXT_SOURCE = ("NVML used minus CUDA max_memory_reserved on the H100 80GB HBM3 of reports/gpu/measured "
                  "(torch 2.11.0+cu130, CUDA 13.0): 1246.8125 MiB on the 9 LLaMA2-7B cells without device "
                  "linear algebra at init, +96 MiB (cuSOLVER) on the 7 whose init ran an SVD on the GPU")

_COMMON = "nvidia-smi total as commonly reported for this card; not measured by this project"
# Totals seen in public nvidia-smi outputs ("NNNNNMiB" after "/" in the Memory-Usage column;
# each figure below was found in several independent logs), not measured by this project.
_SEEN = "nvidia-smi Memory-Usage total in public logs of this card; not measured by this project"


@dataclass(frozen=True)
class Card:
    """A card by name: its total memory as nvidia-smi reports it (MiB) and where that is from,
    its compute capability (``sm90``...: the cuBLAS workspace size depends on it), and the
    memory it shows beyond the allocator (context), measured or assumed."""

    name: str
    total_mib: int
    source: str
    arch: str
    context_bytes: int = H100_CONTEXT_BYTES
    context_measured: bool = False

    @property
    def total_bytes(self) -> int:
        return self.total_mib * MIB


CARDS = {c.name.lower(): c for c in (
    Card("H100-80GB", 81559, "nvidia-smi total on the H100 80GB HBM3 that measured reports/gpu", "sm90",
         context_measured=True),
    Card("H200-141GB", 143771, _SEEN, "sm90"),  # H200 SXM 141 GB HBM3e: 143771MiB
    Card("B200", 183359, _SEEN, "sm100"),  # B200 180 GB HBM3e (1000 W SXM): 183359MiB
    Card("A100-80GB", 81920, _COMMON, "sm80"),
    Card("A100-40GB", 40960, _COMMON, "sm80"),
    Card("L40S-48GB", 46068, _SEEN, "sm89"),  # L40S (and A40) 48 GB GDDR6: 46068MiB
    Card("A6000-48GB", 49140, _SEEN, "sm86"),  # RTX A6000 48 GB GDDR6: 49140MiB
    Card("RTX4090-24GB", 24564, _COMMON, "sm89"),
    Card("RTX3090-24GB", 24576, _SEEN, "sm86"),  # GeForce RTX 3090 24 GB GDDR6X: 24576MiB
    Card("RTX5090-32GB", 32607, _SEEN, "sm120"),  # GeForce RTX 5090 32 GB GDDR7: 32607MiB
    Card("A10G-24GB", 23028, _SEEN, "sm86"),  # AWS g5 A10G 24 GB: 23028MiB
    Card("L4-24GB", 23034, _COMMON, "sm89"),
    Card("T4-16GB", 15360, _SEEN, "sm75"),  # T4 16 GB GDDR6: 15360MiB
    # MI300X 192 GB HBM3: rocm-smi "VRAM Total Memory (B)" in public logs is 205822885888 to
    # 206158430208 B (196288-196608 MiB) across hosts; the smallest is taken. Its context and
    # hipBLAS workspaces are not measured: the H100's context is assumed (hidden.py says which).
    Card("MI300X", 196288, "rocm-smi VRAM total in public logs, 196288-196608 MiB across hosts, the smallest "
                           "taken; not measured by this project", "gfx942"),
)}


class UnknownCard(UserError):
    """A card name not in the table (one line, with the known names)."""


def get_card(name: str, what: str = "card") -> Card:
    """The card named (case-insensitive), or a one-line UnknownCard with the known names."""
    card = CARDS.get(str(name).strip().lower())
    if card is None:
        from ..hints import did_you_mean

        names = [c.name for c in CARDS.values()]
        raise UnknownCard(f"{what} {name!r}: unknown card{did_you_mean(str(name), names)}; known cards: "
                          f"{', '.join(names)}")
    return card


def context_bytes(card: Card, linalg_at_init: bool) -> tuple[int, str]:
    """The memory the card shows beyond the allocator's reserved bytes, and what it stands on."""
    extra = LINALG_CONTEXT_BYTES if linalg_at_init else 0
    how = CONTEXT_SOURCE if card.context_measured else f"assumed equal to the H100's ({CONTEXT_SOURCE})"
    if extra:
        how += "; +96 MiB for the method's SVD at init"
    return card.context_bytes + extra, how
