"""Batch norm's statistics recomputed after training with the final weights over all training
cells ("precise" batch norm), in place of the running averages of the last steps.

During training each batch norm layer keeps an exponential average of the batches' means and
variances (momentum 0.1: mostly the last ten batches, a few hundred cells, passed through
weights that were still moving). Prediction normalises with these, so what it returns depends
on which cells those batches happened to hold. Recomputing them once, over every training cell
with the weights the model keeps, removes that draw; the cost is one forward pass without
gradients (evidence: ``docs/choosing-parameters.md``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trvae.data.cell_data import CellData
from trvae.train.precision import autocast


@torch.no_grad()
def recompute_statistics(
    module: nn.Module,
    data: CellData,
    idx: np.ndarray,
    batch_size: int,
    device: torch.device,
    generator: np.random.Generator,
    precision: str = "32",
) -> bool:
    """Reset the running statistics of ``module``'s batch norm layers and re-estimate them
    over the cells ``idx`` of ``data`` (training-mode forward passes of ``module.loss``,
    batches of ``batch_size`` shuffled by ``generator`` as in training, each batch counted
    alike: batches in the data's order would miss the variance between the groups that order
    keeps together). Leaves ``module`` in evaluation mode; ``False`` (nothing changed) without
    batch norm layers or with fewer than two cells.

    Examples
    --------
    >>> from trvae.module import TRVAEModule
    >>> x = np.random.default_rng(0).random((64, 5), dtype=np.float32)
    >>> module = TRVAEModule(5, 2, n_latent=2, n_hidden=(4,))
    >>> data, rng = CellData(x, np.arange(64) % 2), np.random.default_rng(0)
    >>> recompute_statistics(module, data, np.arange(64), 32, "cpu", rng)
    True
    """
    layers = [
        layer
        for layer in module.modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats
    ]
    if not layers or len(idx) < 2:
        return False
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average: every batch weighs the same
    module.train()
    try:
        batches = data.batches(
            np.asarray(idx), batch_size, shuffle=True, generator=generator, drop_small_last=True
        )
        for batch in batches:
            x, cond, lib = (t.to(device, non_blocking=True) for t in batch)
            with autocast(precision, torch.device(device)):
                module.loss(x, cond, lib)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        module.eval()
    return True
