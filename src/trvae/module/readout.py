"""The quantile read-out of :meth:`trvae.TRVAE.predict` (``mode="quantile"``, MSE likelihood).

The residual read-out ``x + m_t - m_s`` keeps each cell's own deviation from the decoder's mean
but carries it over unchanged, so a prediction is as spread as its source cells: the variance
of a response (responders and non-responders, a wider target distribution) is lost. The
quantile read-out carries each cell's *rank* instead of its deviation:

1. **Tables** (:func:`condition_tables`, once after training, on at most :data:`TABLE_CELLS`
   training cells per condition). For each condition ``c``: the reconstruction ``m`` (decoder
   mean at the posterior mean of z, own condition) and the residual ``r = x - m``. Per gene,
   ``m`` is cut into :data:`N_BINS` level bins at that condition's own ``1/B .. (B-1)/B``
   quantiles (``edges``); each bin stores :data:`N_QUANTILES` quantiles of ``r`` at levels
   ``0 .. 1`` (linear interpolation), or the condition's all-cell quantiles when it holds
   fewer than :data:`MIN_BIN_CELLS` cells.
2. **Level of a cell** (:meth:`~QuantileTables.source_levels`). With ``m_s``, ``m_t`` the
   decoder means for the source and the target condition, ``u = F_s(x - m_s)``: the
   piecewise-linear CDF of the source condition's residuals in the bin of ``m_s``. A value at
   the floor (``x <= x_min``, the zeros of log-expression) only says that the cell lies
   somewhere below the floor, so its level is spread uniformly: ``u = V * F_s(x_min - m_s)``,
   ``V ~ U(0, 1)`` (:func:`floor_noise`, seeded by the seed and the batch's first cell).
3. **Mean match** (:meth:`~QuantileTables.match_shift`). Per gene a shift ``eta_g`` of every
   level on the logit scale (:func:`shift_levels`), found by bisection in
   ``[-SHIFT_BOUND, SHIFT_BOUND]``, makes the mean over the predicted cells of the read-out
   equal the residual read-out's mean before its floor, ``mean(x + m_t - m_s)`` (at
   least ``x_min``): the residual read-out's mean is the better-measured one, the quantile
   read-out's spread the better one. The decoder's change ``m_t - m_s`` is a change of the
   expected value, so it is averaged unfloored: flooring each cell first
   (``max(x_min, x + m_t - m_s)``) raises the mean of a gene that falls, as its zeros cannot
   fall further (on Kang counts the unfloored mean lowered the E-distance on PCA in 6 of 7
   held-out cell types, ``docs/choosing-parameters.md``).
   A shift on the logit scale moves the middle levels most and never piles cells onto the
   table's ends, where an additive shift of the levels (``clip(u + eta_g, 0, 1)``, until
   2026-12-06) put every cell above ``1 - eta_g`` at the top value: on the development sets
   the logit shift raised the variance R² and lowered the per-gene Wasserstein distance on
   each of six sets (``docs/choosing-parameters.md``).
4. **Read-out** (:meth:`~QuantileTables.target_values`):
   ``max(x_min, m_t + Q_t(shift_levels(u, eta_g)))``, with ``Q_t`` the target condition's
   residual quantile function in the bin of ``m_t``, then snapped to the data's floor
   (:func:`snap_to_detection`): log-normalised counts hold nothing between 0 and one count,
   but a residual quantile of a cell at the floor read at another cell's level lands there
   (the floor atom is smeared: on Kang counts 40-45 % of the predicted top-gene values fell
   between 0 and 0.5, none of the real ones). Per gene, a value below the midpoint between
   ``x_min`` and the smallest training value above it (``detection``) becomes ``x_min``, one
   between the midpoint and ``detection`` becomes ``detection``. The snap is monotone, so the
   mean match of step 3 runs on snapped values and still finds ``eta_g``, to within one
   value's jump (``(detection - x_min) / n`` for ``n`` cells). Data without a gap
   above the floor (continuous values) have ``detection`` next to ``x_min``: nothing moves.

5. **State matching** (:mod:`trvae.module.state`, ``predict(match_state=True)``): the target
   condition's table rebuilt per prediction from the training groups that resemble the
   predicted cells.
6. **Non-zero matching** (:mod:`trvae.module.nonzero`, ``predict(match_nonzero=True)``):
   each gene's fraction of cells above the floor moved half-way toward the predicted cells'
   own curve from mean to non-zero fraction, the values above the floor keeping their shape
   and the gene its mean.

Tables are held by :class:`QuantileTables` (buffers ``edges``, conditions x (B - 1) x genes,
``tables``, conditions x B x Q x genes, and ``detection``, genes, float32), a submodule of
:class:`~trvae.module.TRVAEModule`: saved with the weights and moved with the module. Models
saved without them still load; :attr:`QuantileTables.built` is then ``False`` (saved without
``detection``: no snap).

Everything here is vectorised over cells and genes; the only loops run over bins, bisection
steps and blocks of genes (to bound memory).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from trvae.module.quantiles import binned_quantiles, column_quantiles

#: Level bins per gene and condition (cut at the condition's own quantiles of the mean).
N_BINS = 8
#: Quantile levels stored per bin, evenly spaced over ``[0, 1]``.
N_QUANTILES = 33
#: A bin with fewer training cells uses the condition's all-cell quantiles.
MIN_BIN_CELLS = 15
#: At most this many training cells per condition build the tables (seeded subsample).
TABLE_CELLS = 4096
#: At most this many predicted cells set the mean match (seeded subsample; exact below).
MATCH_CELLS = 4096
#: Bisection steps of the mean match (``eta`` to ``2 * SHIFT_BOUND / 2**25``).
MATCH_STEPS = 25
#: The mean match's logit shift lies in ``[-SHIFT_BOUND, SHIFT_BOUND]``.
SHIFT_BOUND = 12.0
#: Levels are kept within ``[LEVEL_EPS, 1 - LEVEL_EPS]`` before a logit shift.
LEVEL_EPS = 1e-4
#: Genes per block where a block's memory is cells x genes x levels.
GENE_BLOCK = 1024
#: Entries (cells x genes) per block of :func:`condition_tables`: its sort keys and their
#: temporaries take some 80 bytes per entry (4096 cells x 1024 genes: 370 MB, now 100 MB).
TABLE_BLOCK_ENTRIES = 1 << 20
#: Entries per chunk of :func:`cdf_at`'s search and :func:`quantile_at`'s look-up.
CDF_CHUNK = 1 << 18


# ---------------------------------------------------------------------------- tables
def quantile_levels(n_quantiles: int = N_QUANTILES) -> torch.Tensor:
    """The levels of the stored quantiles, ``0, 1/(Q-1), ..., 1`` (float64)."""
    return torch.linspace(0.0, 1.0, n_quantiles, dtype=torch.float64)


def condition_tables(
    recon: torch.Tensor,
    residual: torch.Tensor,
    n_bins: int = N_BINS,
    n_quantiles: int = N_QUANTILES,
    min_cells: int = MIN_BIN_CELLS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One condition's bin edges (``(B - 1) x genes``) and tables (``B x Q x genes``).

    ``recon`` and ``residual`` (cells x genes): the reconstruction of that condition's training
    cells and ``x - recon``. Computed in blocks of :data:`TABLE_BLOCK_ENTRIES` entries.
    """
    if n_bins < 1 or n_quantiles < 2:
        raise ValueError("condition_tables needs n_bins >= 1 and n_quantiles >= 2")
    recon, residual = recon.float(), residual.float()
    n_genes = recon.shape[1]
    cuts = torch.arange(1, n_bins, dtype=torch.float64) / n_bins
    levels = quantile_levels(n_quantiles)
    edges = recon.new_zeros(n_bins - 1, n_genes)
    tables = recon.new_zeros(n_bins, n_quantiles, n_genes)
    block = max(1, TABLE_BLOCK_ENTRIES // max(1, len(recon)))
    for g0 in range(0, n_genes, block):
        cols = slice(g0, g0 + block)
        block_edges = column_quantiles(recon[:, cols], cuts)
        bins = assign_bins(recon[:, cols], block_edges)
        per_bin, counts = binned_quantiles(residual[:, cols], bins, n_bins, levels)
        short = (counts < min_cells).any(0)  # genes with a bin that takes the pooled table
        if bool(short.any()):
            pooled = column_quantiles(residual[:, cols][:, short], levels)
            enough = (counts[:, short] >= min_cells)[:, None, :]
            per_bin[:, :, short] = torch.where(enough, per_bin[:, :, short], pooled[None])
        edges[:, cols] = block_edges
        tables[:, :, cols] = per_bin
    return edges, tables


def assign_bins(
    mean: torch.Tensor, edges: torch.Tensor, cond: torch.Tensor | None = None
) -> torch.Tensor:
    """The level bin of each entry of ``mean`` (cells x genes): how many edges lie below it.

    ``edges``: ``(B - 1) x genes``, or ``C x (B - 1) x genes`` with ``cond`` the condition
    (row of ``edges``) of each cell. Returns int64, cells x genes, in ``[0, B)``.
    """
    small = edges.shape[-2] < 255  # counted in bytes, a third of the time of int64
    bins = torch.zeros(mean.shape, dtype=torch.uint8 if small else torch.long, device=mean.device)
    for k in range(edges.shape[-2]):
        bins += mean > (edges[k] if cond is None else edges[:, k][cond])
    return bins.long()


# ---------------------------------------------------------------------------- look-ups
def _rows(tables: torch.Tensor, cond: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Flat index into ``tables`` (C x B x Q x G) of level 0 of each (cell, gene)'s column."""
    _, n_bins, n_q, n_genes = tables.shape
    genes = torch.arange(n_genes, device=bins.device)
    return ((cond[:, None] * n_bins + bins) * n_q) * n_genes + genes


def quantile_at(tables: torch.Tensor, rows: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``Q(u)``: the piecewise-linear quantile function of each entry's column at level ``u``."""
    flat, n_q, n_genes = tables.reshape(-1), tables.shape[2], tables.shape[3]
    parts = []
    chunks = zip(rows.reshape(-1).split(CDF_CHUNK), u.reshape(-1).split(CDF_CHUNK), strict=True)
    for rows_part, u_part in chunks:  # in cache-sized chunks, as cdf_at
        pos = u_part.clamp(0.0, 1.0) * (n_q - 1)
        lo = pos.floor().long().clamp_max(n_q - 2)
        weight = pos - lo
        index = rows_part + lo * n_genes
        below = flat.take(index)
        parts.append(below + weight * (flat.take(index + n_genes) - below))
    return torch.cat(parts).reshape(u.shape) if parts else u.new_zeros(u.shape)


def cdf_at(tables: torch.Tensor, rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``F(v)``: the inverse of :func:`quantile_at` (the highest level of a tied value).

    A binary search (steps of 32, 16, ..., 1 for ``Q = 33``) for the number of stored
    quantiles ``<= v``, then linear interpolation; 0 below the smallest value, 1 from the
    largest.
    """
    n_q, n_genes = tables.shape[2], tables.shape[3]
    # the search runs on a copy padded with +inf to 2P levels (P the largest power of two
    # <= Q), so that no step needs a bound check; the probes are those of a search on the
    # table itself, which matters where rounding leaves a table a hair out of order
    width = 1 << (n_q.bit_length() - 1)
    padded = tables.new_full((*tables.shape[:2], 2 * width, n_genes), float("inf"))
    padded[:, :, :n_q] = tables
    flat, padded, parts = tables.reshape(-1), padded.reshape(-1), []
    # in chunks whose index tensors stay in the CPU's cache (2-3x faster than all at once)
    chunks = zip(rows.reshape(-1).split(CDF_CHUNK), v.reshape(-1).split(CDF_CHUNK), strict=True)
    for rows_part, v_part in chunks:
        start = rows_part + torch.div(rows_part, n_q * n_genes, rounding_mode="floor") * (
            (2 * width - n_q) * n_genes
        )
        start -= n_genes  # flat index of level -1 in the padded table: level count - 1 below
        found, step = start.clone(), width
        while step:
            found += (padded.take(found + step * n_genes) <= v_part) * (step * n_genes)
            step >>= 1
        count = torch.div(found - start, n_genes, rounding_mode="floor")
        inner = count.clamp(1, n_q - 1)  # v lies in [T[count - 1], T[count])
        lower = flat.take(rows_part + (inner - 1) * n_genes)
        upper = flat.take(rows_part + inner * n_genes)
        frac = ((v_part - lower) / (upper - lower).clamp_min(1e-30)).clamp(0.0, 1.0)
        u = (inner - 1 + frac) / (n_q - 1)
        parts.append(torch.where(count == 0, 0.0, torch.where(count == n_q, 1.0, u)))
    return torch.cat(parts).reshape(v.shape) if parts else v.new_zeros(v.shape)


# ---------------------------------------------------------------------------- read-out
def shift_levels(u: Tensor, eta: Tensor | float) -> Tensor:
    """The levels ``u`` shifted by ``eta`` on the logit scale:
    ``sigmoid(logit(u) + eta)``, ``u`` first kept within ``[LEVEL_EPS, 1 - LEVEL_EPS]``.

    Examples
    --------
    >>> import torch
    >>> shift_levels(torch.tensor([0.1, 0.5, 0.9]), 1.0).round(decimals=3)
    tensor([0.2320, 0.7310, 0.9610])
    """
    return torch.sigmoid(level_logits(u) + eta)


def level_logits(u: Tensor) -> Tensor:
    """``logit(u)``, ``u`` first kept within ``[LEVEL_EPS, 1 - LEVEL_EPS]``: what
    :func:`shift_levels` shifts."""
    return torch.logit(u.clamp(LEVEL_EPS, 1 - LEVEL_EPS))


def floor_noise(seed: int, start: int, shape: tuple[int, int], device=None) -> torch.Tensor:
    """``V ~ U(0, 1)`` for a batch whose first cell is number ``start``: seeded by both."""
    rng = np.random.default_rng([int(seed) % 2**63, int(start)])
    return torch.from_numpy(rng.random(shape, dtype=np.float32)).to(device)


def snap_to_detection(values: Tensor, x_min: float | Tensor, detection: Tensor | None) -> Tensor:
    """``values`` (>= ``x_min``) between ``x_min`` and ``detection`` (one per gene, the smallest
    value above the floor) moved to the nearer of the two; unchanged without ``detection``."""
    if detection is None:
        return values
    detection = detection.to(values.device)
    low = values < (detection + x_min) / 2
    return torch.where(low, torch.full_like(values, float(x_min)), torch.maximum(values, detection))


def read_values(
    tables: Tensor,
    rows: Tensor,
    mean: Tensor,
    level: Tensor,
    x_min: float | Tensor,
    detection: Tensor | None,
) -> Tensor:
    """``max(x_min, mean + Q(level))`` (:func:`quantile_at`) snapped to the floor
    (:func:`snap_to_detection`): the read-out's values, one formula for the read-out and its
    mean match."""
    values = (mean + quantile_at(tables, rows, level)).clamp_min(x_min)
    return snap_to_detection(values, x_min, detection)


def detection_levels(x: Tensor, x_min: float) -> Tensor:
    """Per gene (column of ``x``), the smallest value above ``x_min``; ``inf`` where none."""
    above = torch.where(x > x_min, x, torch.full_like(x, float("inf")))
    return above.min(0).values if len(x) else torch.full((x.shape[1],), float("inf"))


# ---------------------------------------------------------------------------- storage
class QuantileTables(nn.Module):
    """Holder of the read-out's ``edges`` and ``tables`` as buffers (``None`` until built).

    Loading a state dict adopts whatever shapes it holds, and a state dict without them (a
    model saved before the tables existed, or a count model) leaves them unbuilt.
    """

    _NAMES = ("edges", "tables")

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("edges", None)
        self.register_buffer("tables", None)
        self.register_buffer("detection", None)

    @property
    def built(self) -> bool:
        return self.edges is not None and self.tables is not None

    def set(
        self, edges: torch.Tensor, tables: torch.Tensor, detection: torch.Tensor | None = None
    ) -> None:
        """Store ``edges`` (C x (B - 1) x G), ``tables`` (C x B x Q x G) and ``detection`` (G,
        :func:`snap_to_detection`; ``None``: no snap), checked."""
        n_cond, n_bins, n_q, n_genes = tables.shape
        if edges.shape != (n_cond, n_bins - 1, n_genes) or n_q < 2:
            raise ValueError(f"edges {tuple(edges.shape)} do not fit tables {tuple(tables.shape)}")
        if detection is not None and detection.shape != (n_genes,):
            raise ValueError(f"detection {tuple(detection.shape)} does not fit {n_genes} genes")
        self.edges = edges.detach().float().contiguous()
        self.tables = tables.detach().float().contiguous()
        self.detection = None if detection is None else detection.detach().float().contiguous()

    def rows(self, mean: Tensor, cond: Tensor, cols: slice = slice(None)) -> Tensor:
        """:func:`_rows` of the bins of ``mean`` (of genes ``cols``) in conditions ``cond``.

        For all genes, rows into :attr:`tables`; for a block ``cols``, rows into
        ``tables[..., cols].contiguous()``.
        """
        bins = assign_bins(mean, self.edges[..., cols], cond)
        return _rows(self.tables[..., cols], cond, bins)

    def block(
        self, mean: Tensor, cond: Tensor, cols: slice
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """For genes ``cols`` (``mean``: those genes' columns): their tables (contiguous), the
        :meth:`rows` into them and their ``detection``, what :func:`read_values` takes."""
        detection = None if self.detection is None else self.detection[cols]
        return self.tables[..., cols].contiguous(), self.rows(mean, cond, cols), detection

    def source_levels(
        self, x: Tensor, mean: Tensor, cond: Tensor, x_min: float | Tensor, noise: Tensor
    ) -> Tensor:
        """``u = F_s(x - m_s)`` in the source condition's bin of ``mean`` (``m_s``); at the floor
        (``x <= x_min``) ``noise * F_s(x_min - m_s)``. ``cond``: each cell's source condition."""
        rows = self.rows(mean, cond)
        floored = x <= x_min
        u = cdf_at(self.tables, rows, x.clamp_min(x_min) - mean)
        return torch.where(floored, noise * u, u)

    def target_values(
        self,
        u: Tensor,
        mean: Tensor,
        cond: Tensor,
        x_min: float | Tensor,
        shift: Tensor | None = None,
    ) -> Tensor:
        """``max(x_min, m_t + Q_t(shift_levels(u, shift)))`` in the target condition's bin of
        ``mean`` (``m_t``); ``shift``: one per gene (:meth:`match_shift`); none: ``Q_t(u)``.
        In blocks of :data:`GENE_BLOCK` genes (int64 look-up rows of all at once: 2x the output)."""
        level = u if shift is None else shift_levels(u, shift)
        out = torch.empty_like(mean)
        for g0 in range(0, mean.shape[1], GENE_BLOCK):
            cols = slice(g0, g0 + GENE_BLOCK)
            sub, rows, detection = self.block(mean[:, cols], cond, cols)
            out[:, cols] = read_values(sub, rows, mean[:, cols], level[:, cols], x_min, detection)
        return out

    def match_shift(
        self,
        u: Tensor,
        mean: Tensor,
        cond: Tensor,
        x_min: float | Tensor,
        reference: Tensor,
        steps: int = MATCH_STEPS,
    ) -> Tensor:
        """The per-gene logit shift ``eta`` of the levels (:func:`shift_levels`), in
        ``[-SHIFT_BOUND, SHIFT_BOUND]``, that makes the mean over the cells of
        :meth:`target_values` (of ``u, mean, cond, x_min``) equal ``reference`` (one value per
        gene), by bisection.

        The read-out's mean increases with ``eta``; a ``reference`` out of reach gives
        ``-SHIFT_BOUND`` or ``SHIFT_BOUND``. Computed in blocks of :data:`GENE_BLOCK` genes.
        """
        n_genes = u.shape[1]
        shift = torch.zeros(n_genes, dtype=u.dtype, device=u.device)
        for g0 in range(0, n_genes, GENE_BLOCK):
            cols = slice(g0, g0 + GENE_BLOCK)
            m, level, ref = mean[:, cols], u[:, cols], reference[cols]
            sub, rows, detection = self.block(m, cond, cols)
            lo, hi = torch.full_like(ref, -SHIFT_BOUND), torch.full_like(ref, SHIFT_BOUND)
            logit = level_logits(level)  # shift_levels(level, mid), its logit once
            for _ in range(steps):
                mid = (lo + hi) / 2
                value = read_values(sub, rows, m, torch.sigmoid(logit + mid), x_min, detection)
                value = value.mean(0)
                up = value < ref
                lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
            shift[cols] = (lo + hi) / 2
        return shift

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        found = {name: state_dict.get(prefix + name) for name in self._NAMES}
        if all(value is None for value in found.values()):
            self.edges = self.tables = None
            return
        if any(value is None for value in found.values()):
            errors.append(f"{prefix}: read-out tables need both {self._NAMES}")
            return
        try:
            self.set(found["edges"], found["tables"], state_dict.get(prefix + "detection"))
        except ValueError as err:
            errors.append(f"{prefix}: {err}")
