"""Everything that knows about ranks: process-group setup, main-process checks, reductions.

Nothing else in the project reads RANK / WORLD_SIZE / LOCAL_RANK. Single-process runs get a
`DistInfo` with world_size 1 and every helper here degrades to a no-op.
"""
import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from core.collectives import all_reduce_sum_, broadcast_buffers, gather_variable, is_initialized  # noqa: F401 (re-exported for the engine)
from core.devices import pick_device  # noqa: F401 (re-exported for the scripts)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    """This process's global rank as torchrun set it (0 outside torchrun), before any process group."""
    return int(os.environ.get("RANK", "0"))


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def init_distributed(requested_device: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group when launched by torchrun (nccl on GPU, gloo on CPU); else one process."""
    if not launched_by_torchrun():
        return DistInfo(device=pick_device(requested_device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        dist.init_process_group(backend, store=_attempt_store(rank, world, timeout), rank=rank, world_size=world,
                                timeout=timeout)
    return DistInfo(rank, world, local_rank, device, backend)


def _attempt_store(rank: int, world: int, timeout) -> "dist.Store":
    """The rendezvous store, with keys prefixed by torchrun's restart count.

    After `--max-restarts` restarts a worker group, the agent's store still holds the previous
    attempt's addresses under the same keys, and the new ranks read them (seen with PyTorch 2.15:
    gloo then dials a dead peer and the restart fails). A prefix per attempt keeps them apart.
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(host, port, world, is_master=(rank == 0 and not agent_serves), timeout=timeout)
    return dist.PrefixStore(f"lt-sam/attempt_{restart_count()}", store)


PEER_LOSS_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                     "Socket Timeout", "NCCL communicator was aborted", "Watchdog caught collective operation timeout")


def is_communication_failure(error: BaseException) -> bool:
    """A collective failed because a peer died, hung or the network broke: torch's distributed
    error types, or the peer-loss messages that gloo and NCCL put in a plain RuntimeError. An
    error that merely mentions a backend (an unsupported dtype, a bad argument) is not one."""
    lost = tuple(getattr(dist, n) for n in ("DistNetworkError", "DistStoreError") if hasattr(dist, n))
    if isinstance(error, lost):
        return True
    text = str(error)
    backend = getattr(dist, "DistBackendError", ())
    return any(m in text for m in PEER_LOSS_MARKERS) or (isinstance(error, backend) and "imed out" in text)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
