"""Data parallelism over an existing ``torch.distributed`` process group (SPEC §5 "Speed").

ptypinn never launches ranks itself: ``torchrun`` (or Lightning Fabric / a Lightning Trainer with
a DDP strategy, the engine training uses) starts the processes and initialises the default
process group; inference (:func:`ptypinn.pinn.infer.reconstruct`) and refinement
(:func:`ptypinn.refinement.refine`) then shard the patterns across its ranks and merge what they
accumulated with the sums below.  Outside a process group every function is a no-op and the
code runs as one process.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["process_group", "shard_bounds", "all_reduce_sum"]


def process_group() -> tuple[int, int]:
    """``(rank, world_size)`` of the default ``torch.distributed`` process group, ``(0, 1)``
    outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_bounds(n: int, world: int) -> np.ndarray:
    """Contiguous shards of ``n`` rows over ``world`` ranks: rank ``r`` owns rows
    ``bounds[r]:bounds[r + 1]``.

    Returns
    -------
    int64 ``(world + 1,)``, ``bounds[0] = 0``, ``bounds[-1] = n``, sizes differing by at most 1.
    """
    return np.linspace(0, n, world + 1).round().astype(np.int64)


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor over every rank of the default process group, in place, in one
    collective (the tensors are packed into one real buffer of their widest real dtype, so
    complex tensors work on every backend, gloo included).  A no-op outside a process group.

    Parameters
    ----------
    *tensors : real or complex tensors on one device (any shapes; contiguous or not)
    """
    if process_group()[1] == 1 or not tensors:
        return
    parts = [torch.view_as_real(t) if t.is_complex() else t for t in tensors]
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    flat = torch.cat([p.reshape(-1).to(dtype) for p in parts])
    torch.distributed.all_reduce(flat)
    start = 0
    for t, p in zip(tensors, parts):
        size = p.numel()
        chunk = flat[start:start + size].view(p.shape).to(p.dtype)
        if t.is_complex():
            t.copy_(torch.view_as_complex(chunk.contiguous()))
        else:
            t.copy_(chunk)
        start += size
