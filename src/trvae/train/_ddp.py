"""What a training step needs under DDP: the loss as a module, buffer and loss-sum syncs."""

from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# DDP's per-forward broadcast of buffers, turned off (its keyword changed in torch 2.13)
_NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


class _Loss(nn.Module):
    """The module's loss as ``forward``, so that DDP's gradient hooks see the computation."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(
        self, x: torch.Tensor, condition: torch.Tensor, library: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return self.module.loss(x, condition, library)


def _broadcast_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), which DDP does not sync.

    One broadcast per dtype, of the buffers flattened into one tensor.
    """
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in module.buffers():
        groups.setdefault(buffer.dtype, []).append(buffer)
    for buffers in groups.values():
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        dist.broadcast(flat, 0)
        for buffer, value in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
            buffer.copy_(value.view_as(buffer))


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over ranks; rank 0's result is broadcast so that all ranks hold its bits."""
    where = device if device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=where)
    dist.all_reduce(tensor)
    dist.broadcast(tensor, 0)
    return tensor.tolist()
