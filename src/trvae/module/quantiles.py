"""Per-column quantiles of a cells x genes tensor, overall or within per-entry bins (numpy's
``"linear"`` method), for the quantile read-out's tables
(:mod:`trvae.module.readout`)."""

from __future__ import annotations

import numpy as np
import torch


def binned_quantiles(
    values: torch.Tensor, bins: torch.Tensor, n_bins: int, levels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column quantiles of ``values`` within each bin (numpy's ``"linear"`` method).

    ``values`` (cells x genes), ``bins`` (same shape, integers in ``[0, n_bins)``), ``levels``
    (``L`` numbers in ``[0, 1]``). Returns the quantiles (``n_bins x L x genes``; 0 for an
    empty bin) and the number of cells in each bin (``n_bins x genes``).
    """
    n, n_genes = values.shape
    bins = bins.long()
    counts = torch.zeros(n_bins, n_genes, dtype=torch.long, device=values.device)
    counts.scatter_add_(0, bins, torch.ones_like(bins))
    if n == 0:
        return values.new_zeros(n_bins, len(levels), n_genes), counts
    # genes x cells, so that every sort runs along contiguous memory; sorted by bin, then by
    # value: each bin's values, ascending, one block after another
    by_gene = values.t().contiguous()
    if n_bins == 1:
        grouped = _sorted_rows(by_gene)
    elif by_gene.dtype == torch.float32:  # one sort of (bin, value) keys, decoded back
        keys = _sorted_rows((bins.t() << 32) | _ordered_bits(by_gene))
        grouped = _from_ordered_bits(keys & 0xFFFFFFFF)
    else:
        order = by_gene.argsort(dim=1)
        bins = bins.t().contiguous()
        order = order.gather(1, bins.gather(1, order).argsort(dim=1, stable=True))
        grouped = by_gene.gather(1, order)
    return _read_sorted(grouped, counts, levels), counts


def _sorted_rows(rows: torch.Tensor) -> torch.Tensor:
    """Each row ascending: on the CPU by numpy's vectorised sort (6-14x torch's there)."""
    if rows.device.type == "cpu":
        return torch.from_numpy(np.sort(rows.detach().numpy(), axis=1))
    return rows.sort(dim=1).values


def _ordered_bits(values: torch.Tensor) -> torch.Tensor:
    """float32 ``values`` as int64 in ``[0, 2^32)`` in the same order (``-0.0`` just below
    ``0.0``): the bits of a negative number flipped, those of the others with the sign bit
    set."""
    bits = values.view(torch.int32).long()
    return torch.where(bits < 0, ~bits & 0x7FFFFFFF, bits | 0x80000000)


def _from_ordered_bits(keys: torch.Tensor) -> torch.Tensor:
    """The float32 numbers whose :func:`_ordered_bits` are ``keys``."""
    bits = torch.where(keys >= 0x80000000, keys - 0x80000000, ~keys)
    return bits.to(torch.int32).view(torch.float32)


def _read_sorted(grouped: torch.Tensor, counts: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The quantiles (``n_bins x L x genes``) of ``grouped`` (genes x cells: each bin's values
    ascending, one block after another, ``counts`` (``n_bins x genes``) in each)."""
    n_genes, n = grouped.shape
    n_bins = counts.shape[0]
    starts = counts.cumsum(0) - counts
    last = (counts - 1).clamp_min(0)[:, None, :]  # n_bins x 1 x genes
    pos = levels.to(grouped.device, torch.float64)[None, :, None] * last
    lo = pos.floor().long()
    weight = (pos - lo).to(grouped.dtype)
    hi = torch.minimum(lo + 1, last)
    first = starts[:, None, :]

    def at(offset: torch.Tensor) -> torch.Tensor:
        index = (first + offset).clamp_max(n - 1)  # n_bins x L x genes
        picked = grouped.gather(1, index.permute(2, 0, 1).reshape(n_genes, -1))
        return picked.reshape(n_genes, n_bins, -1).permute(1, 2, 0)

    out = (1 - weight) * at(lo) + weight * at(hi)
    return torch.where(counts[:, None, :] > 0, out, torch.zeros_like(out))


def column_quantiles(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Per-column quantiles of ``values`` (cells x genes) at ``levels``: ``L x genes``."""
    one_bin = torch.zeros(1, dtype=torch.long, device=values.device).expand(values.shape)
    return binned_quantiles(values, one_bin, 1, levels)[0][0]
