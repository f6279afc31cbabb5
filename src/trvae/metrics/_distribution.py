"""Distances between the predicted and the real cells' distributions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist

from trvae.metrics._helpers import MMD_SCALES, _dense, _pair, _r2


def energy_distance(a: Any, b: Any) -> float:
    """Energy distance (E-distance) between two samples, as in scPerturBench / pertpy.

    ``2 * mean ||a_i - b_j|| - mean ||a_i - a_j|| - mean ||b_i - b_j||`` with Euclidean
    distances. The within-sample means run over *all* ordered pairs, including ``i == j``
    (V-statistic, as pertpy's ``Edistance``), so identical samples give exactly 0 and the value
    is never negative. Memory is O(n_a * n_b + n_a² + n_b²).

    Parameters
    ----------
    a, b
        Samples x features matrices (dense or sparse); a 1-D array is a set of 1-D points.

    Returns
    -------
    float
        The E-distance (symmetric in ``a`` and ``b``).

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import energy_distance
    >>> a = np.random.default_rng(0).normal(size=(100, 2))
    >>> round(energy_distance(a, a), 6), bool(energy_distance(a, a + 3) > 1)
    (0.0, True)
    """
    a, b = _pair(a, b)
    return float(2 * cdist(a, b).mean() - cdist(a, a).mean() - cdist(b, b).mean())


def wasserstein_genes(pred: Any, real: Any) -> float:
    """Mean over genes of the 1-D Wasserstein (earth mover's) distance between the predicted
    and real values of each gene.

    A distribution metric per gene: it sees spread, zeros and bimodality, not only the mean
    (a prediction shifted by a constant ``d`` from the real cells scores ``|d|``).

    Parameters
    ----------
    pred, real
        Cells x genes matrices (dense or sparse) over the same genes; the cell counts may differ.

    Returns
    -------
    float
        ``mean_g W1(pred[:, g], real[:, g])`` (:func:`scipy.stats.wasserstein_distance`).

    Examples
    --------
    >>> import numpy as np
    >>> wasserstein_genes(np.array([[0.0], [1.0]]), np.array([[2.0], [3.0]]))
    2.0
    """
    from scipy.stats import wasserstein_distance

    pred, real = _pair(pred, real)
    return float(
        np.mean([wasserstein_distance(pred[:, g], real[:, g]) for g in range(pred.shape[1])])
    )


def nonzero_fraction(x: Any, threshold: float = 0.0) -> np.ndarray:
    """Per gene, the fraction of cells whose value exceeds ``threshold`` (0: non-zero cells).

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import nonzero_fraction
    >>> nonzero_fraction(np.array([[0, 1], [2, 3]]))
    array([0.5, 1. ])
    """
    return (_dense(x) > threshold).mean(axis=0)


def r2_nonzero(pred: Any, real: Any, threshold: float = 0.0) -> float:
    """R² between the per-gene fractions of expressing cells (values above ``threshold``) of
    predicted and real cells.

    Returns
    -------
    float
        ``linregress(frac(pred), frac(real)).rvalue ** 2``; NaN when either is constant.

    Examples
    --------
    >>> import numpy as np
    >>> real = np.array([[0, 1, 1], [0, 0, 1]])
    >>> round(r2_nonzero(real, real), 6)
    1.0
    """
    pred, real = _pair(pred, real)
    return _r2(nonzero_fraction(pred, threshold), nonzero_fraction(real, threshold))


def mmd_rbf(a: Any, b: Any, gammas: Sequence[float] | None = None) -> float:
    """Squared maximum mean discrepancy with a multi-scale RBF kernel (biased V-statistic).

    ``MMD² = mean K(a, a) + mean K(b, b) - 2 mean K(a, b)`` with all pairs including
    ``i == j``, averaged over kernels ``K(x, y) = exp(-gamma * ||x - y||²)``. By default the
    bandwidths are ``h = s * median`` for ``s`` in ``(0.25, 0.5, 1, 2, 4)``, where ``median`` is
    the median squared Euclidean distance over distinct pairs of the pooled sample (median
    heuristic), and ``gamma = 1 / h`` (``median`` falls back to 1 when it is 0).

    Parameters
    ----------
    a, b
        Samples x features matrices (dense or sparse); a 1-D array is a set of 1-D points.
    gammas
        Explicit kernel parameters ``gamma``, overriding the median heuristic.

    Returns
    -------
    float
        The squared MMD, clipped at 0 against round-off.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import mmd_rbf
    >>> a = np.random.default_rng(0).normal(size=(100, 2))
    >>> round(mmd_rbf(a, a), 6), bool(mmd_rbf(a, a + 3) > mmd_rbf(a, a + 0.1))
    (0.0, True)
    """
    a, b = _pair(a, b)
    n = a.shape[0]
    d2 = cdist(np.vstack([a, b]), np.vstack([a, b]), "sqeuclidean")
    if gammas is None:
        iu = np.triu_indices(d2.shape[0], k=1)
        med = float(np.median(d2[iu])) if iu[0].size else 0.0
        gammas = [1.0 / (s * (med if med > 0 else 1.0)) for s in MMD_SCALES]
    daa, dbb, dab = d2[:n, :n], d2[n:, n:], d2[:n, n:]
    vals = [
        np.exp(-g * daa).mean() + np.exp(-g * dbb).mean() - 2 * np.exp(-g * dab).mean()
        for g in gammas
    ]
    return max(0.0, float(np.mean(vals)))
