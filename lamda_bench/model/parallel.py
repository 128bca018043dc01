"""Data-parallel cells (``world_size``, ``parallel``): rank 0 of an FSDP2 job on a fake process group.

An estimate with ``parallel = "fsdp2"`` runs the cell's usual step as rank 0 of a
``world_size``-rank job that exists nowhere: ``dist.init_process_group("fake", ...)`` with
torch's ``FakeStore`` gives collectives that return at once without moving data, so the
step's bytes are rank 0's own. The order matters (found on torch 2.13):

1. the process group and the device mesh are created before entering ``FakeTensorMode``;
2. the model is built on meta with the method applied there and made fake in its target
   dtype (``fake.to_fake``; never ``.to()`` under the fake mode);
3. inside the fake mode, each transformer block (the model's ``_no_split_modules`` classes,
   as the HF Trainer / PEFT FSDP recipes' transformer auto-wrap policy picks them) and then
   the root are wrapped with ``fully_shard``; adapters are sharded with the block that holds
   them. Parameters become DTensors sharded on dim 0, each padded to ceil(dim0 / W) rows.

What the live-bytes tracker sees of FSDP2 (``track_fsdp``): the sharded parameters (rank 0's
local shard) count as ``weights``; FSDP2 gathers a block's unsharded parameters into
per-parameter buffers whose storages it resizes in place (``storage.resize_``, no op the
dispatch mode sees), so the resize functions are wrapped to tell the tracker, which counts
those buffers as ``unsharded_weights``; the flat all-gather and reduce-scatter buffers
(created by the collectives' ``allocate``) count as ``comm_buffers``.

LaMDA with ``freeze_mode = "split"``: B's trainable columns are a parameter that freezing
replaces by a narrower one, and FSDP2 fixes the set and shapes of a module's sharded
parameters at ``fully_shard`` time. B is therefore kept out of FSDP2's parameter groups
(``ignored_params``) and sharded by hand the same way: a DTensor on dim 0 per part, gathered
in the forward and its gradient reduce-scattered in the backward (``LamdaB.distribute``,
``methods/lamda/freeze.py``). Every parameter the optimizer holds is then a DTensor (a foreach
AdamW refuses a group that mixes plain tensors and DTensors), and the freezing slices each
rank's rows locally, freeing the frozen columns' Adam state on every rank.
``freeze_mode = "mask"`` is refused: its gradient hook sits on the parameter FSDP2 replaces,
so its frozen columns would silently train.

``ddp``: DistributedDataParallel cannot wrap fake tensors (its C++ reducer allocates real
gradient buckets), so an estimate with ``parallel = "ddp"`` is refused in one line.
Measurement with ``world_size > 1`` needs that many GPUs in a torchrun job, which this
harness (one process per cell) does not start: an error record says so.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from ..errors import UserError
from ..results.record import SHARDED_CATEGORIES

UNSHARDED_CATEGORY, COMM_CATEGORY = SHARDED_CATEGORIES


class ParallelError(UserError):
    """A parallel setting this run cannot honour (one-line message)."""


def is_parallel(cell) -> bool:
    return cell.parallel != "none"


def check_estimate(cell) -> None:
    """Refuse, before any build, what an estimate cannot run."""
    if cell.parallel == "ddp":
        raise ParallelError(
            "parallel 'ddp' cannot be estimated: DistributedDataParallel's C++ reducer allocates real "
            "gradient buckets and cannot wrap fake tensors; use parallel = 'fsdp2' (or a world_size-1 cell: "
            "DDP's per-rank weights, grads and optimizer state are those of one device plus its buckets)"
        )
    if cell.workload == "linear":
        raise ParallelError("parallel cells need a transformers workload (blocks to shard); 'linear' has none")


def check_measure(cell) -> None:
    """Measurement of a parallel cell with more than one rank: that many GPUs in one job, which one
    process per cell is not. ``world_size = 1`` runs (``real_job``), a check of the estimate."""
    if cell.parallel == "ddp":
        raise ParallelError("parallel 'ddp' is not measured by this harness (only fsdp2 at world_size 1)")
    if cell.world_size == 1:
        return
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    raise ParallelError(
        f"measure mode with world_size {cell.world_size} and parallel {cell.parallel!r} needs "
        f"{cell.world_size} GPU(s) in a torchrun job (this machine has {have}; the harness runs one process "
        "per cell); use mode = 'estimate' for rank 0's bytes"
    )


# ---- the fake job ------------------------------------------------------------------------


@contextlib.contextmanager
def fake_job(world_size: int, device: str) -> Iterator[object]:
    """A fake process group of ``world_size`` ranks (this process is rank 0) and its 1-D mesh.

    Enter it before the fake mode. The group is destroyed at exit, so the next cell in the
    same worker process can pick another world size.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise ParallelError("a torch.distributed process group is already initialised in this process")
    dist.init_process_group("fake", rank=0, world_size=world_size, store=FakeStore())
    try:
        yield init_device_mesh(torch.device(device).type, (world_size,))
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def measure_job(cell, device: str) -> Iterator[object]:
    """For a measurement: None for a plain cell; for a parallel one, ``check_measure``, then a
    real one-rank process group (nccl on CUDA, gloo on CPU) and its mesh: the same wrapping and
    buffers as the estimate, real kernels."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not is_parallel(cell):
        yield None
        return
    check_measure(cell)
    if dist.is_initialized():
        raise ParallelError("a torch.distributed process group is already initialised in this process")
    kind = torch.device(device).type
    dist.init_process_group("nccl" if kind == "cuda" else "gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        yield init_device_mesh(kind, (1,))
    finally:
        dist.destroy_process_group()


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks to wrap: modules whose class the model lists in ``_no_split_modules``."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    # fully_shard renames a wrapped module's class to "FSDP<name>"; match both.
    names |= {f"FSDP{n}" for n in names}
    blocks = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    if not blocks:
        raise ParallelError(f"no transformer blocks found to shard in {type(model).__name__} (no _no_split_modules)")
    return blocks


def lamda_b_modules(applied) -> list[nn.Module]:
    """LaMDA's B modules, sharded by hand (see the module docstring); [] for other methods."""
    from ..methods.lamda.layer import LamdaB

    bs = [m for m in applied.model.modules() if isinstance(m, LamdaB)]
    if any(b.mode != "split" for b in bs):
        raise ParallelError("LaMDA freeze_mode 'mask' cannot run under fsdp2: its gradient hook is on the "
                            "parameter fully_shard replaces, so the 'frozen' columns would train; use 'split'")
    return bs


def shard(applied, mesh, reshard_after_forward: bool) -> dict:
    """``fully_shard`` every block, then the root; run inside the fake mode. Returns record info."""
    from torch.distributed.fsdp import fully_shard

    model = applied.model
    lamda_bs = lamda_b_modules(applied)
    ignored = {p for b in lamda_bs for p in b.parameters()} or None
    blocks = block_modules(model)
    block_class = sorted({type(b).__name__ for b in blocks})
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward, ignored_params=ignored)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward, ignored_params=ignored)
    for b in lamda_bs:  # before the optimizer is built: it must hold the sharded parameters
        b.distribute(mesh)
    return {
        "parallel": "fsdp2",
        "world_size": mesh.size(),
        "rank": 0,
        "wrapped_blocks": len(blocks),
        "block_class": block_class,
        "reshard_after_forward": reshard_after_forward,
        "sharded_outside_fsdp": sum(p.numel() for b in lamda_bs for p in b.parameters()),
        "process_group": "fake (torch.testing._internal.distributed.fake_pg.FakeStore): collectives move no data",
    }


def local(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's tensor behind a DTensor (its shard), else the tensor itself (no import: this
    runs for every cell's byte counts)."""
    return getattr(t, "_local_tensor", t)


# ---- what the live tracker sees ----------------------------------------------------------


@contextlib.contextmanager
def track_fsdp(live) -> Iterator[None]:
    """Tell ``live`` (a LiveMemoryTracker) about FSDP2's in-place storage resizes and its
    collective buffers, for the duration of the step."""
    from torch.distributed.fsdp._fully_shard import _fsdp_collectives as coll
    from torch.distributed.fsdp._fully_shard import _fsdp_param as fparam
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as fgroup

    orig_alloc, orig_free = fparam.alloc_storage, fparam.free_storage

    def alloc_storage(tensor: torch.Tensor) -> None:
        orig_alloc(tensor)
        live.set_storage(tensor, UNSHARDED_CATEGORY)

    def free_storage(tensor: torch.Tensor) -> None:
        orig_free(tensor)
        live.set_storage(tensor, UNSHARDED_CATEGORY)

    orig_init_outputs = fparam.FSDPParam.init_all_gather_outputs

    def init_all_gather_outputs(self, *args, **kwargs):
        orig_init_outputs(self, *args, **kwargs)
        for t in self.all_gather_outputs:
            live.set_storage(t, UNSHARDED_CATEGORY)

    patched = []

    def patch(owner, name, value) -> None:
        patched.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def comm_allocate(orig):
        def allocate(self, *args, **kwargs):
            t = orig(self, *args, **kwargs)
            live.set_storage(t, COMM_CATEGORY)
            return t

        return allocate

    patch(fparam, "alloc_storage", alloc_storage)
    patch(fparam, "free_storage", free_storage)
    patch(fgroup, "alloc_storage", alloc_storage)
    patch(fparam.FSDPParam, "init_all_gather_outputs", init_all_gather_outputs)
    for cls_name in ("DefaultAllocMixin", "ProcessGroupAllocMixin"):
        cls = getattr(coll, cls_name, None)
        if cls is not None and "allocate" in vars(cls):
            patch(cls, "allocate", comm_allocate(vars(cls)["allocate"]))
    try:
        yield
    finally:
        for owner, name, value in reversed(patched):
            setattr(owner, name, value)


# ---- the record ------------------------------------------------------------------------------


def rank_memory(live) -> dict:
    """``memory.per_rank``: rank 0's bytes by every category at the step's peak and per phase."""
    return {"per_rank": {
        "rank": 0,
        "at_peak": dict(live.peak.by_category),
        "phase_peaks": {name: p.to_dict() for name, p in live.phase_peaks.items()},
    }}


def predicted(applied, cell) -> dict:
    """``predicted.sharded``: the closed forms of ``analytic`` for rank 0's persistent bytes,
    from the model's parameters as they are now: called after the instrumented step's optimizer
    step and before the method's ``on_step`` (LaMDA's freeze), as ``memory.optimizer`` is read."""
    from torch.distributed.tensor import DTensor

    from .. import analytic

    model = applied.model
    seen: set[int] = set()
    params: list[analytic.ShardedParam] = []
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        params.append(analytic.ShardedParam(tuple(t.shape), t.element_size(),
                                            trainable=bool(t.requires_grad), sharded=isinstance(t, DTensor)))
    out = analytic.fsdp2_rank_memory(params, cell.world_size, optimizer=cell.optimizer)
    blocks = block_modules(model)
    by_hand = {id(p) for b in lamda_b_modules(applied) for p in b.parameters()}  # not in FSDP2's all-gather
    out["largest_block_gathered"] = max(
        analytic.gathered_bytes([analytic.ShardedParam(tuple(p.shape), p.element_size(), p.requires_grad,
                                                       isinstance(p, DTensor))
                                 for p in b.parameters() if id(p) not in by_hand], cell.world_size)
        for b in blocks)
    out["assumptions"] = ("FSDP2 dim-0 sharding, rank 0 holds ceil(dim0 / world_size) rows; buffers whole "
                          "(replicated); LaMDA's B sharded on dim 0 by hand like the rest (gathered apart from "
                          "FSDP2's flat buffer); grads and Adam moments shaped like the shard")
    return out
