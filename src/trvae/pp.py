"""Preprocessing: the one log-normalisation used everywhere (data sets, benchmarks, scoring)."""

from __future__ import annotations

import numpy as np
from scipy import sparse

#: Counts per cell after normalisation (scanpy's ``normalize_total(target_sum=1e4)``).
TARGET_SUM = 1e4


def log_normalize(counts, target_sum: float = TARGET_SUM, dtype: type = np.float32):
    """``log1p`` of counts scaled to ``target_sum`` per cell; sparse stays sparse.

    The same arithmetic as ``sc.pp.normalize_total(adata, target_sum=target_sum)`` followed by
    ``sc.pp.log1p(adata)``, in ``dtype``; cells without counts stay zero. Real and predicted
    counts both go through this function, so they are normalised identically.

    Parameters
    ----------
    counts
        Cells x genes counts, dense or sparse (a sparse result is CSR).
    target_sum
        Counts per cell after scaling.
    dtype
        ``np.float32`` (default) or ``np.float64``: the precision of the scaling and the log.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.pp import log_normalize
    >>> log_normalize(np.array([[1, 3], [0, 0]]), target_sum=4).round(3)
    array([[0.693, 1.386],
           [0.   , 0.   ]], dtype=float32)
    """
    if sparse.issparse(counts):
        x = sparse.csr_matrix(counts, dtype=dtype, copy=True)
        totals = np.asarray(x.sum(1), dtype=np.float64).ravel()
    else:
        x = np.array(counts, dtype=dtype)
        totals = x.sum(1, dtype=np.float64)
    scale = np.zeros_like(totals)
    np.divide(target_sum, totals, out=scale, where=totals > 0)
    scale = scale.astype(dtype)
    if sparse.issparse(x):
        x = sparse.csr_matrix(sparse.diags(scale) @ x, dtype=dtype)
        x.data = np.log1p(x.data)
        return x
    return np.log1p(x * scale[:, None])
