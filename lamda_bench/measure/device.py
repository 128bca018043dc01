"""Device-level memory figures: CUDA allocator peaks, NVML device memory, host RSS peak.

Every function returns ``None`` where the device has no such figure. CUDA is touched
only inside these functions (imported lazily): the parent process of a benchmark must
never initialise CUDA, only the per-cell child that calls them.
"""

from __future__ import annotations

import resource
import sys


def _cuda(device) -> "object | None":
    """torch.cuda if ``device`` is a CUDA device and CUDA is usable here, else None."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda


def warm_up_blas(device, dtype=None) -> None:
    """Run a small matmul forward and backward so cuBLAS/cuBLASLt create their workspaces
    (they live in the caching allocator) before peaks are reset. No-op off CUDA."""
    cuda = _cuda(device)
    if cuda is None:
        return
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(64, 64, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(64, 64, device=device, dtype=dtype, requires_grad=True)
    (a @ b).sum().backward()
    cuda.synchronize(device)


def reset_peaks(device) -> None:
    """Synchronize, then reset the allocator's peak statistics. No-op off CUDA."""
    cuda = _cuda(device)
    if cuda is None:
        return
    cuda.synchronize(device)
    cuda.reset_peak_memory_stats(device)


def cuda_peaks(device) -> dict[str, int | None]:
    """Allocator peaks since the last reset: ``cuda_max_allocated``, ``cuda_max_reserved``,
    ``cuda_max_active`` (bytes). All None off CUDA."""
    keys = {
        "cuda_max_allocated": "allocated_bytes.all.peak",
        "cuda_max_reserved": "reserved_bytes.all.peak",
        "cuda_max_active": "active_bytes.all.peak",
    }
    cuda = _cuda(device)
    if cuda is None:
        return dict.fromkeys(keys)
    cuda.synchronize(device)
    stats = cuda.memory_stats(device)
    return {k: int(stats[v]) if v in stats else None for k, v in keys.items()}


def nvml_used(device) -> int | None:
    """Device memory in use as NVML reports it (whole device, all processes, CUDA context
    included). None off CUDA or without pynvml (package nvidia-ml-py)."""
    cuda = _cuda(device)
    if cuda is None:
        return None
    try:
        import pynvml
    except ImportError:
        return None
    import torch

    index = torch.device(device).index
    index = cuda.current_device() if index is None else index
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def device_name(device) -> str | None:
    cuda = _cuda(device)
    if cuda is None:
        return None
    return cuda.get_device_name(device)


def driver_version() -> str | None:
    """NVIDIA driver version via NVML, None where unavailable (no init of CUDA)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def host_rss_peak() -> int | None:
    """Lifetime peak resident set size of this process in bytes (run one cell per process)."""
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux reports KiB


def host_rss_now() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def start_memory_history(device, max_entries: int = 100_000) -> bool:
    """Begin recording allocator events for the PyTorch memory visualizer; False off CUDA."""
    cuda = _cuda(device)
    if cuda is None:
        return False
    cuda.memory._record_memory_history(max_entries=max_entries)
    return True


def dump_memory_history(device, path: str) -> bool:
    """Write the recorded snapshot (pickle, open at pytorch.org/memory_viz) and stop recording."""
    cuda = _cuda(device)
    if cuda is None:
        return False
    cuda.memory._dump_snapshot(path)
    cuda.memory._record_memory_history(enabled=None)
    return True
