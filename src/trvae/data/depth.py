"""Sequencing depth of log-normalised cells, read off the level of one count.

A cell normalised to a common total ``s`` and log-transformed holds ``log1p(count * s / L)``
per gene, so its smallest value above 0 is one count and ``expm1`` of it is ``s / L``: the
cell's depth ``L`` up to the common factor. The quantile read-out's tables pool the residuals
of training cells of every depth, but at one expression level a shallow cell has more zeros and
a coarser ladder of values than a deep one (on Kang's counts the monocytes carry about four
times the UMIs of the T cells). With ``predict(..., match_depth=True)``, where the cells to
predict lie at another depth than a condition's training cells (a two-sample
Kolmogorov-Smirnov test), that condition's tables are built from training cells resampled to
the predicted cells' depth (:func:`resample_to_depth`). Data that are not log-normalised counts
(:func:`looks_like_log_counts`) are left alone. Off by default: it helped where cell types
differ in depth (Kang counts) and hurt where cells were only sequenced shallower
(``docs/choosing-parameters.md``).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import ks_2samp

#: Depths differ where the Kolmogorov-Smirnov test rejects equal distributions at this level.
KS_LEVEL = 0.01
#: The resampling weights are the ratio of the two depth histograms on this many bins (the
#: training cells' depth quantiles).
DEPTH_BINS = 10
#: At most this many cells per condition (and of the cells to predict) are measured (seeded).
POOL_CELLS = 16384
#: A cell's values are counts over its smallest one when their ``expm1`` ratios lie this close
#: to integers (at least :data:`COUNT_SHARE` of the values).
COUNT_TOLERANCE, COUNT_SHARE = 0.02, 0.99


def _smallest_positive(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, torch.full_like(x, float("inf"))).min(1).values


def log_depth(x: torch.Tensor) -> np.ndarray:
    """Per cell (row of log-normalised ``x``), ``-log(expm1(smallest value above 0))``: the log
    of its depth up to a common constant; NaN for a cell without values above 0.

    Examples
    --------
    >>> import torch
    >>> counts = torch.tensor([[0.0, 1, 3], [1, 4, 0]])  # each cell holds a count of 1
    >>> x = torch.log1p(counts / counts.sum(1, keepdim=True) * 10)
    >>> np.round(np.exp(log_depth(x)) * 10, 3)  # the library sizes
    array([4., 5.], dtype=float32)
    """
    low = _smallest_positive(x.float())
    depth = -torch.log(torch.expm1(low))
    return torch.where(torch.isfinite(low), depth, torch.nan).cpu().numpy()


def looks_like_log_counts(x: torch.Tensor) -> bool:
    """Whether the rows of ``x`` are log-normalised counts: every value above 0, through
    ``expm1``, an integer multiple of the row's smallest one (to :data:`COUNT_TOLERANCE`, for
    at least :data:`COUNT_SHARE` of the values)."""
    x = x.double()
    low = _smallest_positive(x)
    keep = torch.isfinite(low)
    if not bool(keep.any()):
        return False
    x, low = x[keep], low[keep]
    positive = x > 0
    ratio = (torch.expm1(x) / torch.expm1(low)[:, None])[positive]
    near = (ratio - ratio.round()).abs() <= COUNT_TOLERANCE
    return bool(near.double().mean() >= COUNT_SHARE)


def depth_differs(pool: np.ndarray, reference: np.ndarray) -> bool:
    """Whether the depths ``reference`` (cells to predict) and ``pool`` (training cells of one
    condition) differ: a two-sample KS test at :data:`KS_LEVEL` (NaNs dropped)."""
    pool, reference = pool[np.isfinite(pool)], reference[np.isfinite(reference)]
    if len(pool) < 2 or len(reference) < 2:
        return False
    return bool(ks_2samp(pool, reference).pvalue < KS_LEVEL)


def resample_to_depth(
    cells: np.ndarray,
    pool: np.ndarray,
    reference: np.ndarray,
    size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``size`` of ``cells`` (depths ``pool``) drawn with replacement so that their depths follow
    ``reference``: weights are the ratio of the two histograms on :data:`DEPTH_BINS` bins cut at
    ``pool``'s quantiles (one pseudo-count per bin; a cell without a depth keeps weight 1)."""
    finite = np.isfinite(pool)
    reference = reference[np.isfinite(reference)]
    if not finite.any() or not len(reference):
        return rng.choice(cells, size=size, replace=True)
    cuts = np.quantile(pool[finite], np.linspace(0, 1, DEPTH_BINS + 1)[1:-1])
    pool_bins = np.searchsorted(cuts, pool[finite])
    have = np.bincount(pool_bins, minlength=DEPTH_BINS) + 1.0
    want = np.bincount(np.searchsorted(cuts, reference), minlength=DEPTH_BINS) + 1.0
    ratio = (want / want.sum()) / (have / have.sum())
    weights = np.ones(len(cells))
    weights[finite] = ratio[pool_bins]
    return rng.choice(cells, size=size, replace=True, p=weights / weights.sum())
