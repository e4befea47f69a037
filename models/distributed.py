"""The trainer's process group (:mod:`offclip.models.train`): which rank this is, joining the
group torchrun describes (``WORLD_SIZE > 1``), and gathering one object from every rank."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  #: we initialised the process group (and tear it down)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> _Dist:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


def _all_gather_objects(value: Any, dist_info: _Dist) -> list:
    if not dist_info.enabled:
        return [value]
    out: list = [None] * dist_info.world_size
    torch.distributed.all_gather_object(out, value)
    return out
