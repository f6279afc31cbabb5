"""Non-zero matching of the quantile read-out (:mod:`trvae.module.readout`, step 6).

``predict(match_nonzero=True)``, the default. In log-normalised counts the fraction of a gene's
cells above the floor follows the gene's mean along one curve per cell population, set by its
sequencing depth: on Kang counts the held-out cell type's control curve (isotonic over all
genes), read at the real stimulated means, gave the stimulated non-zero fractions of the
top-100 genes with R² 0.94-1.00, where the read-out's, from tables pooled over other groups,
had 0.39-0.85: it kept a floor atom in genes a response lifts in nearly every cell, which
inflates their variance. So per gene (:class:`NonzeroMap`) the non-zero fraction moves
:data:`NONZERO_WEIGHT` of the way from the read-out's own to the predicted cells' curve at
the gene's matched mean: cells are ranked, the lowest go to the floor (or the highest of
the floor leave it), the values above the floor are re-spread over the new number of cells
with the same quantiles, and an offset restores the mean. Chosen on the development sets
(Kang counts and the five synthetic sets: ``docs/choosing-parameters.md``).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import isotonic_regression
from torch import Tensor

from trvae.module.quantiles import column_quantiles
from trvae.module.readout import GENE_BLOCK, _rows, cdf_at, quantile_at

#: How far each gene's non-zero fraction moves from the read-out's own toward the curve.
NONZERO_WEIGHT = 0.5
#: Bisection steps of the offset that restores each gene's mean.
OFFSET_STEPS = 30
#: Quantile levels per gene of the fitted cells' values (:class:`NonzeroMap`).
MAP_LEVELS = 257


def nonzero_curve(x: Tensor, x_min: float) -> tuple[np.ndarray, np.ndarray]:
    """Knots ``(means, fractions)`` of the cells ``x``'s curve from a gene's mean to its
    fraction of cells above ``x_min``: the isotonic (non-decreasing, least-squares) fit of the
    genes' fractions on their means, from ``(x_min, 0)``.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[0.0, 1.0, 3.0, 2.0], [0.0, 1.0, 0.0, 2.0]])
    >>> [k.round(2).tolist() for k in nonzero_curve(x, 0.0)]  # means 0, 1, 1.5, 2
    [[0.0, 0.0, 1.0, 1.5, 2.0], [0.0, 0.0, 0.75, 0.75, 1.0]]
    """
    x = x.double()
    means = x.mean(0).cpu().numpy()
    fractions = (x > x_min).double().mean(0).cpu().numpy()
    order = np.argsort(means, kind="stable")
    fitted = isotonic_regression(fractions[order]).x
    return np.r_[x_min, means[order]], np.r_[0.0, fitted]


def target_fractions(
    current: Tensor, means: Tensor, curve: tuple[np.ndarray, np.ndarray]
) -> Tensor:
    """Per gene the non-zero fraction to reach: :data:`NONZERO_WEIGHT` of the way from
    ``current`` to ``curve`` (:func:`nonzero_curve`) at ``means``."""
    on_curve = np.interp(means.double().cpu().numpy(), *curve)
    on_curve = torch.as_tensor(on_curve, dtype=current.dtype, device=current.device)
    return current + NONZERO_WEIGHT * (on_curve - current)


def nonzero_fraction(values: Tensor, x_min: float | Tensor) -> Tensor:
    """Per gene (column) the fraction of ``values`` above ``x_min``."""
    return (values > x_min).to(values.dtype).mean(0)


def add_offset(values: Tensor, x_min: float | Tensor, detection: Tensor, offset: Tensor) -> Tensor:
    """``values`` above ``x_min`` moved by ``offset`` (one per gene), at least ``detection``;
    the floor stays the floor."""
    moved = torch.maximum(values + offset, detection.to(values.device))
    return torch.where(values > x_min, moved, values)


def match_offset(
    values: Tensor,
    x_min: float | Tensor,
    detection: Tensor,
    reference: Tensor,
    steps: int = OFFSET_STEPS,
) -> Tensor:
    """The per-gene ``offset`` of :func:`add_offset` that makes the mean over the cells equal
    ``reference``, by bisection (the mean increases with it); a gene with no value above the
    floor gets 0.

    Examples
    --------
    >>> import torch
    >>> values = torch.tensor([[0.0], [1.0], [3.0]])
    >>> match_offset(values, 0.0, torch.tensor([0.5]), torch.tensor([2.0])).round(decimals=3)
    tensor([1.])
    """
    span = values.amax(0) - float(x_min) + (reference - float(x_min)).abs() + 1.0
    lo, hi = -span, span.clone()
    for _ in range(steps):
        mid = (lo + hi) / 2
        up = add_offset(values, x_min, detection, mid).mean(0) < reference
        lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
    any_above = (values > x_min).any(0)
    return torch.where(any_above, (lo + hi) / 2, torch.zeros_like(lo))


def tie_noise(seed: int, start: int, shape: tuple[int, int], device=None) -> Tensor:
    """``U(0, 1)`` per entry of a batch whose first cell is number ``start`` (seeded by both,
    a stream of its own): where in a run of tied values, or in the floor, a cell ranks."""
    rng = np.random.default_rng([int(seed) % 2**63, int(start), 2])
    return torch.from_numpy(rng.random(shape, dtype=np.float32)).to(device)


class NonzeroMap:
    """Per gene a monotone map of the read-out's values that sets the non-zero fraction to
    ``goal`` and keeps the shape of the values above the floor.

    A cell's rank ``r`` among the fitted cells (the CDF of their values, ties and the floor
    split by ``noise``) gives the floor below ``cut``, the rank of the fitted cells that
    leaves the fraction ``goal`` of them above it, and else the value the fitted cells have at
    rank ``1 - current + current * (r - cut) / (1 - cut)``, plus an offset that restores the
    mean (:func:`add_offset`). Genes whose fraction moves by less than one fitted cell, or
    that have no value above the floor, are left alone. Fitted and applied in blocks of
    :data:`~trvae.module.readout.GENE_BLOCK` genes (each gene's map is its own; a block's
    int64 look-up rows and sort take some 50 bytes per entry).
    """

    def __init__(
        self,
        values: Tensor,
        noise: Tensor,
        x_min: float,
        detection: Tensor,
        reference: Tensor,
        curve: tuple[np.ndarray, np.ndarray],
    ) -> None:
        levels = torch.linspace(0.0, 1.0, MAP_LEVELS, dtype=torch.float64)
        self.x_min, self.detection = x_min, detection
        self.current = nonzero_fraction(values, x_min)
        goal = target_fractions(self.current, reference, curve)
        n, n_genes = values.shape
        self.moves = ((goal - self.current).abs() * n >= 1) & (self.current > 0)
        self.table = values.new_zeros(1, 1, MAP_LEVELS, n_genes)
        self.cut = torch.zeros_like(self.current)
        self.offset = torch.zeros_like(self.current)
        #: the fitted cells' values mapped: what calling the map on them returns
        self.mapped = torch.empty_like(values)
        for cols in _blocks(n_genes):
            block = values[:, cols]
            self.table[..., cols] = column_quantiles(block, levels)[None, None]  # 1 x 1 x K x G
            # the cut between the k-th and (k + 1)-th smallest rank: k = (1 - goal) n below
            rank, rows = self._rank(block, noise[:, cols], cols)
            ends = torch.ones_like(rank[:1])
            padded = torch.cat([0 * ends, _sorted_columns(rank), ends])
            below = ((1 - goal[cols]) * n).round().long().clamp(0, n)[None]
            self.cut[cols] = ((padded.gather(0, below) + padded.gather(0, below + 1)) / 2)[0]
            del padded
            mapped = self._map(block, rank, rows, cols)
            offset = match_offset(mapped, x_min, detection[cols], reference[cols])
            self.offset[cols] = torch.where(self.moves[cols], offset, self.offset[cols])
            self.mapped[:, cols] = self._map(block, rank, rows, cols)

    def _rank(self, values: Tensor, noise: Tensor, cols: slice) -> tuple[Tensor, Tensor]:
        """Each entry's rank among the fitted cells (genes ``cols``), and its rows in
        ``table[..., cols]``."""
        table = self.table[..., cols].contiguous().to(values.device)
        cond = torch.zeros(len(values), dtype=torch.long, device=values.device)
        rows = _rows(table, cond, torch.zeros_like(values, dtype=torch.long))
        highest = cdf_at(table, rows, values)
        lowest = cdf_at(table, rows, torch.nextafter(values, torch.full_like(values, -np.inf)))
        return lowest + noise * (highest - lowest), rows

    def __call__(self, values: Tensor, noise: Tensor) -> Tensor:
        """The mapped ``values`` (cells x genes; ``noise`` as :func:`tie_noise`)."""
        out = torch.empty_like(values)
        for cols in _blocks(values.shape[1]):
            block = values[:, cols]
            out[:, cols] = self._map(block, *self._rank(block, noise[:, cols], cols), cols)
        return out

    def _map(self, values: Tensor, rank: Tensor, rows: Tensor, cols: slice) -> Tensor:
        """:meth:`__call__` of ``values`` (genes ``cols``) whose :meth:`_rank` is ``rank,
        rows``."""
        device = values.device
        current, cut = self.current[cols].to(device), self.cut[cols].to(device)
        level = 1 - current + current * (rank - cut) / (1 - cut).clamp_min(1e-12)
        table = self.table[..., cols].contiguous().to(device)
        mapped = quantile_at(table, rows, level.clamp(0.0, 1.0))
        offset, detection = self.offset[cols].to(device), self.detection[cols].to(device)
        mapped = torch.maximum(mapped + offset, detection)
        mapped = torch.where(rank < cut, torch.full_like(values, self.x_min), mapped)
        return torch.where(self.moves[cols].to(device), mapped, values)


def _blocks(n_genes: int) -> list[slice]:
    """Consecutive slices of at most :data:`~trvae.module.readout.GENE_BLOCK` genes."""
    return [slice(g0, g0 + GENE_BLOCK) for g0 in range(0, n_genes, GENE_BLOCK)]


def _sorted_columns(values: Tensor) -> Tensor:
    """Each column ascending (values only): on the CPU by numpy's sort, without torch's int64
    indices."""
    if values.device.type == "cpu":
        return torch.from_numpy(np.sort(values.numpy(), axis=0))
    return values.sort(0).values
