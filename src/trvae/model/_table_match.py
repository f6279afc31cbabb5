"""Read-out tables rebuilt for one ``predict`` call of the quantile read-out: matched to the
predicted cells' state (:mod:`trvae.module.state`: the training groups' target cells weighted
by how alike their source-condition means are to the cells') or to their sequencing depth
(:mod:`trvae.data.depth`)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from trvae.data import depth
from trvae.data.cell_data import CellData
from trvae.module import readout, state


class TableMatchMixin:
    """:meth:`_state_matched_tables` and :meth:`_depth_matched_tables` of
    :class:`~trvae.TRVAE`'s ``predict``."""

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
        train, grouped = self._training_cell_data(), self._training_grouped()
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

    def _depth_matched_tables(
        self,
        data: CellData,
        conditions: list[int],
        seed: int,
        batch_size: int,
        precision: str,
        stored: readout.QuantileTables | None = None,
    ) -> tuple[readout.QuantileTables | None, list[str]]:
        """Read-out tables for the cells ``data`` built from training cells resampled to their
        depth (:mod:`trvae.data.depth`) in each of ``conditions`` whose training cells lie at
        another depth, and the names of those conditions; ``(None, [])`` when there are none,
        the data are not log-normalised counts or the training data are not at hand.

        The training cells are those of the model's AnnData (at most
        :data:`~trvae.data.depth.POOL_CELLS` per condition, seeded), the cells ``data`` at
        most as many; the other conditions keep their tables in ``stored`` (default: the
        model's)."""
        if self.adata is None or float(self.module.x_min) != 0.0 or len(data) < 2:
            return None, []
        rng = np.random.default_rng([int(seed) % 2**63, 1])
        reference = _sample(np.arange(len(data)), rng)
        ref_depth, ref_counts = _depths(data, reference, batch_size)
        if not ref_counts:
            return None, []
        train = self._training_cell_data()
        codes = train.conditions.numpy()
        pools = [  # only the conditions this prediction reads are measured
            _sample(np.flatnonzero(codes == c), rng) if c in conditions else np.zeros(0, int)
            for c in range(len(self.conditions_))
        ]
        every = np.concatenate(pools)
        order = np.argsort(every, kind="stable")  # on-disk data are read in ascending rows
        in_order, pool_counts = _depths(train, every[order], batch_size)
        if not pool_counts:
            return None, []
        pool_depth = np.empty(len(every))
        pool_depth[order] = in_order
        per_condition, matched, start = [], [], 0
        for code, cells in enumerate(pools):
            own = pool_depth[start : start + len(cells)]
            start += len(cells)
            size = min(len(cells), readout.TABLE_CELLS)
            if len(cells) and depth.depth_differs(own, ref_depth):
                cells = np.sort(depth.resample_to_depth(cells, own, ref_depth, size, rng))
                matched.append(self.conditions_[code])
            else:  # keeps its stored tables
                cells = cells[:0]
            per_condition.append(cells)
        if not matched:
            return None, []
        return self._tables_from(train, per_condition, batch_size, precision, stored), matched

    def _tables_from(
        self,
        train: CellData,
        per_condition: list[np.ndarray],
        batch_size: int,
        precision: str,
        stored: readout.QuantileTables | None = None,
    ) -> readout.QuantileTables:
        """Read-out tables built from the training cells ``per_condition[code]`` (repeats
        allowed) for each condition that has any; the others keep theirs in ``stored``
        (default: the model's)."""
        stored = self.module.readout if stored is None else stored
        edges, table, _ = self._readout_tables(train, per_condition, batch_size, precision)
        keep = torch.tensor([len(cells) == 0 for cells in per_condition])
        edges[keep], table[keep] = stored.edges[keep], stored.tables[keep]
        tables = readout.QuantileTables()
        tables.set(edges, table, stored.detection)
        return tables


def _sample(cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """At most :data:`~trvae.data.depth.POOL_CELLS` of ``cells``, sorted (seeded)."""
    if len(cells) <= depth.POOL_CELLS:
        return cells
    return np.sort(rng.choice(cells, depth.POOL_CELLS, replace=False))


@torch.no_grad()
def _depths(data: CellData, cells: np.ndarray, batch_size: int) -> tuple[np.ndarray, bool]:
    """:func:`~trvae.data.depth.log_depth` of ``cells`` and whether the first batch looks like
    log-normalised counts (:func:`~trvae.data.depth.looks_like_log_counts`)."""
    out, counts = [np.zeros(0)], None
    for x, _, _ in data.batches(cells, batch_size):
        if counts is None:
            counts = depth.looks_like_log_counts(x)
            if not counts:
                return np.zeros(0), False
        out.append(depth.log_depth(x))
    return np.concatenate(out), bool(counts)
