"""Data-parallel sharding (FSDP2), rank 0's bytes.

fully_shard chunks every parameter on dim 0 into world_size pieces, padding dim 0 up to a
multiple of world_size: rank 0 holds ceil(dim0 / W) rows (its gradient and its Adam moments
the same), and an all-gather rebuilds a block at its padded size, ceil(dim0 / W) * W rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from .structure import AdaptedLinear, AnalyticError


@dataclass(frozen=True)
class ShardedParam:
    """One parameter as FSDP2 sees it: global shape, bytes per element, whether it trains,
    whether it is sharded (False: left out of the sharding and replicated on every rank)."""

    shape: tuple[int, ...]
    itemsize: int
    trainable: bool
    sharded: bool = True


def shard_rows(dim0: int, world_size: int) -> int:
    """Rows of a parameter's dim 0 on rank 0: ceil(dim0 / W)."""
    if world_size < 1:
        raise AnalyticError(f"world_size must be >= 1, got {world_size}")
    return -(-dim0 // world_size)


def rank0_bytes(p: ShardedParam, world_size: int) -> int:
    """Bytes of ``p`` on rank 0 (its padded shard, or all of it when replicated)."""
    rest = 1
    for d in p.shape[1:]:
        rest *= d
    rows = shard_rows(p.shape[0], world_size) if p.sharded and p.shape else (p.shape[0] if p.shape else 1)
    return rows * rest * p.itemsize


def gathered_bytes(params: Iterable[ShardedParam], world_size: int) -> int:
    """Bytes of one unit's all-gathered (unsharded) parameters, dim 0 padded to a multiple of W."""
    return sum(rank0_bytes(p, world_size) * world_size for p in params if p.sharded)


def fsdp2_rank_memory(params: Iterable[ShardedParam], world_size: int, optimizer: str = "adamw",
                      step_itemsize: int = 4) -> dict[str, int]:
    """Rank 0's persistent bytes: weights, trainable weights, grads, optimizer state.

    Grads and Adam's two moments are shaped like the rank's shard of each trainable parameter;
    Adam also keeps one ``step`` scalar (fp32 by default) per trainable parameter; SGD none.
    """
    params = list(params)
    weights = sum(rank0_bytes(p, world_size) for p in params)
    trained = sum(rank0_bytes(p, world_size) for p in params if p.trainable)
    n_trained = sum(1 for p in params if p.trainable)
    opt = 2 * trained + step_itemsize * n_trained if optimizer == "adamw" else 0
    return {"weights": weights, "trainable_weights": trained, "grads": trained, "optimizer": opt}


def lamda_sharded_params(layers: Sequence[AdaptedLinear], r: int, b_trainable: Callable[[int], int],
                         itemsize: int = 4) -> list[ShardedParam]:
    """LaMDA's adapter parameters on a mesh, for ``fsdp2_rank_memory``: per layer A (r x d_in,
    frozen), S (r x r, trainable), B's frozen columns (d_out x (r - t)) and its trainable ones
    (d_out x t, t = ``b_trainable(r)``), each only while it has columns; every one sharded on
    dim 0 (A and S by fully_shard, B by hand: ``methods/lamda/freeze.py``). Once t is 0, B has
    no trainable tensor: no gradient, no Adam moments, no ``step`` scalar."""
    params: list[ShardedParam] = []
    for layer in layers:
        rl = layer.rank(r)
        t = b_trainable(rl)
        params += [ShardedParam((rl, layer.d_in), itemsize, trainable=False),
                   ShardedParam((rl, rl), itemsize, trainable=True)]
        if t < rl:
            params.append(ShardedParam((layer.d_out, rl - t), itemsize, trainable=False))
        if t > 0:
            params.append(ShardedParam((layer.d_out, t), itemsize, trainable=True))
    return params
