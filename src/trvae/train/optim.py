"""The optimiser of a fit (Adam) and its learning-rate schedule: reduce on plateau (default) or
a cosine to a floor."""

from __future__ import annotations

import torch

from trvae._errors import TRVAEError, check_option

#: ``TrainingPlan(lr_schedule=...)``'s choices.
LR_SCHEDULES = ("plateau", "cosine")
#: The cosine schedule ends at this fraction of the initial learning rate.
COSINE_FLOOR = 0.01

Schedule = torch.optim.lr_scheduler.ReduceLROnPlateau | torch.optim.lr_scheduler.LRScheduler


def adam(params, **kwargs) -> torch.optim.Adam:
    """Adam with the fused implementation (one kernel for all parameters) where torch has it.

    Several times faster on CPU (``docs/choosing-parameters.md``). Older torch falls back to the
    default implementation.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, **kwargs)


def check_schedule(name: str) -> str:
    """``name`` if it is one of :data:`LR_SCHEDULES`, else a :class:`~trvae.TRVAEError`."""
    check_option("lr_schedule", name, LR_SCHEDULES, TRVAEError)
    return name


def make_schedule(
    name: str,
    optimizer: torch.optim.Optimizer,
    max_epochs: int,
    factor: float = 0.5,
    patience: int = 8,
) -> Schedule:
    """The schedule ``name`` for ``optimizer``, stepped once per epoch by :func:`step`.

    ``"plateau"``: the learning rate times ``factor`` after ``patience`` epochs without a lower
    validation loss. ``"cosine"``: a half cosine from the optimiser's learning rate at the first
    epoch down to :data:`COSINE_FLOOR` times it after the last of ``max_epochs``.

    Examples
    --------
    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    >>> cosine = make_schedule("cosine", opt, max_epochs=3)
    >>> lrs = []
    >>> for _ in range(3):
    ...     lrs.append(round(opt.param_groups[0]["lr"], 3))
    ...     step(cosine, monitor=0.0)
    >>> lrs
    [1.0, 0.752, 0.258]
    """
    if check_schedule(name) == "cosine":
        lr = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(int(max_epochs), 1), eta_min=lr * COSINE_FLOOR
        )
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=factor, patience=patience)


def check_resume(state: dict, name: str) -> None:
    """Refuse to resume a training ``state`` written under another schedule than ``name``."""
    written = state.get("lr_schedule", "plateau")  # states written before the choice: plateau
    if written != name:
        raise TRVAEError(
            f"the checkpoint was written with lr_schedule={written!r}; resume it with "
            f"train(lr_schedule={written!r}) (got {name!r})"
        )


def step(schedule: Schedule, monitor: float) -> None:
    """Advance ``schedule`` by one epoch whose monitored loss was ``monitor``."""
    if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
        schedule.step(monitor)
    else:
        schedule.step()
