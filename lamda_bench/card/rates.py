"""Each card's peak rates, from its datasheet: the step-time model's ceilings.

Dense figures only (vendors headline the 2:4-sparse ones, twice as large). ``bf16``/``fp16``:
tensor-core rate with fp32 accumulation, as torch's GEMMs accumulate (GeForce cards run half
rate there; their headline is fp16 accumulation). ``tf32``: tensor-core tf32 (torch uses it
for fp32 matmuls only when ``allow_tf32`` is set; off by default). ``fp32``: non-tensor fp32.
``bandwidth``: device memory, bytes/s. Names are ``fit/budgets.py``'s CARDS.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

T = 1e12


@dataclass(frozen=True)
class Rates:
    name: str
    bf16: float  # FLOP/s
    fp16: float
    tf32: float
    fp32: float
    bandwidth: float  # B/s
    source: str


class CardRateError(UserError):
    """A card with no rate entry (one line)."""


RATES = {r.name: r for r in (
    # H100 SXM5 80GB datasheet (nvidia.com/en-us/data-center/h100): BF16/FP16 1,979 TF sparse,
    # TF32 989 sparse, FP32 67 TF, 3.35 TB/s HBM3.
    Rates("H100-80GB", 989.4 * T, 989.4 * T, 494.7 * T, 66.9 * T, 3.35e12,
          "NVIDIA H100 SXM datasheet: 1979/2 bf16, 989/2 tf32, 67 fp32 TFLOP/s, 3.35 TB/s"),
    # H200 SXM datasheet (nvidia.com/en-us/data-center/h200): same compute as H100 SXM, 4.8 TB/s HBM3e.
    Rates("H200-141GB", 989.4 * T, 989.4 * T, 494.7 * T, 66.9 * T, 4.8e12,
          "NVIDIA H200 SXM datasheet: 1979/2 bf16, 989/2 tf32, 67 fp32 TFLOP/s, 4.8 TB/s"),
    # HGX B200 datasheet (nvidia.com/en-us/data-center/hgx): per GPU FP16/BF16 4.5 PF sparse,
    # TF32 2.2 PF sparse, FP32 75 TF, HBM3e 8 TB/s.
    Rates("B200", 2250 * T, 2250 * T, 1100 * T, 75 * T, 8.0e12,
          "NVIDIA HGX B200 datasheet per GPU: 4.5 PF/2 bf16, 2.2 PF/2 tf32, 75 TF fp32, 8 TB/s"),
    # A100 datasheet (nvidia.com/en-us/data-center/a100): BF16 312 TF, TF32 156, FP32 19.5;
    # 80GB SXM 2,039 GB/s, 40GB SXM 1,555 GB/s.
    Rates("A100-80GB", 312 * T, 312 * T, 156 * T, 19.5 * T, 2.039e12,
          "NVIDIA A100 datasheet (80GB SXM): 312 bf16, 156 tf32, 19.5 fp32 TFLOP/s, 2039 GB/s"),
    Rates("A100-40GB", 312 * T, 312 * T, 156 * T, 19.5 * T, 1.555e12,
          "NVIDIA A100 datasheet (40GB SXM): 312 bf16, 156 tf32, 19.5 fp32 TFLOP/s, 1555 GB/s"),
    # L40S datasheet: BF16/FP16 362.05 TF dense (733 sparse), TF32 183, FP32 91.6, 864 GB/s GDDR6.
    Rates("L40S-48GB", 362.05 * T, 362.05 * T, 183 * T, 91.6 * T, 864e9,
          "NVIDIA L40S datasheet: 733/2 bf16, 366/2 tf32, 91.6 fp32 TFLOP/s, 864 GB/s"),
    # RTX A6000 datasheet: tensor 309.7 TF sparse (154.8 dense) fp16/bf16, TF32 77.4 dense,
    # FP32 38.7, 768 GB/s GDDR6.
    Rates("A6000-48GB", 154.8 * T, 154.8 * T, 77.4 * T, 38.7 * T, 768e9,
          "NVIDIA RTX A6000 datasheet: 309.7/2 tensor, 77.4 tf32, 38.7 fp32 TFLOP/s, 768 GB/s"),
    # Ada whitepaper (ada-lovelace-architecture-whitepaper), RTX 4090: FP16/BF16 tensor with FP32
    # accumulate 165.2 TF dense (330.3 only with FP16 accumulate), TF32 82.6, FP32 82.6, 1008 GB/s.
    Rates("RTX4090-24GB", 165.2 * T, 165.2 * T, 82.6 * T, 82.6 * T, 1008e9,
          "NVIDIA Ada whitepaper, RTX 4090: 165.2 fp16/bf16 (fp32 acc.), 82.6 tf32, 82.6 fp32 TFLOP/s, 1008 GB/s"),
    # Ampere GA102 whitepaper, RTX 3090: FP16 tensor with FP32 accumulate 71 TF dense (142 with
    # FP16 accumulate), TF32 35.6, FP32 35.6, 936 GB/s.
    Rates("RTX3090-24GB", 71 * T, 71 * T, 35.6 * T, 35.6 * T, 936e9,
          "NVIDIA GA102 whitepaper, RTX 3090: 71 fp16/bf16 (fp32 acc.), 35.6 tf32, 35.6 fp32 TFLOP/s, 936 GB/s"),
    # RTX Blackwell whitepaper, RTX 5090: FP16/BF16 tensor with FP32 accumulate 209.5 TF dense,
    # TF32 104.8, FP32 104.8, 1792 GB/s GDDR7.
    Rates("RTX5090-32GB", 209.5 * T, 209.5 * T, 104.8 * T, 104.8 * T, 1792e9,
          "NVIDIA RTX Blackwell whitepaper, RTX 5090: 209.5 fp16/bf16 (fp32 acc.), 104.8 tf32, 104.8 fp32 TFLOP/s, "
          "1792 GB/s"),
    # NVIDIA A10 datasheet (AWS's A10G is its variant; AWS publishes no rates of its own):
    # BF16/FP16 125 TF dense (250 sparse), TF32 62.5, FP32 31.2, 600 GB/s.
    Rates("A10G-24GB", 125 * T, 125 * T, 62.5 * T, 31.2 * T, 600e9,
          "NVIDIA A10 datasheet (A10G: AWS's variant, no datasheet of its own): 250/2 bf16, 62.5 tf32, "
          "31.2 fp32 TFLOP/s, 600 GB/s"),
    # L4 datasheet: BF16/FP16 242 TF sparse (121 dense), TF32 60 dense, FP32 30.3, 300 GB/s.
    Rates("L4-24GB", 121 * T, 121 * T, 60 * T, 30.3 * T, 300e9,
          "NVIDIA L4 datasheet: 242/2 bf16, 120/2 tf32, 30.3 fp32 TFLOP/s, 300 GB/s"),
    # T4 datasheet: FP16 mixed-precision tensor 65 TF, FP32 8.1, 320 GB/s; Turing has no bf16
    # or tf32 tensor cores: bf16 and tf32 matmuls run at the fp32 rate.
    Rates("T4-16GB", 8.1 * T, 65 * T, 8.1 * T, 8.1 * T, 320e9,
          "NVIDIA T4 datasheet: 65 fp16 (mixed), 8.1 fp32 TFLOP/s, 320 GB/s; no bf16/tf32 tensor cores"),
    # AMD Instinct MI300X datasheet: BF16/FP16 1307.4 TF dense, TF32 653.7, FP32 (matrix) 163.4,
    # 5.3 TB/s HBM3.
    Rates("MI300X", 1307.4 * T, 1307.4 * T, 653.7 * T, 163.4 * T, 5.3e12,
          "AMD Instinct MI300X datasheet: 1307.4 bf16, 653.7 tf32, 163.4 fp32 TFLOP/s, 5.3 TB/s"),
)}


# The host link (activation offloading's copies, lamda_bench/model/offload.py): bytes/s per direction,
# the link's rate from the card's datasheet (PCIe x16 as the datasheet gives it, both directions summed
# there: halved here). A link rate, not a measured copy: pinned copies reach less of it.
_GEN5 = "PCIe Gen5 x16: 128 GB/s both directions, 64 GB/s each"
_GEN4 = "PCIe Gen4 x16: 64 GB/s both directions, 32 GB/s each"
HOST_LINK = {
    "H100-80GB": (64e9, "NVIDIA H100 SXM datasheet: " + _GEN5),
    "H200-141GB": (64e9, "NVIDIA H200 SXM datasheet: " + _GEN5),
    "B200": (64e9, "NVIDIA HGX B200 datasheet: " + _GEN5),
    "A100-80GB": (32e9, "NVIDIA A100 datasheet: " + _GEN4),
    "A100-40GB": (32e9, "NVIDIA A100 datasheet: " + _GEN4),
    "L40S-48GB": (32e9, "NVIDIA L40S datasheet: " + _GEN4),
    "A6000-48GB": (32e9, "NVIDIA RTX A6000 datasheet: " + _GEN4),
    "RTX4090-24GB": (32e9, "NVIDIA GeForce RTX 4090 specifications: " + _GEN4),
    "RTX3090-24GB": (32e9, "NVIDIA GeForce RTX 3090 specifications: " + _GEN4),
    "RTX5090-32GB": (64e9, "NVIDIA GeForce RTX 5090 specifications: " + _GEN5),
    "A10G-24GB": (32e9, "NVIDIA A10 datasheet (A10G: AWS's variant): " + _GEN4),
    "L4-24GB": (32e9, "NVIDIA L4 datasheet: " + _GEN4),
    "T4-16GB": (16e9, "NVIDIA T4 datasheet: PCIe Gen3 x16: 32 GB/s both directions, 16 GB/s each"),
    "MI300X": (64e9, "AMD Instinct MI300X datasheet: " + _GEN5),
}


def host_link_for(card: str) -> tuple[float, str] | None:
    """(bytes/s per direction, source) of the card's host link, or None for a card without an entry."""
    for name, entry in HOST_LINK.items():
        if name.lower() == str(card).strip().lower():
            return entry
    return None


def rates_for(card: str) -> Rates:
    """The card's rates by its CARDS name (case-insensitive); one line naming the known ones if none."""
    for name, rates in RATES.items():
        if name.lower() == str(card).strip().lower():
            return rates
    raise CardRateError(f"card {card!r} has no rate entry for the step-time model; known: {', '.join(RATES)}")


def matmul_rate(rates: Rates, dtype: str, allow_tf32: bool = False) -> float:
    """Peak FLOP/s of a matmul in ``dtype`` (fp32 on tensor cores only where tf32 is allowed)."""
    if dtype == "bfloat16":
        return rates.bf16
    if dtype == "float16":
        return rates.fp16
    if dtype == "float32":
        return rates.tf32 if allow_tf32 else rates.fp32
    return rates.fp32
