"""Training: fit the network on the model's AnnData (one process or DDP), then its noise model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from trvae._errors import TRVAEError, check_integer, check_number
from trvae.data import validation as V
from trvae.data.cell_data import CellData, stratified_split
from trvae.module import readout
from trvae.train import checkpoint
from trvae.train.budget import epoch_budget
from trvae.train.devices import on_device, resolve_devices
from trvae.train.distributed import FitJob, fit_distributed, fit_launched, launched_ddp
from trvae.train.plan import TrainingPlan
from trvae.train.precision import autocast

if TYPE_CHECKING:  # the class these mixins end up in
    from typing_extensions import Self


class TrainingMixin:
    """:meth:`train` for :class:`~trvae.TRVAE`."""

    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 64,
        lr: float = 1e-3,
        early_stopping: bool = True,
        patience: int = 20,
        validation_fraction: float = 0.1,
        seed: int = 0,
        progress_bar: bool = True,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        accelerator: str = "auto",
        devices: int | str = "auto",
        strategy: str = "auto",
        precision: str = "32",
        data_on_device: bool | None = None,
        **plan_kwargs,
    ) -> Self:
        """Fit the model on the AnnData it was created with.

        Parameters
        ----------
        max_epochs
            Upper bound on passes over the cells. Default (``None``): :func:`~trvae.train.budget.
            epoch_budget`, enough epochs to show the network about 150,000 cells (10 to 200;
            twice as many epochs for NB / ZINB, at most 200).
        batch_size, lr, early_stopping, patience
            See :class:`~trvae.train.plan.TrainingPlan`; ``plan_kwargs`` sets its other fields.
        validation_fraction
            Fraction of cells of each condition held out (seeded, shuffled) to monitor the loss,
            pick the best epoch and stop early.
        seed
            Seed of the split, the shuffling and the sampling of z during training.
        checkpoint_dir
            Directory where the training state is written (atomically) after every epoch.
        resume
            Continue from the training state in ``checkpoint_dir``.
        accelerator
            ``"auto"`` (a CUDA GPU when available, else CPU), ``"cpu"``, ``"gpu"``/``"cuda"``
            or ``"mps"``. The module is moved there for training and back to CPU afterwards.
            Only the CPU runs bit-for-bit reproducibly.
        devices
            Number of devices, one training process each, or ``"auto"`` (every visible GPU with
            ``strategy="ddp"`` on CUDA, else 1). With 2 or more, training runs with DDP in
            spawned processes (see :mod:`trvae.train.distributed`): ``batch_size`` is per process,
            the MMD compares the conditions within each process's batch, and a script must keep
            its code under ``if __name__ == "__main__":``.
        strategy
            ``"auto"`` (DDP when ``devices >= 2``) or ``"ddp"``; trvae implements DDP with
            ``torch.distributed`` itself, not with Lightning. In a process started by
            ``torchrun`` (``RANK``, ``WORLD_SIZE``, ... set, ``WORLD_SIZE > 1``), ``"ddp"`` (or
            ``devices >= 2``) joins that job instead of spawning processes, on one or several
            machines; every rank then returns the same trained model.
        precision
            ``"32"`` (default) or ``"bf16-mixed"``: forward passes under bfloat16 autocast,
            weights, loss and MMD in float32 (:mod:`trvae.train.precision`).
        data_on_device
            Copy the expression matrix to the training device once and draw every mini-batch
            there (:mod:`trvae.data.device_data`): ``None`` (default) on a CUDA device when it
            takes at most half of its free memory, ``True`` always (an in-memory matrix only),
            ``False`` never. Data left on the host are prefetched by a background thread on
            CUDA. The batches, and so the fit, are the same either way.

        Examples
        --------
        >>> import trvae
        >>> data = trvae.datasets.simulate_perturbation(n_genes=20, cells_per_group=10)
        >>> model = trvae.TRVAE(data, "condition", n_hidden=(16,))
        >>> history = model.train(max_epochs=3, progress_bar=False, accelerator="cpu").history
        >>> list(history["epoch"])
        [0, 1, 2]
        """
        seed = check_integer("seed", seed, minimum=0)
        validation_fraction = check_number(
            "validation_fraction", validation_fraction, 0, 1, high_open=True
        )
        budget = max_epochs is None
        plan = TrainingPlan(
            max_epochs=1 if budget else max_epochs,  # the budget needs the data: set below
            batch_size=batch_size,
            lr=lr,
            early_stopping=early_stopping,
            patience=patience,
            precision=precision,
            **plan_kwargs,
        )
        setup = resolve_devices(accelerator, devices, strategy)
        launch = launched_ddp(devices, strategy)
        data = self._cell_data(self.adata)
        codes = data.conditions.numpy()
        V.check_conditions(pd.Series(codes), self.condition_key, min_cells=2)
        train_data = self._grouped(data)
        train_idx, val_idx = stratified_split(
            train_data.conditions.numpy(), validation_fraction, seed
        )
        if budget:
            plan.max_epochs = epoch_budget(len(data), self.init_params["likelihood"])
        on_epoch_end, resume_state = None, None
        if checkpoint_dir is not None:
            checkpoint_dir = Path(checkpoint_dir)
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            if resume and (checkpoint_dir / checkpoint.FILENAME).exists():
                resume_state = checkpoint.load(checkpoint_dir, self._build_module())
            self._write_config(checkpoint_dir)
            on_epoch_end = checkpoint.writer(checkpoint_dir)
        elif resume:
            raise TRVAEError("resume=True needs the checkpoint_dir of the interrupted run")
        fit = FitJob(
            *(plan, self.module, train_data, train_idx, val_idx),
            *(seed, progress_bar, on_epoch_end, resume_state, data_on_device),
        )
        if launch is not None:  # torchrun: this process is one rank of the job
            self.history = fit_launched(fit, setup.device_type, launch)
        elif setup.distributed:  # rank 0's best weights come back into self.module, on CPU
            self.history = fit_distributed(fit, setup)
        else:
            device = setup.device()
            with on_device(self.module, device):  # the noise model and save work on CPU
                self.history = fit.run(device)
        self._fit_noise_model(data, train_idx, precision=plan.precision)
        if self.init_params["likelihood"] == "mse":
            self._fit_mean_shifts(train_data)
        self.is_trained = True
        return self

    def _grouped(self, data: CellData) -> CellData:
        """``data`` with joint (group, condition) codes when the MMD is grouped, else itself."""
        groups = self.init_params.get("mmd_groups")
        if not groups:
            return data
        key = self.init_params["mmd_group_key"]
        labels = V.check_obs_key(self.adata, key, "mmd_group_key").astype(str)
        unknown = sorted(set(labels) - set(groups))
        if unknown:
            raise TRVAEError(f"adata.obs[{key!r}] has groups unknown to the model: {unknown}")
        codes = pd.Categorical(labels, categories=groups).codes.astype(np.int64)
        joint = codes * len(self.conditions_) + data.conditions.numpy()
        return CellData(data.x, joint, data.gene_order, row_map=data.row_map)

    @torch.no_grad()
    def _fit_mean_shifts(self, data: CellData, batch_size: int = 4096) -> None:
        """The mean shifts between conditions (:mod:`trvae.module.anchor`) and their local
        ratios (:mod:`trvae.module.local_shift`) from all cells of ``data``, whose codes are
        ``group * n_conditions + condition`` (:meth:`_grouped`)."""
        n_conditions = len(self.conditions_)
        n_codes = n_conditions * max(1, len(self.init_params.get("mmd_groups") or []))
        every = np.arange(len(data))
        sums, sq_sums = data.code_sums(every, n_codes, self.module.n_input, batch_size, True)
        counts = torch.bincount(data.conditions, minlength=n_codes)
        self.module.mean_shifts.set(sums, counts, n_conditions, sq_sums)
        self._fit_local_ratios(data, sums, batch_size=1024)

    @torch.no_grad()
    def _fit_noise_model(
        self, data: CellData, idx: np.ndarray, batch_size: int = 1024, precision: str = "32"
    ) -> None:
        """Record the per-gene residual SD (the MSE head's noise) and the smallest value.

        Count likelihoods need neither a pass nor an SD: their floor is 0 counts.
        """
        self.module.eval()
        if self.init_params["likelihood"] != "mse":
            self.module.x_min.fill_(0.0)
            return
        sq_sum = torch.zeros(self.module.n_input, dtype=torch.float64)
        x_min = float("inf")
        for x, c, lib in data.batches(idx, batch_size):
            with autocast(precision, "cpu"):  # the module's outputs are float32
                z = self.module.inference(x, c)["z_mean"]
                mean = self.module.generative(z, c, lib)["mean"]
            sq_sum += ((x - mean) ** 2).sum(0, dtype=torch.float64)
            x_min = min(x_min, float(x.min()))
        self.module.residual_sd.copy_((sq_sum / max(len(idx), 1)).sqrt())
        self.module.x_min.fill_(x_min)
        self._fit_readout_tables(data, idx, batch_size, precision)

    def _fit_readout_tables(
        self, data: CellData, idx: np.ndarray, batch_size: int = 1024, precision: str = "32"
    ) -> None:
        """The level-binned residual quantiles of ``predict(mode="quantile")``, per condition,
        from at most :data:`~trvae.module.readout.TABLE_CELLS` of its cells ``idx`` (seeded)."""
        rng = np.random.default_rng(self.init_params["seed"])
        codes = data.conditions.numpy()[idx]
        per_condition = []
        for code in range(len(self.conditions_)):
            cells = idx[codes == code]
            if len(cells) > readout.TABLE_CELLS:
                cells = np.sort(rng.choice(cells, readout.TABLE_CELLS, replace=False))
            per_condition.append(cells)
        self.module.readout.set(*self._readout_tables(data, per_condition, batch_size, precision))

    @torch.no_grad()
    def _readout_tables(
        self, data: CellData, per_condition: list[np.ndarray], batch_size: int, precision: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edges, tables and detection levels (:meth:`~trvae.module.readout.QuantileTables.set`)
        from the cells ``per_condition[code]`` of each condition (repeats allowed)."""
        edges, tables = [], []
        x_min = float(self.module.x_min)
        detection = torch.full((self.module.n_input,), float("inf"))
        for cells in per_condition:
            # filled in place: a list of batches and its concatenation would hold both at once
            recon = torch.zeros(len(cells), self.module.n_input)
            residual = torch.zeros(len(cells), self.module.n_input)
            start = 0
            for x, c, lib in data.batches(cells, batch_size):
                with autocast(precision, "cpu"):
                    z = self.module.inference(x, c)["z_mean"]
                    mean = self.module.generative(z, c, lib)["mean"]
                rows = slice(start, start + len(x))
                start += len(x)
                recon[rows] = mean
                residual[rows] = x - mean
                detection = torch.minimum(detection, readout.detection_levels(x.float(), x_min))
            cut, table = readout.condition_tables(recon, residual)
            edges.append(cut)
            tables.append(table)
        detection = torch.where(torch.isfinite(detection), detection, x_min)
        return torch.stack(edges), torch.stack(tables), detection
