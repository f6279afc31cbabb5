"""Batched forward passes: latent codes and the MMD layer, and the batch loop under
``predict`` and the read-outs."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from anndata import AnnData

from trvae._errors import check_integer
from trvae.data.cell_data import CellData
from trvae.train.devices import on_device, resolve_devices
from trvae.train.precision import autocast, check_precision


class InferenceMixin:
    """:meth:`get_latent` and :meth:`get_mmd_layer` for :class:`~trvae.TRVAE`, and the batch
    loop :meth:`_outputs` they and ``predict`` share."""

    @torch.no_grad()
    def _outputs(
        self,
        data: CellData,
        fn,
        batch_size: int,
        accelerator: str,
        precision: str = "32",
        indices: np.ndarray | None = None,
    ) -> Iterator[torch.Tensor]:
        """``fn(x, condition, library)`` over ``data`` (its cells ``indices``, default all) in
        batches, on ``accelerator``'s device (the model goes there in eval mode for the call
        and comes back to the CPU), at ``precision`` (:mod:`trvae.train.precision`); float32
        results."""
        device = resolve_devices(accelerator, 1).device()
        precision = check_precision(precision)
        batch_size = check_integer("batch_size", batch_size)
        indices = np.arange(len(data)) if indices is None else indices
        with on_device(self.module.eval(), device):
            for batch in data.batches(indices, batch_size):
                with autocast(precision, device):
                    out = fn(*(t.to(device, non_blocking=True) for t in batch))
                yield out.float()

    def _run(
        self, data: CellData, fn, batch_size: int, accelerator: str, precision: str = "32"
    ) -> np.ndarray:
        """The batches of :meth:`_outputs` copied straight into one float32 array."""
        result, start = np.empty((0, 0), dtype=np.float32), 0
        for chunk in self._outputs(data, fn, batch_size, accelerator, precision):
            if start == 0:
                result = np.empty((len(data), chunk.shape[1]), dtype=np.float32)
            torch.from_numpy(result[start : start + len(chunk)]).copy_(chunk)
            start += len(chunk)
        return result

    def get_latent(
        self,
        adata: AnnData,
        batch_size: int = 1024,
        accelerator: str = "auto",
        precision: str = "32",
    ) -> np.ndarray:
        """Posterior mean of z for each cell, encoded with its own condition (deterministic).

        ``accelerator`` and ``precision`` as in :meth:`train` (``"auto"``: a GPU when there is
        one; ``"bf16-mixed"``: bfloat16 autocast, float32 results).

        Examples
        --------
        >>> import trvae
        >>> adata = trvae.datasets.simulate_perturbation(n_genes=20, cells_per_group=10)
        >>> model = trvae.TRVAE(adata, "condition", n_latent=3)
        >>> model.get_latent(adata, accelerator="cpu").shape
        (100, 3)
        """

        def fn(x, c, _):
            return self.module.inference(x, c)["z_mean"]

        return self._run(self._cell_data(adata), fn, batch_size, accelerator, precision)

    def get_mmd_layer(
        self,
        adata: AnnData,
        condition: str | None = None,
        batch_size: int = 1024,
        accelerator: str = "auto",
        precision: str = "32",
    ) -> np.ndarray:
        """The decoder's first-layer output y, on which the MMD acts.

        Cells are encoded with their own condition; y is decoded with ``condition`` when
        given, else with the cell's own condition. ``accelerator`` and ``precision`` as in
        :meth:`train`.

        Examples
        --------
        >>> import trvae
        >>> cells = trvae.datasets.simulate_perturbation(n_genes=20, cells_per_group=10)
        >>> y = trvae.TRVAE(cells, "condition", n_mmd=16).get_mmd_layer(cells, accelerator="cpu")
        >>> y.shape
        (100, 16)
        """
        data = self._cell_data(adata)
        target = None if condition is None else self._code(condition)

        def fn(x, c, _):
            z = self.module.inference(x, c)["z_mean"]
            s = c if target is None else torch.full_like(c, target)
            return self.module.generative(z, s, torch.ones(len(x), device=x.device))["y"]

        return self._run(data, fn, batch_size, accelerator, precision)
