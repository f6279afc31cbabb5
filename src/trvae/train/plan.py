"""The training plan: optimisation, validation, early stopping and learning-rate schedule."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from trvae._errors import check_integer, check_number
from trvae.data.cell_data import CellData
from trvae.data.device_data import DeviceCellData, prefetched
from trvae.module import TRVAEModule
from trvae.train import batch_norm, checkpoint, optim
from trvae.train._ddp import _NO_FORWARD_BUFFER_SYNC, _all_reduce, _broadcast_buffers, _Loss
from trvae.train.precision import autocast, check_precision

LOSS_TERMS = ("loss", "reconstruction", "kl", "mmd")


@dataclass
class TrainingPlan:
    """How a :class:`~trvae.module.TRVAEModule` is fitted.

    Parameters
    ----------
    max_epochs
        Upper bound on passes over the training cells.
    batch_size
        Cells per mini-batch (at least 2); the MMD penalty compares the conditions inside each
        batch.
    lr, weight_decay
        Adam's learning rate and L2 weight decay.
    early_stopping, patience, min_delta
        Stop when the validation loss has not improved by ``min_delta`` for ``patience`` epochs;
        the weights of the best epoch are restored in any case.
    lr_schedule
        ``"plateau"`` (default): multiply the learning rate by ``lr_factor`` after
        ``lr_patience`` epochs without improvement of the validation loss. ``"cosine"``: lower
        it along a half cosine from ``lr`` at the first epoch to 1 % of it after
        ``max_epochs`` (:mod:`trvae.train.optim`; evidence: ``docs/choosing-parameters.md``).
    lr_patience, lr_factor
        The plateau schedule's patience and factor.
    kl_warmup
        Epochs over which the KL weight ramps linearly from 0 to ``alpha``.
    precision
        ``"32"`` or ``"bf16-mixed"``: the forward pass of every training step and of the
        validation pass under bfloat16 autocast (:mod:`trvae.train.precision`).
    recompute_batch_norm
        After training (default), batch norm's statistics are re-estimated over all training
        cells with the kept weights (:mod:`trvae.train.batch_norm`); ``False`` keeps the
        running averages of the last training steps.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.data.cell_data import CellData
    >>> from trvae.module import TRVAEModule
    >>> x = np.random.default_rng(0).random((40, 10), dtype=np.float32)
    >>> data = CellData(x, np.arange(40) % 2)
    >>> module = TRVAEModule(10, 2, n_latent=3, n_hidden=(8,))
    >>> plan = TrainingPlan(max_epochs=3, batch_size=16)
    >>> history = plan.fit(module, data, np.arange(32), np.arange(32, 40), progress_bar=False)
    >>> list(history.columns[:3]), len(history)
    (['epoch', 'lr', 'train_loss'], 3)
    """

    max_epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    early_stopping: bool = True
    patience: int = 20
    min_delta: float = 0.0
    lr_patience: int = 8
    lr_factor: float = 0.5
    lr_schedule: str = "plateau"
    kl_warmup: int = 0
    precision: str = "32"
    recompute_batch_norm: bool = True

    def __post_init__(self) -> None:
        self.precision = check_precision(self.precision)
        self.max_epochs = check_integer("max_epochs", self.max_epochs)
        self.batch_size = check_integer("batch_size", self.batch_size, minimum=2)
        self.lr = check_number("lr", self.lr, low=0, low_open=True)
        self.weight_decay = check_number("weight_decay", self.weight_decay, low=0)
        self.patience = check_integer("patience", self.patience)
        self.min_delta = check_number("min_delta", self.min_delta, low=0)
        self.lr_patience = check_integer("lr_patience", self.lr_patience, minimum=0)
        self.lr_factor = check_number("lr_factor", self.lr_factor, 0, 1, True, True)
        self.lr_schedule = optim.check_schedule(self.lr_schedule)
        self.kl_warmup = check_integer("kl_warmup", self.kl_warmup, minimum=0)

    def fit(
        self,
        module: TRVAEModule,
        data: CellData | DeviceCellData,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        seed: int = 0,
        progress_bar: bool = True,
        on_epoch_end: Callable[[dict], None] | None = None,
        resume_state: dict | None = None,
        device: torch.device | str | None = None,
        distributed: bool = False,
    ) -> pd.DataFrame:
        """Train ``module`` in place and return the per-epoch history.

        Parameters
        ----------
        module
            The network, already on ``device``.
        data, train_idx, val_idx
            Cells and the training / validation split (validation may be empty: the training
            loss is then monitored).
        seed
            Seed of the shuffling (numpy) and of dropout and z sampling (torch).
        progress_bar
            Show a tqdm bar (rank 0 only).
        on_epoch_end
            Receives the training state after every epoch (for checkpoints); rank 0 only.
        resume_state
            Such a state, to continue an interrupted run.
        device
            Where batches are sent; default: the device of ``module``'s parameters.
        distributed
            Run as one rank of the initialised default process group (see
            :mod:`trvae.train.distributed`): the module is wrapped in
            :class:`~torch.nn.parallel.DistributedDataParallel` (gradients averaged over ranks),
            each rank trains on a disjoint share of every epoch's shuffled cells (the same
            permutation everywhere, ``len(train_idx) % world_size`` cells left out per epoch so
            that every rank runs the same number of steps), which it shuffles with its own
            generator (``default_rng([seed, rank])``; the block-shuffled sampler for on-disk
            data). Rank 0's buffers (BatchNorm statistics) are broadcast after each epoch and
            the loss sums are all-reduced, so the schedule, best epoch and early stopping are
            decided identically on every rank. Rank ``r`` seeds torch with ``seed + r``.
        """
        run = self._start(module, train_idx, seed, device, distributed, resume_state)
        bar = tqdm(
            range(run.start, self.max_epochs),
            desc="trVAE",
            unit="epoch",
            disable=not progress_bar or run.rank != 0,
        )
        try:
            for epoch in bar:
                train = self._train_epoch(run, module, data, train_idx, epoch)
                val = self._validate(run, module, data, val_idx, train, self.precision)
                monitor = self._record(run, module, epoch, train, val, len(val_idx) > 0)
                bar.set_postfix(loss=f"{monitor:.1f}", best=run.best_epoch)
                if on_epoch_end is not None:
                    self._checkpoint(run, module, on_epoch_end)
                if self.early_stopping and epoch - run.best_epoch >= self.patience:
                    break
        finally:
            module.alpha = run.alpha
            bar.close()
        if run.best_state is not None:
            module.load_state_dict(run.best_state)
        if self.recompute_batch_norm:
            batch_norm.recompute_statistics(
                module, data, train_idx, self.batch_size, run.device, run.rng, self.precision
            )
        module.eval()
        frame = pd.DataFrame(run.history)
        frame.attrs["best_epoch"] = run.best_epoch
        return frame

    def _start(
        self,
        module: TRVAEModule,
        train_idx: np.ndarray,
        seed: int,
        device: torch.device | str | None,
        distributed: bool,
        resume_state: dict | None,
    ) -> _Run:
        """Seeds, optimiser, schedule and loss step of a run, restored from ``resume_state``."""
        device = torch.device(device) if device is not None else _module_device(module)
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        torch.manual_seed(seed + rank)
        optimizer = optim.adam(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        run = _Run(
            device=device,
            rank=rank,
            world=world,
            rng=np.random.default_rng(seed),
            rank_rng=np.random.default_rng([seed, rank]),  # DDP: shuffles this rank's share
            optimizer=optimizer,
            scheduler=optim.make_schedule(
                self.lr_schedule, optimizer, self.max_epochs, self.lr_factor, self.lr_patience
            ),
            alpha=module.alpha,
            step=module.loss,
        )
        if resume_state is not None:
            optim.check_resume(resume_state, self.lr_schedule)
            module.load_state_dict(resume_state["module"])
            optimizer.load_state_dict(resume_state["optimizer"])
            run.scheduler.load_state_dict(resume_state["scheduler"])
            run.history = list(resume_state["history"])
            run.best_loss, run.best_epoch = resume_state["best_loss"], resume_state["best_epoch"]
            run.best_state = resume_state["best_module"]
            run.start = len(run.history)
            run.rng.bit_generator.state = resume_state["numpy_rng"]
            checkpoint.restore_rng(resume_state, device, rank, world, run.rank_rng)
        if distributed:
            run.step = DistributedDataParallel(
                _Loss(module),
                device_ids=[device.index] if device.type == "cuda" else None,
                **_NO_FORWARD_BUFFER_SYNC,  # rank 0's buffers are broadcast once per epoch instead
            )
        return run

    def _train_epoch(
        self, run: _Run, module: TRVAEModule, data: CellData, train_idx: np.ndarray, epoch: int
    ) -> list[float]:
        """One pass of optimiser steps; the loss sums (float64, on the device) and the count."""
        if self.kl_warmup > 0:
            module.alpha = run.alpha * min(1.0, (epoch + 1) / self.kl_warmup)
        module.train()
        sums = torch.zeros(len(LOSS_TERMS), dtype=torch.float64, device=run.sum_device)
        n_seen = 0
        cells, shuffler = train_idx, run.rng
        if run.world > 1:  # the same permutation on every rank, a disjoint share each
            perm = run.rng.permutation(np.asarray(train_idx))
            cells = perm[run.rank : len(perm) - len(perm) % run.world : run.world]
            shuffler = run.rank_rng
        batches = data.batches(
            cells, self.batch_size, shuffle=True, generator=shuffler, drop_small_last=True
        )
        if run.device.type == "cuda" and not isinstance(data, DeviceCellData):
            batches = prefetched(batches, run.device)  # host batches: prepared ahead, pinned
        for batch in batches:
            x, cond, lib = (t.to(run.device, non_blocking=True) for t in batch)
            with autocast(self.precision, run.device):  # the backward pass runs outside it
                terms = run.step(x, cond, lib)
            run.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            run.optimizer.step()
            losses = torch.stack([terms[key].detach() for key in LOSS_TERMS])
            sums += losses.to(run.sum_device).double() * len(x)
            n_seen += len(x)
        module.alpha = run.alpha
        return [*sums.tolist(), n_seen]

    @staticmethod
    def _validate(
        run: _Run,
        module: TRVAEModule,
        data: CellData,
        val_idx: np.ndarray,
        train: list[float],
        precision: str = "32",
    ) -> list[float]:
        """Validation loss sums; under DDP both train and validation sums reduced over ranks."""
        val = []
        if run.world > 1:
            _broadcast_buffers(module)
        if len(val_idx):
            idx = np.asarray(val_idx)[run.rank :: run.world]
            val = _loss_sums(module, data, idx, 1024, run.device, precision)
        if run.world > 1:  # one reduction of both: train and validation sums and counts
            both = _all_reduce([*train, *val], run.device)
            train[:], val = both[: len(train)], both[len(train) :]
        return val

    def _record(
        self,
        run: _Run,
        module: TRVAEModule,
        epoch: int,
        train: list[float],
        val: list[float],
        has_val: bool,
    ) -> float:
        """Append the epoch to the history, step the schedule, keep the best weights."""
        record = {"epoch": epoch, "lr": run.optimizer.param_groups[0]["lr"]}
        record.update(_means("train", train))
        if has_val:
            record.update(_means("val", val))
        monitor = record["val_loss"] if has_val else record["train_loss"]
        run.history.append(record)
        optim.step(run.scheduler, monitor)
        if monitor < run.best_loss - self.min_delta:
            run.best_loss, run.best_epoch = monitor, epoch
            run.best_state = copy.deepcopy(module.state_dict())
        return monitor

    def _checkpoint(
        self, run: _Run, module: TRVAEModule, on_epoch_end: Callable[[dict], None]
    ) -> None:
        """Hand the training state (:mod:`trvae.train.checkpoint`) to ``on_epoch_end``, rank 0."""
        state = {
            "module": module.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "lr_schedule": self.lr_schedule,
            "history": run.history,
            "best_loss": run.best_loss,
            "best_epoch": run.best_epoch,
            "best_module": run.best_state,
            "numpy_rng": run.rng.bit_generator.state,
            **checkpoint.rng_state(run.device),
        }
        if run.world > 1:  # every rank's RNGs, for an exact resume
            ranks: list = [None] * run.world
            mine = {
                **checkpoint.rng_state(run.device),
                "numpy_rng": run.rank_rng.bit_generator.state,
            }
            dist.all_gather_object(ranks, mine)
            state.update(world_size=run.world, rank_rng=ranks)
        if run.rank == 0:
            on_epoch_end(state)


@dataclass
class _Run:
    """The mutable state of one :meth:`TrainingPlan.fit` call."""

    device: torch.device
    rank: int
    world: int
    rng: np.random.Generator
    rank_rng: np.random.Generator
    optimizer: torch.optim.Optimizer
    scheduler: optim.Schedule
    alpha: float
    step: Callable
    history: list[dict] = field(default_factory=list)
    best_loss: float = np.inf
    best_state: dict | None = None
    best_epoch: int = -1
    start: int = 0

    @property
    def sum_device(self) -> torch.device:
        """Where loss sums accumulate (float64: no sync per batch); MPS has no float64."""
        return torch.device("cpu") if self.device.type == "mps" else self.device


def _module_device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def _loss_sums(
    module: TRVAEModule,
    data: CellData,
    idx: np.ndarray,
    batch_size: int,
    device: torch.device | str | None = None,
    precision: str = "32",
) -> list[float]:
    """Sums over cells ``idx`` of the loss terms (in :data:`LOSS_TERMS` order), then the count."""
    module.eval()
    device = torch.device(device) if device is not None else _module_device(module)
    sums = dict.fromkeys(LOSS_TERMS, 0.0)
    for batch in data.batches(idx, batch_size):
        x, cond, lib = (t.to(device, non_blocking=True) for t in batch)
        with autocast(precision, device):
            terms = module.loss(x, cond, lib)
        for key in LOSS_TERMS:
            sums[key] += float(terms[key]) * len(x)
    return [*sums.values(), len(idx)]


def evaluate(*args, **kwargs) -> dict:
    """Mean loss terms over cells ``idx`` in evaluation mode (posterior mean, no dropout).

    Takes the arguments of the sums it divides, ``(module, data, idx, batch_size,
    device=None, precision="32")``: batches of ``batch_size`` go to ``device``, by default the
    device of ``module``'s parameters; ``precision`` as in :class:`TrainingPlan`.
    """
    return _means(None, _loss_sums(*args, **kwargs))


def _means(prefix: str | None, totals: list[float]) -> dict[str, float]:
    """``{prefix_term: sum / count}`` from the sums of the loss terms followed by the count."""
    *sums, count = totals
    names = LOSS_TERMS if prefix is None else [f"{prefix}_{k}" for k in LOSS_TERMS]
    return {name: v / max(count, 1) for name, v in zip(names, sums, strict=True)}
