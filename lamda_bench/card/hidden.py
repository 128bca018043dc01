"""Allocations no traced tensor shows, per card architecture: they go through the caching
allocator (so they take segments and count in reserved memory) but no op output is theirs.

- **cuBLAS workspace**, one per (handle, stream): torch's ``CublasHandlePool.cpp``
  (``getChosenWorkspaceSize`` / ``parseChosenWorkspaceSize``): 32 MiB on sm90 and newer
  (Hopper, Blackwell), ``:4096:2:16:8`` = 4096 KiB x 2 + 16 KiB x 8 = 8,519,680 B on older
  cards (pytorch#95668 shows exactly that after one Linear). A training step holds two: the
  main thread's handle (forward, optimizer) and the autograd engine's device thread's
  (backward). Measured on the H100: CUDA ``max_memory_allocated`` was 64.0 MiB above the
  estimate's peak on 16 of 17 LLaMA2-7B cells and all 4 bare-linear cells
  (reports/gpu/agreement.md): two 32 MiB workspaces, and no separate cuBLASLt workspace in that
  figure. On other architectures the two-handle count is assumed, not measured.
- **ROCm (gfx942)**: hipBLASLt's default is larger (torch: 128 MiB on gfx94x for the
  hipBLAS workspace); the same two handles are assumed.

They are allocated before the first step (the harness warms the BLAS handles before resetting
the allocator's peaks, ``measure/device.py``), so the replay allocates them right after the
weights and the input batch.

Not modelled (said in ``info.allocator.not_modelled``): attention kernels' internal scratch
(FlashAttention-2 backward's fp32 ``dq_accum``, cuDNN's workspace), NCCL buffers (outside the
allocator; NVML sees them), cuFFT plans, and CUDA graphs' private pools.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cards import Card

MIB = 2**20
SM90_CUBLAS_WORKSPACE = 32 * MIB
PRE_SM90_CUBLAS_WORKSPACE = 4096 * 1024 * 2 + 16 * 1024 * 8  # 8,519,680 B
ROCM_GFX94_WORKSPACE = 128 * MIB
HANDLES = 2  # the main thread's and the autograd device thread's

NOT_MODELLED = (
    "attention kernels' internal scratch (FlashAttention backward's fp32 dq accumulator, cuDNN workspace)",
    "NCCL communication buffers (outside the allocator)",
    "CUDA graphs' private pools, multiple streams, record_stream",
    "allocations at model load and method init beyond the final weights (an SVD init's temporaries)",
)


@dataclass(frozen=True)
class Hidden:
    label: str
    nbytes: int
    source: str


def _generation(arch: str) -> int | None:
    return int(arch[2:]) if arch.startswith("sm") and arch[2:].isdigit() else None


def hidden_allocations(card: Card) -> list[Hidden]:
    """The BLAS workspaces the card's steps hold through the caching allocator."""
    sm = _generation(card.arch)
    if sm is None:  # ROCm
        size, why = ROCM_GFX94_WORKSPACE, "torch's hipBLAS default on gfx94x (128 MiB); assumed, not measured"
    elif sm >= 90:
        size = SM90_CUBLAS_WORKSPACE
        why = ("torch's cuBLAS default on sm90+ (32 MiB); measured on the H100 (64.0 MiB for two handles, "
               "reports/gpu/agreement.md)" if sm == 90 else "torch's cuBLAS default on sm90+ (32 MiB); assumed")
    else:
        size = PRE_SM90_CUBLAS_WORKSPACE
        why = "torch's cuBLAS default before sm90 (4096 KiB x 2 + 16 KiB x 8, pytorch#95668); two handles assumed"
    return [Hidden(f"cuBLAS workspace ({who})", size, why) for who in ("main thread", "autograd thread")]
