"""Training data in a form that can be sent to spawned processes (multi-device training).

In-memory matrices pickle as they are; an HDF5-backed one is sent as its file and path and
reopened read-only in each process (:func:`portable`).
"""

from __future__ import annotations

import copy

import numpy as np
from scipy import sparse

from trvae._errors import TRVAEError
from trvae.data.cell_data import CellData

__all__ = ["portable"]


class _BackedMatrix:
    """An HDF5-backed matrix that pickles as its file name and path and reopens read-only."""

    def __init__(self, filename: str, name: str, is_sparse: bool) -> None:
        self.filename, self.name, self.is_sparse = filename, name, is_sparse
        self._matrix = None

    def _open(self):
        if self._matrix is None:
            import h5py

            node = h5py.File(self.filename, "r")[self.name]
            if self.is_sparse:
                from anndata.io import sparse_dataset

                node = sparse_dataset(node)
            self._matrix = node
        return self._matrix

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self._open().shape)

    def __getitem__(self, idx):
        return self._open()[idx]

    def __getstate__(self) -> dict:
        return {"filename": self.filename, "name": self.name, "is_sparse": self.is_sparse}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["filename"], state["name"], state["is_sparse"])


def portable(data: CellData) -> CellData:
    """``data`` in a form that can be sent to spawned processes.

    In-memory matrices (numpy, scipy sparse) are sent as they are (pickled); an HDF5-backed one
    (``read_h5ad(..., backed="r")``) is replaced by a reference that each process reopens.
    """
    x = data.x
    if isinstance(x, np.ndarray) or sparse.issparse(x):
        return data
    import h5py

    if isinstance(x, h5py.Dataset):
        backed = _BackedMatrix(x.file.filename, x.name, is_sparse=False)
    elif hasattr(x, "group") and isinstance(getattr(x, "group", None), h5py.Group):
        backed = _BackedMatrix(x.group.file.filename, x.group.name, is_sparse=True)
    else:
        raise TRVAEError(
            f"multi-device training cannot send a {type(x).__name__} matrix to its processes; "
            "load the data into memory (adata.to_memory()) or use devices=1"
        )
    out = copy.copy(data)
    out.x = backed
    return out
