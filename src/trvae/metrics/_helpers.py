"""Input handling shared by the metrics: dense float64 matrices, checked pairs, R²."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse
from scipy.stats import linregress

from trvae._errors import TRVAEError

MMD_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def _dense(x: Any) -> np.ndarray:
    """Return ``x`` as a 2-D float64 array (cells x genes); 1-D input becomes one column."""
    arr = x.toarray() if sparse.issparse(x) else np.asarray(x)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise TRVAEError(f"expected a cells x genes matrix, got an array of shape {arr.shape}")
    return arr


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _dense(a), _dense(b)
    if a.shape[1] != b.shape[1]:
        raise TRVAEError(f"gene dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise TRVAEError("both matrices need at least one cell")
    return a, b


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    """Squared Pearson r of ``linregress(x, y)``; NaN when either vector is constant."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(linregress(x, y).rvalue ** 2)


def _stat(x: np.ndarray, stat: str) -> np.ndarray:
    if stat == "mean":
        return x.mean(axis=0)
    if stat == "var":
        return x.var(axis=0)
    raise TRVAEError(f"stat must be 'mean' or 'var', got {stat!r}")
