"""One input-validation layer for train, predict, load and the command line.

Every check raises :class:`trvae.TRVAEError` with a message that names the key, value or gene at
fault. Nothing here modifies the caller's AnnData.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import anndata
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from trvae._errors import TRVAEError

COUNT_LIKELIHOODS = ("nb", "zinb")


def check_adata(adata: object, what: str = "adata") -> AnnData:
    """The argument is a non-empty AnnData."""
    if not isinstance(adata, AnnData):
        raise TRVAEError(f"{what} must be an AnnData object, got {type(adata).__name__}")
    if adata.n_obs == 0:
        raise TRVAEError(f"{what} has no cells (empty AnnData or empty selection)")
    if adata.n_vars == 0:
        raise TRVAEError(f"{what} has no genes")
    return adata


def check_obs_key(adata: AnnData, key: str, what: str = "condition_key") -> pd.Series:
    """``key`` is a column of ``adata.obs`` without missing values; returns it as strings."""
    if key not in adata.obs.columns:
        have = ", ".join(map(repr, adata.obs.columns[:20])) or "none"
        raise TRVAEError(f"{what} {key!r} is not a column of adata.obs (columns: {have})")
    values = adata.obs[key]
    if values.isna().any():
        raise TRVAEError(f"adata.obs[{key!r}] has {int(values.isna().sum())} missing values")
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.rename_categories(lambda c: str(c))
    return values.astype(str)


def get_matrix(adata: AnnData, layer: str | None):
    """The expression matrix: ``adata.X`` or ``adata.layers[layer]`` (never copied)."""
    if layer is None:
        x = adata.X
        if x is None:
            raise TRVAEError("adata.X is empty; pass layer= to use one of adata.layers")
        return x
    if layer not in adata.layers:
        have = ", ".join(map(repr, adata.layers.keys())) or "none"
        raise TRVAEError(f"layer {layer!r} is not in adata.layers (layers: {have})")
    return adata.layers[layer]


def _values(x) -> np.ndarray:
    """The stored values of a dense or sparse matrix, without densifying."""
    if sparse.issparse(x):
        return np.asarray(x.data)
    if isinstance(x, (anndata.abc.CSRDataset, anndata.abc.CSCDataset)):  # backed sparse
        return x.group["data"][...]
    return np.asarray(x)


def check_values(x, likelihood: str, where: str = "adata.X") -> None:
    """Finite values; for count likelihoods non-negative integers; warn on a likely mismatch."""
    values = _values(x)
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(
        values.dtype, np.complexfloating
    ):
        raise TRVAEError(f"{where} must hold real numbers, got dtype {values.dtype}")
    if values.size == 0:
        return
    finite = np.isfinite(values)
    if not finite.all():
        n_nan = int(np.isnan(values).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise TRVAEError(f"{where} contains {n_nan} NaN and {n_inf} infinite values")
    vmin, vmax = float(values.min()), float(values.max())
    if likelihood in COUNT_LIKELIHOODS:
        if vmin < 0:
            raise TRVAEError(
                f"{where} has negative values (min {vmin:g}); likelihood={likelihood!r} needs raw "
                "counts: pass layer= with the counts, or use likelihood='mse'"
            )
        if not np.array_equal(values, np.round(values)):
            raise TRVAEError(
                f"{where} has non-integer values; likelihood={likelihood!r} needs raw counts: "
                "pass layer= with the counts (e.g. layer='counts'), or use likelihood='mse' for "
                "log-normalised data"
            )
    elif vmax > 50 and np.array_equal(values, np.round(values)):
        warnings.warn(
            f"{where} looks like raw counts (integers, max {vmax:g}) but likelihood='mse' "
            "expects log-normalised data; normalise and log1p it, or use likelihood='nb'",
            UserWarning,
            stacklevel=3,
        )


def check_conditions(conditions: pd.Series, key: str, min_cells: int = 1) -> list[str]:
    """At least two conditions, each with at least ``min_cells`` cells; returns the categories."""
    counts = conditions.value_counts()
    counts = counts[counts > 0]  # a categorical's unused categories are not conditions
    if len(counts) < 2:
        only = ", ".join(map(repr, counts.index)) or "none"
        raise TRVAEError(
            f"adata.obs[{key!r}] must hold at least 2 conditions to learn a transfer; found {only}"
        )
    small = counts[counts < min_cells]
    if len(small):
        detail = ", ".join(f"{c!r} ({n})" for c, n in small.items())
        raise TRVAEError(f"conditions with fewer than {min_cells} cells: {detail}")
    if isinstance(conditions.dtype, pd.CategoricalDtype):
        return [str(c) for c in conditions.cat.categories if c in counts.index]
    return sorted(counts.index)


def check_condition_value(value: str, known: Sequence[str], what: str = "target condition"):
    """``value`` is one of the conditions seen in training."""
    if str(value) not in known:
        raise TRVAEError(
            f"{what} {value!r} was not seen in training; known conditions: "
            + ", ".join(map(repr, known))
        )
    return str(value)


def align_genes(adata: AnnData, var_names: Sequence[str]) -> np.ndarray | None:
    """Column indices that put ``adata``'s genes in the training order.

    Returns ``None`` when the order already matches; raises when genes are missing or extra.
    """
    have = pd.Index(adata.var_names)
    want = pd.Index(var_names)
    if have.equals(want):
        return None
    missing, extra = want.difference(have), have.difference(want)
    if len(missing) or len(extra) or have.has_duplicates:
        parts = []
        if len(missing):
            parts.append(f"{len(missing)} training genes missing (e.g. {list(missing[:5])})")
        if len(extra):
            parts.append(f"{len(extra)} genes not seen in training (e.g. {list(extra[:5])})")
        if have.has_duplicates:
            parts.append("duplicated gene names")
        raise TRVAEError("the genes differ from the model's: " + "; ".join(parts))
    return have.get_indexer(want)
