"""Maximum mean discrepancy between the conditions of a mini-batch, vectorised.

Two estimators (Gretton et al. 2012). The biased one (a V-statistic) counts each point's kernel
with itself, so two samples of one distribution score about ``(1 - mean k(a, a')) / n`` per
condition, not 0; that excess shrinks only if the points of each condition move together, so as
a penalty it pulls every condition's layer towards a single point (what that did on Kang and
MNIST: ``docs/choosing-parameters.md``). The unbiased one (a U-statistic) leaves those self-pairs
out: its expectation is the true MMD, zero for equal distributions, and it can be slightly
negative in a batch. The kernel is a multi-scale RBF,

    k(a, b) = mean over s in ``bandwidths`` of exp(-||a - b||^2 / (2 s)),

so ``bandwidths`` are squared length scales (variances). Averaging rather than summing keeps the
penalty's scale independent of how many bandwidths are used. The default set spans four orders of
magnitude around the unit scale, because the layer it acts on has a learnt scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from trvae._errors import check_option

DEFAULT_BANDWIDTHS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
ESTIMATORS = ("biased", "unbiased")
GROUPINGS = ("within", "shared")


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is in a narrower float type (bfloat16 under autocast); itself
    otherwise (float32, float64: no copy)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _float32(y: torch.Tensor):
    """A block without autocast when ``y``'s device type autocasts (bf16-mixed precision), so
    that the kernel's matrix products and sums stay float32; nothing otherwise."""
    kind = y.device.type
    try:
        autocasting = torch.is_autocast_enabled(kind)
    except TypeError:  # torch < 2.4: no device-type argument
        cpu = kind == "cpu"
        autocasting = torch.is_autocast_cpu_enabled() if cpu else torch.is_autocast_enabled()
    return torch.autocast(kind, enabled=False) if autocasting else nullcontext()


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
    x: torch.Tensor,
    y: torch.Tensor,
    bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
    estimator: str = "biased",
) -> torch.Tensor:
    """Squared MMD between two samples (rows of ``x`` and of ``y``)."""
    both = torch.cat([x, y])
    codes = torch.cat(
        [torch.zeros(len(x), dtype=torch.long), torch.ones(len(y), dtype=torch.long)]
    ).to(both.device)
    return mmd_all_pairs(both, codes, 2, bandwidths, estimator)


def _pairs_from_sums(
    sums: torch.Tensor, counts: torch.Tensor, estimator: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared MMDs ``(..., c, c)`` and presence ``(..., c)`` from kernel sums and counts."""
    check_option("estimator", estimator, ESTIMATORS)
    outer = (counts[..., :, None] * counts[..., None, :]).clamp_min(1.0)
    mean_kernel = sums / outer
    if estimator == "unbiased":
        present = counts > 1
        within = sums.diagonal(dim1=-2, dim2=-1) - counts
        diag = within / (counts * (counts - 1.0)).clamp_min(1.0)
        pairs = diag[..., :, None] + diag[..., None, :] - 2.0 * mean_kernel
    else:
        present = counts > 0
        diag = mean_kernel.diagonal(dim1=-2, dim2=-1)
        pairs = (diag[..., :, None] + diag[..., None, :] - 2.0 * mean_kernel).clamp_min(0.0)
    both_present = present[..., :, None] & present[..., None, :]
    return pairs * both_present, present


def mmd_pair_matrix(
    y: torch.Tensor,
    condition: torch.Tensor,
    n_conditions: int,
    estimator: str = "biased",
    bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared MMD between every pair of conditions of a batch from one kernel matrix.

    With ``M`` the one-hot condition matrix and ``K`` the kernel matrix of the batch,
    ``S = M^T K M`` holds the kernel sums between conditions, ``G_cd = S_cd / (n_c n_d)`` their
    means and ``MMD^2(c, d) = G_cc + G_dd - 2 G_cd``. The unbiased estimator takes
    ``G_cc = (S_cc - n_c) / (n_c (n_c - 1))`` instead (``k(a, a) = 1``), and needs two points
    of a condition to count it as present.

    Returns
    -------
    The ``(n_conditions, n_conditions)`` matrix of squared MMDs and a boolean vector that says
    which conditions are present in the batch (rows/columns of absent ones are zero).
    """
    with _float32(y):
        y = at_least_float32(y)
        onehot = F.one_hot(condition, n_conditions).to(y.dtype)
        sums = onehot.T @ rbf_kernel(y, y, bandwidths) @ onehot
        return _pairs_from_sums(sums, onehot.sum(0), estimator)


def mmd_all_pairs(
    y: torch.Tensor,
    condition: torch.Tensor,
    n_conditions: int,
    bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
    estimator: str = "biased",
    group: torch.Tensor | None = None,
    n_groups: int = 1,
    grouping: str = "within",
) -> torch.Tensor:
    """Sum of the squared MMD over **all** unordered pairs of conditions present in the batch.

    ``group`` (codes ``0 .. n_groups - 1``, e.g. cell types) keeps a group seen in one condition
    only (a cell type held out of the others) from being pulled towards other groups, which the
    pooled MMD does whenever the conditions hold the groups in different proportions:

    - ``grouping="within"``: the conditions are compared within each group only; the result is
      the mean, over the groups present in two or more conditions, of each group's sum over
      pairs. Each group's estimate rests on its own few cells of the batch.
    - ``grouping="shared"``: each pair of conditions is compared on the cells of the groups that
      both hold in the batch, pooled. One estimate per pair from many cells; groups are not
      compared with themselves only, so it also aligns the groups with one another.
    """
    check_option("grouping", grouping, GROUPINGS)
    with _float32(y):
        return _mmd_all_pairs(
            at_least_float32(y),
            condition,
            n_conditions,
            bandwidths,
            estimator,
            group,
            n_groups,
            grouping,
        )


def _mmd_all_pairs(
    y: torch.Tensor,
    condition: torch.Tensor,
    n_conditions: int,
    bandwidths: Sequence[float],
    estimator: str,
    group: torch.Tensor | None,
    n_groups: int,
    grouping: str,
) -> torch.Tensor:
    """:func:`mmd_all_pairs` on a float32 ``y``, outside autocast."""
    if group is None:
        pairs, _ = mmd_pair_matrix(y, condition, n_conditions, estimator, bandwidths)
        return pairs.triu(1).sum()
    joint = F.one_hot(group * n_conditions + condition, n_groups * n_conditions).to(y.dtype)
    sums = (joint.T @ rbf_kernel(y, y, bandwidths) @ joint).view(
        n_groups, n_conditions, n_groups, n_conditions
    )
    counts = joint.sum(0).view(n_groups, n_conditions)
    if grouping == "shared":
        return _shared_group_pairs(sums, counts, estimator).triu(1).sum()
    within = sums.diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (group, condition, condition)
    pairs, present = _pairs_from_sums(within, counts, estimator)
    compared = present.sum(1) > 1
    return pairs.triu(1).sum((1, 2))[compared].sum() / compared.sum().clamp_min(1)


def _shared_group_pairs(sums: torch.Tensor, counts: torch.Tensor, estimator: str) -> torch.Tensor:
    """``(c, c)`` squared MMDs, each pair of conditions on the groups both of them hold.

    ``sums[g, a, h, b]`` is the kernel sum between the cells of (group g, condition a) and of
    (group h, condition b), ``counts[g, a]`` the number of cells. Pair (a, b) keeps the groups
    with ``counts[:, a] > 0`` and ``counts[:, b] > 0`` (mask ``m``): its kernel sums are
    ``m^T sums[:, a, :, b] m`` and so on, a 2 x 2 problem per pair for :func:`_pairs_from_sums`.
    """
    held = (counts > 0).to(sums.dtype)  # (group, condition)
    mask = held.T[:, None, :] * held.T[None, :, :]  # (a, b, group)
    by_condition = sums.permute(1, 3, 0, 2)  # (a, b, g, h)
    diagonal = by_condition.diagonal(dim1=0, dim2=1).permute(2, 0, 1)  # (a, g, h)
    k_ab = torch.einsum("abg,abh,abgh->ab", mask, mask, by_condition)
    k_aa = torch.einsum("abg,abh,agh->ab", mask, mask, diagonal)
    n_a = torch.einsum("abg,ga->ab", mask, counts)  # cells of a in the groups shared with b
    pair_sums = torch.stack([torch.stack([k_aa, k_ab], -1), torch.stack([k_ab, k_aa.T], -1)], -2)
    pairs, _ = _pairs_from_sums(pair_sums, torch.stack([n_a, n_a.T], -1), estimator)
    return pairs[..., 0, 1]
