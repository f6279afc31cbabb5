"""Mini-batches from an expression matrix that stays sparse (or on disk) until a batch is drawn.

Shuffling
---------
In-memory matrices (numpy arrays, scipy sparse matrices) are shuffled cell by cell: every epoch
is a fresh permutation of the training cells.

On-disk matrices (the X of a backed AnnData: anndata's CSR dataset or an h5py dataset) cannot be
read cell by cell at a useful speed: every random row of an HDF5 file is a separate read. They
are served by a **block-shuffled sampler** instead:

1. the training cells are sorted by their row in the file and cut into blocks of
   :data:`BLOCK_SIZE` consecutive cells (one contiguous read each);
2. the order of the blocks is shuffled every epoch;
3. :data:`BUFFER_BLOCKS` blocks at a time are read into a buffer (about 32,000 cells, tens of MB
   for sparse counts), whose cells are shuffled individually and served as mini-batches; the
   cells left over after the last full batch of a buffer are carried into the next one.

Every training cell is seen exactly once per epoch, and a mini-batch draws its cells from 32
places of the file, so it mixes conditions and cell types even when the file is sorted by them.
A training set that fits in one buffer is read at once and shuffled exactly like in-memory data
(the same permutation, so the same batches).
"""

from __future__ import annotations

from collections.abc import Iterator

import anndata
import h5py
import numpy as np
import torch
from scipy import sparse

#: Cells per contiguous block read from disk by the block-shuffled sampler.
BLOCK_SIZE = 1024
#: Blocks per shuffle buffer: cells are shuffled within ``BLOCK_SIZE * BUFFER_BLOCKS`` cells.
BUFFER_BLOCKS = 32
#: Rows of an on-disk matrix are read as one contiguous slice (then subset in memory) when the
#: slice is at most this many times longer than the rows wanted; else row by row.
MAX_SPAN_FACTOR = 16
#: Longest slice read at once: rows further apart are read in windows of this many rows.
MAX_SPAN_ROWS = 16384


def small_tail(served: int, size: int, batch_size: int) -> bool:
    """Whether a batch of ``size`` cells after ``served`` others is the tiny last batch that
    ``drop_small_last`` drops (fewer than ``max(2, batch_size // 4)`` cells, not the first)."""
    return served > 0 and size < max(2, batch_size // 4)


def is_on_disk(x) -> bool:
    """Whether ``x`` is an on-disk matrix: an h5py dataset or a backed anndata sparse dataset."""
    return isinstance(x, (h5py.Dataset, anndata.abc.CSRDataset, anndata.abc.CSCDataset))


def read_rows(x, rows: np.ndarray):
    """Rows ``rows`` (ascending, repeats allowed) of an on-disk matrix, in that order.

    Returns a scipy CSR matrix for sparse datasets and a numpy array for dense ones. The rows are
    read in windows of at most :data:`MAX_SPAN_ROWS` rows of the file; the rows of a window that
    lie close together are read as one contiguous slice (see :data:`MAX_SPAN_FACTOR`).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return x[0:0]
    parts, start = [], 0
    while start < len(rows):
        stop = int(np.searchsorted(rows, rows[start] + MAX_SPAN_ROWS, side="left"))
        parts.append(_read_window(x, rows[start:stop]))
        start = stop
    if len(parts) == 1:
        return parts[0]
    return (
        sparse.vstack(parts, format="csr") if sparse.issparse(parts[0]) else np.concatenate(parts)
    )


def _read_window(x, rows: np.ndarray):
    first, last = int(rows[0]), int(rows[-1])
    span = last - first + 1
    if span <= MAX_SPAN_FACTOR * len(rows):
        block = x[first : last + 1]
        if span == len(rows) and np.all(np.diff(rows) == 1):  # exactly the rows wanted
            return block
        return block[rows - first]
    unique, inverse = np.unique(rows, return_inverse=True)
    block = x[unique]  # h5py needs strictly increasing indices
    return block if len(unique) == len(rows) else block[inverse]


class CellData:
    """Rows of an expression matrix with their condition codes, served as float32 batches.

    Parameters
    ----------
    x
        Cells x genes: a numpy array, a scipy sparse matrix (CSC is converted to CSR once, a
        sparse copy) or an on-disk matrix (h5py dataset, backed anndata CSR dataset). Only the
        rows of a batch are ever densified.
    conditions
        Integer condition code of each cell.
    gene_order
        Column indices that reorder the genes to the model's order, or ``None``.
    row_map
        Row of ``x`` holding each cell (for a subset of an on-disk matrix, e.g. a view of a
        backed AnnData), or ``None`` when cell ``i`` is row ``i``.
    block_size, buffer_blocks
        Block-shuffled sampler of on-disk matrices (see the module docstring); default
        :data:`BLOCK_SIZE` and :data:`BUFFER_BLOCKS`.
    """

    def __init__(
        self,
        x,
        conditions: np.ndarray,
        gene_order: np.ndarray | None = None,
        row_map: np.ndarray | None = None,
        block_size: int | None = None,
        buffer_blocks: int | None = None,
    ) -> None:
        if sparse.issparse(x) and x.format != "csr":
            x = sparse.csr_matrix(x)
        self.x = x
        self.conditions = torch.as_tensor(np.asarray(conditions, dtype=np.int64))
        self.gene_order = gene_order
        self.row_map = None if row_map is None else np.asarray(row_map, dtype=np.int64)
        self.on_disk = is_on_disk(x)
        self.block_size = int(block_size or BLOCK_SIZE)
        self.buffer_blocks = int(buffer_blocks or BUFFER_BLOCKS)

    def __len__(self) -> int:
        return len(self.conditions)

    def _file_rows(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(idx) if self.row_map is None else self.row_map[idx]

    def _read(self, idx: np.ndarray):
        """Rows of cells ``idx`` (any order), as CSR or an array, in the order of ``idx``."""
        rows = self._file_rows(idx)
        order = np.argsort(rows, kind="stable")
        block = read_rows(self.x, rows[order])
        if np.all(order[1:] > order[:-1]):
            return block
        return block[np.argsort(order, kind="stable")]

    def _dense(self, block) -> torch.Tensor:
        """A CSR or dense block as a float32 tensor in the model's gene order."""
        block = block.toarray() if sparse.issparse(block) else np.asarray(block)
        if self.gene_order is not None:
            block = block[:, self.gene_order]
        return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        """Dense float32 rows ``idx`` (sorted internally for fast sparse/backed access)."""
        if self.on_disk:
            return self._dense(self._read(np.asarray(idx)))
        idx = np.asarray(idx)
        if np.all(idx[1:] > idx[:-1]):  # in order already (prediction): no permutation
            return self._dense(self.x[idx])
        order = np.argsort(idx, kind="stable")
        block = self.x[idx[order]]
        block = block.toarray() if sparse.issparse(block) else np.asarray(block)
        if self.gene_order is not None:
            block = block[:, self.gene_order]
        out = np.empty_like(block, dtype=np.float32)
        out[order] = block
        return torch.from_numpy(out)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expression, condition codes and library sizes (row sums) of cells ``idx``."""
        x = self.rows(idx)
        return x, self.conditions[torch.as_tensor(idx)], x.sum(1)

    @torch.no_grad()
    def code_sums(
        self, cells: np.ndarray, n_codes: int, n_genes: int, batch_size: int, squares: bool = False
    ) -> torch.Tensor:
        """Per condition code, the sum over ``cells`` of their rows (float64, ``n_codes`` x
        ``n_genes``); with ``squares``, stacked with the sums of squares (2 x codes x genes)."""
        out = torch.zeros(2 if squares else 1, n_codes, n_genes, dtype=torch.float64)
        for x, codes, _ in self.batches(cells, batch_size):
            x = x.double()
            out[0].index_add_(0, codes, x)
            if squares:
                out[1].index_add_(0, codes, x**2)
        return out if squares else out[0]

    def batches(
        self,
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        generator: np.random.Generator | None = None,
        drop_small_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Iterate over ``indices`` in batches; the last one is dropped if it is tiny and asked.

        ``shuffle`` permutes the cells: exactly for in-memory matrices, block-wise for on-disk
        ones (see the module docstring).
        """
        indices = np.asarray(indices)
        if shuffle and self.on_disk:
            generator = generator or np.random.default_rng()
            if len(indices) > self.block_size * self.buffer_blocks:
                yield from self._block_shuffled(indices, batch_size, generator, drop_small_last)
                return
            yield from self._buffered(indices, batch_size, generator, drop_small_last)
            return
        if shuffle:
            indices = (generator or np.random.default_rng()).permutation(indices)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            if drop_small_last and small_tail(start, len(chunk), batch_size):
                return
            yield self.batch(chunk)

    def _buffered(
        self, indices: np.ndarray, batch_size: int, rng: np.random.Generator, drop_small_last: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """All of ``indices`` read at once, then the exact shuffle of in-memory data."""
        indices = rng.permutation(indices)
        cells = np.unique(indices)
        buffer = self._read(cells)
        where = np.searchsorted(cells, indices)
        for start in range(0, len(indices), batch_size):
            chunk = slice(start, start + batch_size)
            if drop_small_last and small_tail(start, len(indices[chunk]), batch_size):
                return
            x = self._dense(buffer[where[chunk]])
            yield x, self.conditions[torch.as_tensor(indices[chunk])], x.sum(1)

    def _block_shuffled(
        self, indices: np.ndarray, batch_size: int, rng: np.random.Generator, drop_small_last: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The block-shuffled sampler of on-disk matrices (see the module docstring)."""
        indices = indices[np.argsort(self._file_rows(indices), kind="stable")]
        size = self.block_size
        blocks = rng.permutation(-(-len(indices) // size))
        carry_cells, carry_x = indices[:0], None
        n_served = 0
        for first in range(0, len(blocks), self.buffer_blocks):
            group = blocks[first : first + self.buffer_blocks]
            parts = [indices[b * size : (b + 1) * size] for b in group]
            cells = np.concatenate([carry_cells, *parts])
            mats = ([] if carry_x is None else [carry_x]) + [self._read(p) for p in parts]
            if sparse.issparse(mats[0]):
                buffer = sparse.vstack(mats, format="csr")
            else:
                buffer = np.concatenate(mats)
            perm = rng.permutation(len(cells))
            last = first + self.buffer_blocks >= len(blocks)
            n_out = len(cells) if last else len(cells) // batch_size * batch_size
            for start in range(0, n_out, batch_size):
                chunk = perm[start : start + batch_size]
                if drop_small_last and small_tail(n_served, len(chunk), batch_size):
                    return
                x = self._dense(buffer[chunk])
                n_served += len(chunk)
                yield x, self.conditions[torch.as_tensor(cells[chunk])], x.sum(1)
            carry_cells, carry_x = cells[perm[n_out:]], buffer[perm[n_out:]]


def stratified_split(
    conditions: np.ndarray, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, shuffled train/validation split stratified by condition code."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for code in np.unique(conditions):
        members = rng.permutation(np.flatnonzero(conditions == code))
        n_val = round(validation_fraction * len(members))
        if validation_fraction > 0 and len(members) > 1:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
