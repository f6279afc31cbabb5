"""The training plan: optimisation, validation, early stopping and learning-rate schedule."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from trvae._data import CellData
from trvae.module import TRVAEModule

LOSS_TERMS = ("loss", "reconstruction", "kl", "mmd")


@dataclass
class TrainingPlan:
    """How a :class:`~trvae.module.TRVAEModule` is fitted.

    Parameters
    ----------
    max_epochs
        Upper bound on passes over the training cells.
    batch_size
        Cells per mini-batch; the MMD penalty compares the conditions inside each batch.
    lr, weight_decay
        Adam's learning rate and L2 weight decay.
    early_stopping, patience, min_delta
        Stop when the validation loss has not improved by ``min_delta`` for ``patience`` epochs;
        the weights of the best epoch are restored in any case.
    lr_patience, lr_factor
        Multiply the learning rate by ``lr_factor`` after ``lr_patience`` epochs without
        improvement of the validation loss.
    kl_warmup
        Epochs over which the KL weight ramps linearly from 0 to ``alpha``.
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
    kl_warmup: int = 0

    def fit(
        self,
        module: TRVAEModule,
        data: CellData,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        seed: int = 0,
        progress_bar: bool = True,
        on_epoch_end: Callable[[dict], None] | None = None,
        resume_state: dict | None = None,
    ) -> pd.DataFrame:
        """Train ``module`` in place and return the per-epoch history.

        ``on_epoch_end`` receives the training state after every epoch (for checkpoints);
        ``resume_state`` is such a state, to continue an interrupted run.
        """
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        optimizer = _adam(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=self.lr_factor, patience=self.lr_patience
        )
        alpha = module.alpha
        history: list[dict] = []
        best_loss, best_state, best_epoch, start = np.inf, None, -1, 0
        if resume_state is not None:
            module.load_state_dict(resume_state["module"])
            optimizer.load_state_dict(resume_state["optimizer"])
            scheduler.load_state_dict(resume_state["scheduler"])
            history = list(resume_state["history"])
            best_loss, best_epoch = resume_state["best_loss"], resume_state["best_epoch"]
            best_state = resume_state["best_module"]
            start = len(history)
            rng.bit_generator.state = resume_state["numpy_rng"]
            torch.set_rng_state(resume_state["torch_rng"])

        bar = tqdm(
            range(start, self.max_epochs), desc="trVAE", unit="epoch", disable=not progress_bar
        )
        try:
            for epoch in bar:
                if self.kl_warmup > 0:
                    module.alpha = alpha * min(1.0, (epoch + 1) / self.kl_warmup)
                module.train()
                sums = dict.fromkeys(LOSS_TERMS, 0.0)
                n_seen = 0
                for x, cond, lib in data.batches(
                    train_idx, self.batch_size, shuffle=True, generator=rng, drop_small_last=True
                ):
                    terms = module.loss(x, cond, lib)
                    optimizer.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                    optimizer.step()
                    for key in LOSS_TERMS:
                        sums[key] += terms[key].item() * len(x)
                    n_seen += len(x)
                record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
                record.update({f"train_{k}": v / max(n_seen, 1) for k, v in sums.items()})
                module.alpha = alpha
                if len(val_idx):
                    record.update(
                        {f"val_{k}": v for k, v in evaluate(module, data, val_idx, 1024).items()}
                    )
                monitor = record["val_loss"] if len(val_idx) else record["train_loss"]
                history.append(record)
                scheduler.step(monitor)
                if monitor < best_loss - self.min_delta:
                    best_loss, best_epoch = monitor, epoch
                    best_state = copy.deepcopy(module.state_dict())
                bar.set_postfix(loss=f"{monitor:.1f}", best=best_epoch)
                if on_epoch_end is not None:
                    on_epoch_end(
                        {
                            "module": module.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "history": history,
                            "best_loss": best_loss,
                            "best_epoch": best_epoch,
                            "best_module": best_state,
                            "numpy_rng": rng.bit_generator.state,
                            "torch_rng": torch.get_rng_state(),
                        }
                    )
                if self.early_stopping and epoch - best_epoch >= self.patience:
                    break
        finally:
            module.alpha = alpha
            bar.close()
        if best_state is not None:
            module.load_state_dict(best_state)
        module.eval()
        frame = pd.DataFrame(history)
        frame.attrs["best_epoch"] = best_epoch
        return frame


def _adam(params, **kwargs) -> torch.optim.Adam:
    """Adam with the fused implementation (one kernel for all parameters) where torch has it.

    On CPU (torch >= 2.4) it makes the optimiser step 6-10x faster: measured 8.6 -> 1.1 ms for
    the benchmark network (256-256, 2000 genes) and 93 -> 11 ms for the paper's (800-800, 7000
    genes), 1 thread. Older torch falls back to the default implementation.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, **kwargs)


@torch.no_grad()
def evaluate(module: TRVAEModule, data: CellData, idx: np.ndarray, batch_size: int) -> dict:
    """Mean loss terms over cells ``idx`` in evaluation mode (posterior mean, no dropout)."""
    module.eval()
    sums = dict.fromkeys(LOSS_TERMS, 0.0)
    for x, cond, lib in data.batches(idx, batch_size):
        terms = module.loss(x, cond, lib)
        for key in LOSS_TERMS:
            sums[key] += float(terms[key]) * len(x)
    return {k: v / len(idx) for k, v in sums.items()}
