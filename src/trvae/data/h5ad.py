"""Write an ``.h5ad`` file chunk by chunk, atomically, without holding its matrix in memory.

The file is built in a temporary file beside the target (``.<name>.tmp-<pid>``): obs, var and uns
are written by anndata, then X is created empty and extended with each chunk of rows (anndata's
CSR layout via :func:`anndata.io.write_elem` and ``sparse_dataset(...).append``, or a dense
float32 HDF5 dataset filled slice by slice). Only when every chunk is written is the file
flushed to disk and renamed onto the target (:func:`os.replace`), so an interrupted write never
leaves a truncated file under the target's name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from anndata import AnnData
from anndata.io import sparse_dataset, write_elem
from scipy import sparse

from trvae._errors import TRVAEError
from trvae._io import nullable_strings_writable

__all__ = ["write_h5ad_chunked"]

#: Elements of an HDF5 chunk of the written X (256k values: 1 MB of float32).
H5_CHUNK = 1 << 18


def write_h5ad_chunked(
    path: str | os.PathLike,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    chunks: Iterable[np.ndarray | sparse.spmatrix],
    *,
    sparse_x: bool,
    uns: Mapping | None = None,
    dtype: np.dtype | type = np.float32,
) -> Path:
    """Write ``obs``/``var``/``uns`` and the rows of X from ``chunks`` to ``path``, atomically.

    Parameters
    ----------
    path
        Target ``.h5ad`` file; replaced if it exists (only once the new one is complete).
    obs, var
        Cell and gene annotations; X has ``len(obs)`` rows and ``len(var)`` columns.
    chunks
        Consecutive row blocks of X (dense arrays or scipy sparse matrices), consumed one at a
        time; together they must have ``len(obs)`` rows.
    sparse_x
        Store X as CSR (int64 ``indptr``) instead of a dense array.
    uns
        Unstructured annotations.
    dtype
        dtype of the stored values.

    Returns
    -------
    The path written. Memory use is that of one chunk (plus obs/var).
    """
    path = Path(path)
    if path.is_dir():
        raise TRVAEError(f"{path} is a directory; give a file path such as {path / 'out.h5ad'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n_obs, n_vars = len(obs), len(var)
    try:
        with nullable_strings_writable():
            AnnData(obs=obs, var=var, uns=dict(uns or {})).write_h5ad(tmp)
        with h5py.File(tmp, "a") as handle:
            n_rows = (
                _append_sparse(handle, chunks, n_vars, dtype)
                if sparse_x
                else _fill_dense(handle, chunks, n_obs, n_vars, dtype)
            )
            if n_rows != n_obs:
                raise ValueError(f"the chunks hold {n_rows} rows, obs has {n_obs}")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _append_sparse(handle: h5py.File, chunks, n_vars: int, dtype) -> int:
    empty = sparse.csr_matrix((0, n_vars), dtype=dtype)
    write_elem(handle, "X", empty, dataset_kwargs={"chunks": (H5_CHUNK,), "indptr_dtype": np.int64})
    x = sparse_dataset(handle["X"])
    n_rows = 0
    for chunk in chunks:
        chunk = sparse.csr_matrix(chunk, dtype=dtype)
        x.append(chunk)
        n_rows += chunk.shape[0]
    return n_rows


def _fill_dense(handle: h5py.File, chunks, n_obs: int, n_vars: int, dtype) -> int:
    rows_per_chunk = max(1, min(max(n_obs, 1), H5_CHUNK // max(n_vars, 1)))
    x = handle.create_dataset(
        "X", shape=(n_obs, n_vars), dtype=dtype, chunks=(rows_per_chunk, max(n_vars, 1))
    )
    x.attrs["encoding-type"], x.attrs["encoding-version"] = "array", "0.2.0"
    n_rows = 0
    for chunk in chunks:
        chunk = np.asarray(chunk.toarray() if sparse.issparse(chunk) else chunk, dtype=dtype)
        if n_rows + len(chunk) > n_obs:
            raise ValueError(f"the chunks hold more than the {n_obs} rows of obs")
        x[n_rows : n_rows + len(chunk)] = chunk
        n_rows += len(chunk)
    return n_rows
