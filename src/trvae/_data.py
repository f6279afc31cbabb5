"""Mini-batches from an expression matrix that stays sparse (or on disk) until a batch is drawn."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from scipy import sparse


class CellData:
    """Rows of an expression matrix with their condition codes, served as float32 batches.

    Parameters
    ----------
    x
        Cells x genes: a numpy array, a scipy sparse matrix (CSC is converted to CSR once, a
        sparse copy) or an h5py-backed matrix. Only the rows of a batch are ever densified.
    conditions
        Integer condition code of each cell.
    gene_order
        Column indices that reorder the genes to the model's order, or ``None``.
    """

    def __init__(self, x, conditions: np.ndarray, gene_order: np.ndarray | None = None) -> None:
        if sparse.issparse(x) and x.format != "csr":
            x = sparse.csr_matrix(x)
        self.x = x
        self.conditions = torch.as_tensor(np.asarray(conditions, dtype=np.int64))
        self.gene_order = gene_order

    def __len__(self) -> int:
        return len(self.conditions)

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        """Dense float32 rows ``idx`` (sorted internally for fast sparse/backed access)."""
        order = np.argsort(idx, kind="stable")
        sorted_idx = np.asarray(idx)[order]
        block = self.x[sorted_idx]
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

    def batches(
        self,
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        generator: np.random.Generator | None = None,
        drop_small_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Iterate over ``indices`` in batches; the last one is dropped if it is tiny and asked."""
        indices = np.asarray(indices)
        if shuffle:
            indices = (generator or np.random.default_rng()).permutation(indices)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            if drop_small_last and start > 0 and len(chunk) < max(2, batch_size // 4):
                return
            yield self.batch(chunk)


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
