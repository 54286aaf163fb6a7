"""Device, graph mode and data parallelism (under ``msrun``) for the zoo's scripts."""

from __future__ import annotations

import os

import mindspore as ms

__all__ = ["launched_by_msrun", "setup_context"]


def launched_by_msrun() -> bool:
    """True in a process that ``msrun`` started for a job of more than one worker.

    ``msrun`` runs the script in a scheduler process (``MS_ROLE=MS_SCHED``) too: it must call
    ``init()`` as well, which serves the cluster and exits the process when the job ends.
    """
    role = os.environ.get("MS_ROLE")
    return role in ("MS_WORKER", "MS_SCHED") and int(os.environ.get("MS_WORKER_NUM", 1)) > 1


def setup_context(device: str) -> tuple[int, int]:
    """GRAPH_MODE on ``device``; under ``msrun``, join the job as a data-parallel worker.

    Data parallelism: ``init()`` picks the backend of the device (CPU: mccl, GPU: nccl,
    Ascend: hccl), and the parallel context is DATA_PARALLEL with mean gradients, which the
    training cells read to all-reduce gradients (and, for TKFAC, the factor statistics).

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` outside ``msrun``.

    Raises:
        ValueError: this MindSpore build cannot run on ``device``.
    """
    if not ms.hal.is_available(device):  # ms.set_device would log errors, then raise
        usable = [d for d in ("CPU", "GPU", "Ascend") if ms.hal.is_available(d)] or ["CPU"]
        raise ValueError(
            f"device {device} is not available: this MindSpore build runs on "
            f"{', '.join(usable)} (pass --device {usable[0]})"
        )
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(device)
    if not launched_by_msrun():
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init

    init()  # in the scheduler process this serves the job, then exits
    world = get_group_size()
    ms.set_auto_parallel_context(
        parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=world
    )
    return get_rank(), world
