"""State matching of the quantile read-out's target table (:mod:`trvae.module.state`): the
training groups' target cells weighted by how alike their source-condition means are to the
predicted cells'."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from trvae.data.cell_data import CellData
from trvae.model._readout import _sample
from trvae.module import readout, state


class StateMatchMixin:
    """:meth:`_state_matched_tables` of :class:`~trvae.TRVAE`'s ``predict``."""

    @torch.no_grad()
    def _state_matched_tables(
        self,
        data: CellData,
        target: int,
        seed: int,
        batch_size: int,
        precision: str,
        stored: readout.QuantileTables | None = None,
    ) -> tuple[readout.QuantileTables | None, dict[str, float]]:
        """The target condition's read-out table rebuilt for the cells ``data`` from the
        training groups' target cells, each group weighted by how close its mean in the source
        condition (the cells' most common one other than the target) lies to theirs
        (:mod:`trvae.module.state`), and each group's weight by name; ``(None, {})``
        without ``mmd_group_key``, without the training data (with a warning), without cells
        in another condition than the target, with fewer than two groups that have both
        conditions, or when their means do not differ.

        The means are over at most :data:`~trvae.data.depth.POOL_CELLS` cells of the source
        condition (and of ``data``), the table over
        :data:`~trvae.module.readout.TABLE_CELLS` target cells drawn with replacement (seeded);
        the other conditions keep their tables in ``stored`` (default: the model's)."""
        groups = self.init_params.get("mmd_groups") or []
        if len(groups) < 2 or len(data) == 0:
            return None, {}
        key = self.init_params["mmd_group_key"]
        if self.adata is None or key not in self.adata.obs:
            missing = "no training data" if self.adata is None else f"no obs[{key!r}]"
            warnings.warn(
                f"this model was trained with mmd_group_key but its training data have {missing} "
                "(loaded without adata?): predicting with its stored tables, not state-matched "
                "ones; pass the training data to TRVAE.load, or predict with match_state=False",
                UserWarning,
                stacklevel=4,
            )
            return None, {}
        counts = torch.bincount(data.conditions, minlength=len(self.conditions_))
        counts[target] = 0  # cells already in the target condition are not carried anywhere
        if not bool(counts.any()):
            return None, {}
        source = int(counts.argmax())
        rng = np.random.default_rng([int(seed) % 2**63, 2])
        n_conditions = len(self.conditions_)
        train = self._cell_data(self.adata)
        grouped = self._grouped(train)
        joint = grouped.conditions.numpy()
        group, condition = joint // n_conditions, joint % n_conditions
        own = _sample(np.flatnonzero(data.conditions.numpy() == source), rng)
        pool = _sample(np.flatnonzero(condition == source), rng)
        n_genes = self.module.n_input
        cells_mean = data.code_sums(own, n_conditions, n_genes, batch_size)[source] / len(own)
        sums = grouped.code_sums(pool, len(groups) * n_conditions, n_genes, batch_size)
        group_sums = sums[source::n_conditions]  # row group * n_conditions + source
        n_source = np.bincount(group[pool], minlength=len(groups))
        n_target = np.bincount(group[condition == target], minlength=len(groups))
        paired = np.flatnonzero((n_source > 0) & (n_target > 0))
        if len(paired) < 2:
            return None, {}
        means = group_sums[paired] / torch.from_numpy(n_source[paired]).double()[:, None]
        weights = state.state_weights(means, cells_mean, n_target[paired])
        if weights is None:
            return None, {}
        share = np.zeros(len(groups))  # per target cell of a paired group
        share[paired] = weights / n_target[paired]
        per_cell = np.where(condition == target, share[group], 0.0)
        cells = rng.choice(len(joint), readout.TABLE_CELLS, p=per_cell / per_cell.sum())
        per_condition = [np.sort(cells) if c == target else cells[:0] for c in range(n_conditions)]
        tables = self._tables_from(train, per_condition, batch_size, precision, stored)
        return tables, {groups[code]: float(w) for code, w in zip(paired, weights, strict=True)}
