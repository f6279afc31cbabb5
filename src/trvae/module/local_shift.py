"""The local mean shift: the anchor's target (:mod:`trvae.module.anchor`) taken from the
training cells nearest the predicted cells in z, rather than from all of them.

The pooled mean shift gives every prediction the training groups' mean response. Where the
response belongs to cell states whose mix differs between groups (donors that hold the same
cell types in their own proportions; a broad label over sub-types), a held-out group's
response is that of its own mix of states. The local shift estimates it from the training
cells of the groups with both conditions nearest each predicted cell in z (the posterior mean,
encoded with the cell's own condition): per cell, the mean expression of its
:data:`K_NEIGHBOURS` nearest training cells of the target condition minus that of its
nearest of the source condition. The anchor needs only its mean over the predicted cells,
a weighted mean of training cells (:func:`neighbour_weights`); the anchor's shift is moved
by that mean minus the pooled shift, on the genes that are not quiet.

Whether a pair of conditions takes it is the training data's to say (:func:`local_ratio`,
once after training): leave one paired group out and estimate its own mean response from
the other groups, locally at its own source-condition cells or pooled; the **local ratio**
is the local estimate's squared error over the pooled one's, summed over the groups and the
:data:`TOP_GENES` genes with the largest pooled shift. The local shift is used where the
ratio is below 1. Screened on the development sets (``docs/choosing-parameters.md``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: Neighbours in z of each predicted cell, per condition.
K_NEIGHBOURS = 100
#: The local ratio's error is summed over this many genes with the largest pooled shift.
TOP_GENES = 100
#: At most this many training cells per condition are searched for neighbours (seeded).
LOCAL_CELLS = 8192
#: Predicted cells per block of the neighbour search (a block x pool distance matrix).
QUERY_BLOCK = 1024


def neighbour_weights(query: Tensor, pool: Tensor, k: int = K_NEIGHBOURS) -> Tensor:
    """Weights of the rows of ``pool`` (float64, summing to 1) whose weighted mean of any
    per-row quantity is the mean over the rows of ``query`` of the mean over each one's ``k``
    nearest rows of ``pool`` (Euclidean; all of them when ``pool`` has fewer).

    Examples
    --------
    >>> import torch
    >>> pool = torch.tensor([[0.0], [1.0], [10.0]])
    >>> neighbour_weights(torch.tensor([[0.2], [9.0]]), pool, k=1)
    tensor([0.5000, 0.0000, 0.5000], dtype=torch.float64)
    """
    weights = torch.zeros(len(pool), dtype=torch.float64)
    k = min(k, len(pool))
    if len(query) == 0 or k == 0:
        return weights
    pool = pool.double()
    for block in query.double().split(QUERY_BLOCK):
        nearest = torch.cdist(block, pool).topk(k, largest=False).indices
        weights += torch.bincount(nearest.reshape(-1), minlength=len(pool))
    return weights / (len(query) * k)


def local_ratio(local: Tensor, pooled: Tensor, truth: Tensor, shift: Tensor) -> float:
    """The local estimates' (``local``, groups x genes) squared error against each group's own
    response ``truth`` over that of the ``pooled`` estimates, both summed over the groups and
    the :data:`TOP_GENES` genes of largest ``|shift|``; NaN when the pooled error is 0.

    Examples
    --------
    >>> import torch
    >>> truth = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    >>> local_ratio(truth + 0.5, truth + 1.0, truth, torch.tensor([2.0, 0.0]))
    0.25
    """
    top = torch.argsort(shift.abs(), descending=True, stable=True)[:TOP_GENES]
    local_error = float(((local - truth)[:, top].double() ** 2).sum())
    pooled_error = float(((pooled - truth)[:, top].double() ** 2).sum())
    return local_error / pooled_error if pooled_error > 0 else float("nan")


def sample_pool(cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """At most :data:`LOCAL_CELLS` of ``cells``, sorted (seeded by ``rng``)."""
    if len(cells) <= LOCAL_CELLS:
        return np.sort(cells)
    return np.sort(rng.choice(cells, LOCAL_CELLS, replace=False))
