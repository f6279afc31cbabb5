"""The training checkpoint, one contract: what :meth:`TrainingPlan.fit` writes after every epoch
(atomically, rank 0) and what ``TRVAE.train(resume=True)`` reads back.

A checkpoint is a weights-only ``torch.save`` of a dict with :data:`KEYS` (plus, under DDP,
``world_size`` and every rank's RNG states in ``rank_rng``), so a run killed at any moment
resumes from its last complete epoch, bit for bit on the CPU.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trvae._errors import ModelLoadError
from trvae._io import atomic_torch_save, torch_load_error

FILENAME = "checkpoint.pt"
KEYS = (
    "module", "optimizer", "scheduler", "history", "best_loss", "best_epoch", "best_module",
    "numpy_rng", "torch_rng",
)  # fmt: skip


def writer(directory: str | Path) -> partial:
    """The ``on_epoch_end`` callback that writes the state to ``directory``.

    A partial, not a closure: DDP pickles it for its processes.
    """
    return partial(atomic_torch_save, path=Path(directory) / FILENAME)


def load(directory: str | Path, module: nn.Module) -> dict:
    """The training state in ``directory`` (weights only), checked against a fresh ``module``."""
    path = Path(directory) / FILENAME
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        missing = [key for key in KEYS if key not in state]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
        module.load_state_dict(state["module"])
    except Exception as err:
        raise ModelLoadError(
            f"cannot resume from {path}: it is corrupt or was written for another model or data "
            f"({torch_load_error(err)})"
        ) from err
    return state


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The torch RNG state(s) that training draws from: CPU, and CUDA when it runs there."""
    state = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(
    state: dict, device: torch.device, rank: int, world: int, rank_rng: np.random.Generator
) -> None:
    """Restore this rank's RNGs from a checkpoint.

    A checkpoint written with another number of processes continues training, but not bit for
    bit: ranks without a saved state keep their fresh seeds.
    """
    per_rank = state.get("rank_rng")
    if world > 1 and per_rank is not None and len(per_rank) == world:
        state = per_rank[rank]
        rank_rng.bit_generator.state = state["numpy_rng"]
    elif rank != 0:
        return
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
