"""Where a module runs: Lightning-style ``accelerator`` / ``devices`` / ``strategy`` arguments."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from trvae._errors import TRVAEError

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp")


@dataclass(frozen=True)
class DeviceSetup:
    """Where training runs: a device type and the number of processes (one device each).

    Parameters
    ----------
    device_type
        ``"cpu"``, ``"cuda"`` or ``"mps"``.
    world_size
        Number of training processes; more than one means DDP.
    """

    device_type: str = "cpu"
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        """Whether training runs in several processes."""
        return self.world_size > 1

    def device(self, rank: int = 0) -> torch.device:
        """The device of process ``rank`` (CUDA: GPU number ``rank``)."""
        if self.device_type == "cuda":
            return torch.device("cuda", rank if self.distributed else torch.cuda.current_device())
        return torch.device(self.device_type)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@contextmanager
def on_device(module: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """``module`` moved to ``device`` for a block, and back to the CPU after it (also on error)."""
    module.to(device)
    try:
        yield module
    finally:
        module.cpu()


def resolve_devices(
    accelerator: str = "auto", devices: int | str = "auto", strategy: str = "auto"
) -> DeviceSetup:
    """Check Lightning-style device arguments and say where training runs.

    Parameters
    ----------
    accelerator
        ``"auto"`` (CUDA when available, else CPU; MPS only when asked), ``"cpu"``, ``"gpu"``
        or ``"cuda"`` (an NVIDIA GPU), ``"mps"`` (Apple silicon).
    devices
        Number of devices, one process each, or ``"auto"``: every visible GPU with
        ``strategy="ddp"`` on CUDA, else 1. A string of digits counts as that number.
    strategy
        ``"auto"`` (DDP when ``devices >= 2``) or ``"ddp"`` (the same; with one device it is
        ordinary single-process training).

    Raises
    ------
    TRVAEError
        For an unknown value, a device that is not available or more devices than there are.
    """
    if not isinstance(accelerator, str) or accelerator.lower() not in ACCELERATORS:
        raise TRVAEError(f"accelerator must be one of {ACCELERATORS}, got {accelerator!r}")
    if not isinstance(strategy, str) or strategy.lower() not in STRATEGIES:
        raise TRVAEError(
            f"strategy must be one of {STRATEGIES}, got {strategy!r} (trvae implements DDP "
            "itself, without Lightning: no other strategies)"
        )
    accelerator, strategy = accelerator.lower(), strategy.lower()
    cuda = torch.cuda.is_available()
    if accelerator == "auto":
        device_type = "cuda" if cuda else "cpu"
    elif accelerator in ("gpu", "cuda"):
        if not cuda:
            raise TRVAEError(
                f"accelerator={accelerator!r} but CUDA is not available (torch "
                f"{torch.__version__}, built for CUDA {torch.version.cuda}); use "
                "accelerator='cpu' or 'auto'"
            )
        device_type = "cuda"
    elif accelerator == "mps":
        if not _mps_available():
            raise TRVAEError("accelerator='mps' but MPS is not available; use 'cpu' or 'auto'")
        device_type = "mps"
    else:
        device_type = "cpu"

    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if isinstance(devices, str) and devices.strip().lower() == "auto":
        n_gpus = torch.cuda.device_count() if device_type == "cuda" else 0
        n = n_gpus if strategy == "ddp" and n_gpus > 0 else 1
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        n = int(devices)
        if n < 1:
            raise TRVAEError(f"devices must be a positive number of devices or 'auto', got {n}")
    else:
        raise TRVAEError(f"devices must be a positive integer or 'auto', got {devices!r}")
    if device_type == "cuda" and n > torch.cuda.device_count():
        raise TRVAEError(
            f"devices={n} but only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    if device_type == "mps" and n > 1:
        raise TRVAEError("MPS has one device and no DDP backend: use devices=1 with 'mps'")
    if n > 1 and not dist.is_available():
        raise TRVAEError("devices >= 2 needs torch.distributed, which this torch build lacks")
    return DeviceSetup(device_type, n)
