"""Multi-process training on torch.distributed: the process group, who is rank 0, and the wrappers
(DDP, FSDP2) around the loop's loss module.

The launcher (torchrun, `accelerate launch`, or `sparsetune … trainer.nproc=N`, which calls torchrun's
elastic launcher) sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; this module only
reads them. NCCL on CUDA (one GPU per local rank), gloo on the CPU. Without those variables
everything here is a no-op for one process, so single-process code paths stay exactly as they were.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

# rank 0 evaluates (and, at the end, exports) while the others wait at a barrier: allow for a long eval
PG_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1


def env_world() -> World:
    """The launcher's view of this process (RANK, LOCAL_RANK, WORLD_SIZE); one process without them."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return World()
    return World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
                 int(os.environ["WORLD_SIZE"]))


def launched() -> bool:
    """True inside a process started by torchrun / accelerate / the elastic launcher."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str) -> str:
    """Join the launcher's process group (once) and return this rank's device.

    `device` is the resolved `trainer.device`: on CUDA each rank takes `cuda:<LOCAL_RANK>` and NCCL,
    on the CPU gloo. Outside a launcher: `device` unchanged, no group."""
    if not launched():
        return device
    world = env_world()
    if torch.device(device).type == "cuda":
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(device)
    if not active():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        kwargs = {"device_id": torch.device(device)} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=PG_TIMEOUT, **kwargs)
    return device


def teardown() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (e.g. the run folder path rank 0 created)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _reduce_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks of a few numbers (token counts, losses), in float64."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any rank (e.g. one rank saw a non-finite loss)."""
    return bool(all_reduce_sum([float(flag)])[0]) if active() else flag


# --- wrappers ------------------------------------------------------------------------------------------
def wrap_ddp(module: torch.nn.Module, device: str, find_unused: bool) -> torch.nn.Module:
    """DistributedDataParallel around the loop's loss module (gradients averaged across ranks in
    buckets, overlapped with backward). `find_unused` only for methods whose trainable parameters can
    miss a step's graph: it costs a graph walk per forward."""
    ids = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def shard_fsdp(module: torch.nn.Module, blocks: list[torch.nn.Module]) -> torch.nn.Module:
    """FSDP2: each transformer block its own shard group, the rest (embeddings, norm, head) in the
    root group of `module`, which must be the module whose forward the loop calls."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks:
        fully_shard(block)
    fully_shard(module)
    return module


def is_sharded(t: torch.Tensor) -> bool:
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP-sharded) parameter; a collective when sharded."""
    return t.full_tensor() if is_sharded(t) else t


def load_into(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a full tensor into a parameter, keeping only this rank's shard when it is sharded (every
    rank holds the full value, so no communication)."""
    if is_sharded(param):
        value = distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements,
                                  src_data_rank=None)
    param.copy_(value)
