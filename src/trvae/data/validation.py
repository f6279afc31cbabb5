"""One input-validation layer for train, predict, load and the command line.

Every check raises :class:`trvae.TRVAEError` with a message that names the key, value or gene at
fault. Nothing here modifies the caller's AnnData.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from trvae._errors import TRVAEError
from trvae.data.cell_data import is_on_disk, read_rows

COUNT_LIKELIHOODS = ("nb", "zinb")
#: Values checked at a time in on-disk matrices (32 MB of float32).
CHECK_CHUNK = 1 << 23


def as_anndata(adata: object, what: str = "adata") -> object:
    """A path to an ``.h5ad`` file opened backed (read-only); anything else is returned as is."""
    if not isinstance(adata, str | os.PathLike):
        return adata
    path = Path(adata)
    if not path.is_file():
        raise TRVAEError(f"{what}: no such file: {path}")
    if path.suffix.lower() != ".h5ad":
        raise TRVAEError(f"{what}: {path} is not an .h5ad file")
    try:
        return anndata.read_h5ad(path, backed="r")
    except Exception as err:  # h5py/anndata raise many types for a corrupt file
        raise TRVAEError(f"cannot read {path}: {type(err).__name__}: {err}") from err


def matrix_rows(
    adata: AnnData, layer: str | None, gene_order: np.ndarray | None
) -> tuple[object, np.ndarray | None, np.ndarray | None]:
    """The matrix to read cells from, the row of each cell in it and the gene order.

    For a view of a backed AnnData, the parent's on-disk matrix and the view's rows (and the
    view's genes as columns of the parent), so that the view's cells are streamed from the file
    instead of being loaded by ``view.X``. Otherwise ``(get_matrix(adata, layer), None,
    gene_order)``. A backed CSC matrix is refused: its rows cannot be read without reading the
    whole matrix.
    """
    parent = getattr(adata, "_adata_ref", None)
    oidx, vidx = getattr(adata, "_oidx", None), getattr(adata, "_vidx", None)
    x, rows = None, None
    if adata.isbacked and adata.is_view and layer is None and parent is not None:
        if oidx is not None and vidx is not None and is_on_disk(parent.X):
            x = parent.X
            rows = np.arange(parent.n_obs)[oidx]
            columns = np.arange(parent.n_vars)[vidx]
            if gene_order is not None:
                columns = columns[gene_order]
            identity = len(columns) == parent.n_vars and np.array_equal(
                columns, np.arange(parent.n_vars)
            )
            gene_order = None if identity else columns
    if x is None:
        x = get_matrix(adata, layer)
    if isinstance(x, anndata.abc.CSCDataset):
        raise TRVAEError(
            f"{_file_name(adata)} stores X as CSC, whose rows (cells) cannot be read without "
            "reading the whole matrix; rewrite it as CSR (adata.X = adata.X.tocsr()) or load it "
            "into memory (adata.to_memory())"
        )
    return x, rows, gene_order


def _file_name(adata: AnnData) -> str:
    return str(adata.filename) if adata.isbacked else "adata"


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
    """The stored values of an in-memory dense or sparse matrix, without densifying."""
    if sparse.issparse(x):
        return np.asarray(x.data)
    return np.asarray(x)


def _value_chunks(x, rows: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """The stored values of a matrix, in chunks of about :data:`CHECK_CHUNK` for on-disk ones.

    ``rows`` restricts an on-disk matrix to those rows (a view of a backed AnnData).
    """
    if not is_on_disk(x):
        yield _values(x)
        return
    if rows is None and not isinstance(x, anndata.abc.CSRDataset | anndata.abc.CSCDataset):
        rows = np.arange(x.shape[0])
    if rows is None:  # the whole sparse dataset: its stored values, in slices
        data = x.group["data"]
        for start in range(0, max(data.shape[0], 1), CHECK_CHUNK):
            yield data[start : start + CHECK_CHUNK]
        return
    rows = np.sort(np.asarray(rows))
    per_chunk = max(1, CHECK_CHUNK // max(x.shape[1], 1))
    if isinstance(x, anndata.abc.CSRDataset):
        per_chunk = max(1, CHECK_CHUNK // max(1, _mean_row_nnz(x)))
    for start in range(0, max(len(rows), 1), per_chunk):
        block = read_rows(x, rows[start : start + per_chunk])
        yield np.asarray(block.data) if sparse.issparse(block) else np.asarray(block)


def _mean_row_nnz(x) -> int:
    n_rows = x.shape[0]
    return int(np.ceil(x.group["data"].shape[0] / n_rows)) if n_rows else 1


def _dtype(x) -> np.dtype:
    if is_on_disk(x):
        return np.dtype(x.dtype)
    return _values(x).dtype


def check_values(
    x, likelihood: str, where: str = "adata.X", rows: np.ndarray | None = None
) -> None:
    """Finite values; for count likelihoods non-negative integers; warn on a likely mismatch.

    On-disk matrices (backed AnnData) are read in chunks of :data:`CHECK_CHUNK` values, never
    whole; ``rows`` restricts the check to those rows of an on-disk matrix.
    """
    dtype = _dtype(x)
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise TRVAEError(f"{where} must hold real numbers, got dtype {dtype}")
    size, n_nan, n_bad = 0, 0, 0
    vmin, vmax, integer = np.inf, -np.inf, True
    for values in _value_chunks(x, rows):
        if values.size == 0:
            continue
        size += values.size
        finite = np.isfinite(values)
        if not finite.all():
            n_nan += int(np.isnan(values).sum())
            n_bad += int((~finite).sum())
            continue
        if n_bad:
            continue
        vmin, vmax = min(vmin, float(values.min())), max(vmax, float(values.max()))
        if integer and not np.issubdtype(values.dtype, np.integer):
            integer = np.array_equal(values, np.round(values))
    if size == 0:
        return
    if n_bad:
        raise TRVAEError(f"{where} contains {n_nan} NaN and {n_bad - n_nan} infinite values")
    if likelihood in COUNT_LIKELIHOODS:
        if vmin < 0:
            raise TRVAEError(
                f"{where} has negative values (min {vmin:g}); likelihood={likelihood!r} needs raw "
                "counts: pass layer= with the counts, or use likelihood='mse'"
            )
        if not integer:
            raise TRVAEError(
                f"{where} has non-integer values; likelihood={likelihood!r} needs raw counts: "
                "pass layer= with the counts (e.g. layer='counts'), or use likelihood='mse' for "
                "log-normalised data"
            )
    elif vmax > 50 and integer:
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
