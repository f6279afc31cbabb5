"""The local mean shift of the quantile read-out's anchor (:mod:`trvae.module.local_shift`):
its ratio per pair of conditions, fitted after training, and its target per ``predict`` call."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from trvae.data.cell_data import CellData
from trvae.module.local_shift import local_ratio, neighbour_weights, sample_pool


class LocalShiftMixin:
    """:meth:`_fit_local_ratios` and :meth:`_local_deltas` of :class:`~trvae.TRVAE`."""

    @torch.no_grad()
    def _fit_local_ratios(self, data: CellData, sums: torch.Tensor, batch_size: int) -> None:
        """Store the local ratio of every ordered pair of conditions with at least three paired
        groups (NaN for the others): ``data`` has codes ``group * n_conditions + condition``
        (:meth:`_grouped`), ``sums`` their per-code sums over all cells."""
        n_cond = len(self.conditions_)
        ratios = torch.full((n_cond, n_cond), float("nan"))
        if len(self.init_params.get("mmd_groups") or []) >= 3:
            plain, group, counts = self._split_codes(data)
            pool, z = self._local_pool(plain, batch_size)
            codes, pool_group = plain.conditions.numpy()[pool], group[pool]
            sums = sums.double().reshape(len(counts), n_cond, -1)
            means = sums / counts.clamp_min(1)[..., None]
            for s in range(n_cond):
                for t in range(n_cond):
                    paired = np.flatnonzero(((counts[:, s] > 0) & (counts[:, t] > 0)).numpy())
                    if s == t or len(paired) < 3:
                        continue
                    rows, held = [], []  # per held-out group: its local estimate's two rows
                    for h in paired:
                        query = (pool_group == h) & (codes == s)
                        if query.any():
                            others = paired[paired != h]
                            rows += _pair_weights(codes, pool_group, z, z[query], others, s, t)
                            held.append(h)
                    if not held:
                        continue
                    estimates = self._weighted_means(plain, pool, rows, batch_size)
                    local = estimates[0::2] - estimates[1::2]
                    total_t, total_s = sums[paired, t].sum(0), sums[paired, s].sum(0)
                    n_t, n_s = counts[paired, t].sum(), counts[paired, s].sum()
                    pooled = (total_t - sums[held, t]) / (n_t - counts[held, t])[:, None]
                    pooled -= (total_s - sums[held, s]) / (n_s - counts[held, s])[:, None]
                    truth = means[held, t] - means[held, s]
                    shift = self.module.mean_shifts.shifts[s, t]
                    ratios[s, t] = local_ratio(local, pooled, truth, shift)
        self.module.mean_shifts.set_local(ratios)

    @torch.no_grad()
    def _local_deltas(
        self, data: CellData, cells: np.ndarray, target: int, anchors: dict[int, float]
    ) -> tuple[torch.Tensor | None, list[str]]:
        """Per source condition code (conditions x genes): the mean over the cells ``cells``
        of ``data`` in that condition of their local shift to ``target``, minus the pooled
        shift, 0 on the quiet genes; and the labels of the source conditions that take it (an
        anchor above 0 and a local ratio below 1). ``(None, [])`` when none does, or without
        the training data (with a warning)."""
        shifts = self.module.mean_shifts
        codes = data.conditions.numpy()[cells]
        chosen = [
            s
            for s, weight in anchors.items()
            if weight > 0 and shifts.local(s, target) < 1 and (codes == s).any()
        ]
        key = self.init_params.get("mmd_group_key")
        if not chosen:
            return None, []
        if self.adata is None or key not in self.adata.obs:
            warnings.warn(
                "this model's anchor takes the local mean shift, which needs its training data "
                "(loaded without adata?): anchoring to the pooled mean shift; pass the training "
                "data to TRVAE.load",
                UserWarning,
                stacklevel=4,
            )
            return None, []
        plain, group, counts = self._split_codes(self._training_grouped())
        pool, z = self._reused("local_pool", lambda: self._local_pool(plain, 1024))
        pool_codes = plain.conditions.numpy()[pool]
        rows = []
        for s in chosen:
            paired = np.flatnonzero(((counts[:, s] > 0) & (counts[:, target] > 0)).numpy())
            query = self._latent(data, cells[codes == s], 1024)
            rows += _pair_weights(pool_codes, group[pool], z, query, paired, s, target)
        local = self._weighted_means(plain, pool, rows, 1024)
        deltas = torch.zeros(len(self.conditions_), self.module.n_input)
        for i, s in enumerate(chosen):
            delta = local[2 * i] - local[2 * i + 1] - shifts.shifts[s, target].double()
            if shifts.quiet is not None:
                delta[shifts.quiet[s, target]] = 0.0
            deltas[s] = delta.float()
        return deltas, [self.conditions_[s] for s in chosen]

    def _split_codes(self, data: CellData) -> tuple[CellData, np.ndarray, torch.Tensor]:
        """``data`` (codes ``group * n_conditions + condition``) with plain condition codes,
        each cell's group code and the cell counts per group and condition."""
        n_cond = len(self.conditions_)
        joint = data.conditions.numpy()
        n_groups = max(1, len(self.init_params.get("mmd_groups") or []))
        counts = torch.bincount(data.conditions, minlength=n_groups * n_cond)
        plain = CellData(data.x, joint % n_cond, data.gene_order, row_map=data.row_map)
        return plain, joint // n_cond, counts.reshape(n_groups, n_cond).double()

    def _local_pool(self, plain: CellData, batch_size: int) -> tuple[np.ndarray, torch.Tensor]:
        """The training cells searched for neighbours (at most
        :data:`~trvae.module.local_shift.LOCAL_CELLS` per condition, seeded by the model's
        seed) and their z."""
        rng = np.random.default_rng([int(self.init_params["seed"]) % 2**63, 3])
        codes = plain.conditions.numpy()
        per_condition = [np.flatnonzero(codes == c) for c in range(len(self.conditions_))]
        pool = np.sort(np.concatenate([sample_pool(cells, rng) for cells in per_condition]))
        return pool, self._latent(plain, pool, batch_size)

    def _latent(self, data: CellData, cells: np.ndarray, batch_size: int) -> torch.Tensor:
        """Posterior means of z of ``cells``, encoded with their own condition (on the CPU,
        :meth:`_outputs`)."""

        def fn(x, c, _):
            return self.module.inference(x, c)["z_mean"]

        parts = self._outputs(data, fn, batch_size, "cpu", indices=cells)
        return torch.cat([torch.zeros(0, self.module.n_latent), *parts])

    def _weighted_means(
        self, plain: CellData, pool: np.ndarray, rows: list[torch.Tensor], batch_size: int
    ) -> torch.Tensor:
        """``rows`` (weights over ``pool``) times the pool cells' expression (rows x genes,
        float64), in batches of cells."""
        out = torch.zeros(len(rows), self.module.n_input, dtype=torch.float64)
        if not rows:
            return out
        weights, start = torch.stack(rows), 0
        for x, _, _ in plain.batches(pool, batch_size):
            out += weights[:, start : start + len(x)] @ x.double()
            start += len(x)
        return out


def _pair_weights(
    codes: np.ndarray,
    groups: np.ndarray,
    z: torch.Tensor,
    query: torch.Tensor,
    among: np.ndarray,
    source: int,
    target: int,
) -> list[torch.Tensor]:
    """Two weight rows over the pool (its cells' condition ``codes``, group codes ``groups``
    and ``z``): :func:`neighbour_weights` of ``query`` among the pool cells of the groups
    ``among`` in condition ``target``, then in ``source``."""
    rows = []
    for condition in (target, source):
        cells = np.flatnonzero(np.isin(groups, among) & (codes == condition))
        row = torch.zeros(len(codes), dtype=torch.float64)
        row[cells] = neighbour_weights(query, z[cells])
        rows.append(row)
    return rows
