"""Maximum mean discrepancy between the conditions of a mini-batch, vectorised.

The estimator is the biased one (a V-statistic, Gretton et al. 2012): it is never negative, it is
exactly zero for identical samples and its gradient is smooth, which is what a penalty needs.
The kernel is a multi-scale RBF,

    k(a, b) = mean over s in ``bandwidths`` of exp(-||a - b||^2 / (2 s)),

so ``bandwidths`` are squared length scales (variances). Averaging rather than summing keeps the
penalty's scale independent of how many bandwidths are used. The default set spans four orders of
magnitude around the unit scale, because the layer it acts on has a learnt scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_BANDWIDTHS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)


def pairwise_sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``x`` and ``y`` (one matrix product).

    Unlike ``torch.cdist(...) ** 2`` its gradient is finite at zero distance.
    """
    x2 = (x * x).sum(1, keepdim=True)
    y2 = (y * y).sum(1, keepdim=True)
    return (x2 + y2.T - 2.0 * x @ y.T).clamp_min(0.0)


def rbf_kernel(
    x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS
) -> torch.Tensor:
    """Multi-scale RBF kernel matrix between the rows of ``x`` and ``y``."""
    d2 = pairwise_sq_dists(x, y)
    gammas = 1.0 / (2.0 * torch.as_tensor(bandwidths, dtype=d2.dtype, device=d2.device))
    return torch.exp(-d2.unsqueeze(-1) * gammas).mean(-1)


def mmd(
    x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS
) -> torch.Tensor:
    """Biased squared MMD between two samples (rows of ``x`` and of ``y``)."""
    both = torch.cat([x, y])
    codes = torch.cat(
        [torch.zeros(len(x), dtype=torch.long), torch.ones(len(y), dtype=torch.long)]
    ).to(both.device)
    return mmd_all_pairs(both, codes, 2, bandwidths)


def mmd_pair_matrix(
    y: torch.Tensor,
    condition: torch.Tensor,
    n_conditions: int,
    bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared MMD between every pair of conditions of a batch from one kernel matrix.

    With ``M`` the one-hot condition matrix and ``K`` the kernel matrix of the batch,
    ``G = M^T K M / (n_c n_d)`` holds the mean kernel value between conditions ``c`` and ``d``,
    and ``MMD^2(c, d) = G_cc + G_dd - 2 G_cd``.

    Returns
    -------
    The ``(n_conditions, n_conditions)`` matrix of squared MMDs and a boolean vector that says
    which conditions are present in the batch (rows/columns of absent ones are zero).
    """
    onehot = F.one_hot(condition, n_conditions).to(y.dtype)
    counts = onehot.sum(0)
    present = counts > 0
    mean_kernel = onehot.T @ rbf_kernel(y, y, bandwidths) @ onehot
    mean_kernel = mean_kernel / (counts[:, None] * counts[None, :]).clamp_min(1.0)
    diag = mean_kernel.diagonal()
    pairs = (diag[:, None] + diag[None, :] - 2.0 * mean_kernel).clamp_min(0.0)
    both_present = present[:, None] & present[None, :]
    return pairs * both_present, present


def mmd_all_pairs(
    y: torch.Tensor,
    condition: torch.Tensor,
    n_conditions: int,
    bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
) -> torch.Tensor:
    """Sum of the squared MMD over **all** unordered pairs of conditions present in the batch."""
    pairs, _ = mmd_pair_matrix(y, condition, n_conditions, bandwidths)
    return pairs.triu(1).sum()
