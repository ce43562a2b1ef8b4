"""Several processes through torch.distributed (torchrun, Accelerate, or a Trainer's launch).

ftviz owns no engine: when a launcher set ``WORLD_SIZE`` > 1, :func:`init_from_env` opens the
default process group (NCCL on GPUs, gloo on CPUs) and everything else is the plain
``torch.distributed`` calls below. With one process every helper is a no-op, so the single
process path is unchanged. Rank 0 writes every file; the others compute their share.
"""

from __future__ import annotations

import os

from ftviz.errors import FtvizError


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def init_from_env() -> tuple[int, int]:
    """Join the process group a launcher announced (``WORLD_SIZE`` > 1); return (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and _dist() is None:
        import torch
        import torch.distributed as dist

        if "MASTER_ADDR" not in os.environ:
            raise FtvizError("WORLD_SIZE is set but MASTER_ADDR is not: launch with torchrun or accelerate launch")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without a process group."""
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)


def is_main() -> bool:
    return rank_and_world()[0] == 0


def local_device(device):
    """On a multi-GPU launch every rank takes its own GPU (``LOCAL_RANK``); else ``device`` as is."""
    import torch

    if device.type == "cuda" and device.index is None and rank_and_world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def barrier() -> None:
    dist = _dist()
    if dist:
        dist.barrier()


def on_main(function, *args, **kwargs):
    """Run ``function`` on rank 0 only and hand its result (or its FtvizError) to every rank.

    Without this, an error on rank 0 (a finished run refused, say) would leave the other
    ranks waiting at their next collective call for ever.
    """
    dist = _dist()
    if dist is None:
        return function(*args, **kwargs)
    outcome = [None, None]
    if dist.get_rank() == 0:
        try:
            outcome = [function(*args, **kwargs), None]
        except FtvizError as error:
            outcome = [None, str(error)]
        except Exception as error:
            outcome = [None, f"rank 0 failed: {type(error).__name__}: {error}"]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise FtvizError(outcome[1])
    return outcome[0]


def shard_bounds(n: int) -> tuple[int, int, int]:
    """This rank's rows [start, stop) of ``n``, in contiguous blocks of ``ceil(n / world)``."""
    rank, world = rank_and_world()
    per = -(-n // world)
    return min(n, rank * per), min(n, (rank + 1) * per), per


def gather_rows(shard, n: int):
    """Concatenate every rank's (rows, ...) tensor shard in rank order; (n, ...) on every rank.

    Shards come from :func:`shard_bounds` (all of length ``per`` but the last ones); they are
    padded to equal length for ``all_gather`` and sent as float32 (gloo has no float16
    collectives), which is exact for float16 values.
    """
    import torch

    dist = _dist()
    if dist is None:
        return shard
    _, _, per = shard_bounds(n)
    dtype = shard.dtype
    padded = torch.zeros((per, *shard.shape[1:]), dtype=torch.float32, device=shard.device)
    padded[: len(shard)] = shard.float()
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:n].to(dtype)


def mean_across(value: float, device) -> float:
    """The mean of a scalar over the ranks (the global batch's loss from each rank's share)."""
    dist = _dist()
    if dist is None:
        return value
    import torch

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()
