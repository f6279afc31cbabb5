"""Data in: AnnData validation, mini-batches (:class:`CellData`) and streamed ``.h5ad`` files."""

from trvae.data.cell_data import CellData

__all__ = ["CellData"]
