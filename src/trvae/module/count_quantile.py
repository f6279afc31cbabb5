"""The quantile read-out of the count likelihoods (``predict(mode="quantile")``, NB and ZINB).

Sampling the target condition's likelihood (``return_mean=False``) gives each gene the right
spread but draws every entry independently: the cell's own deviations (a large cell, a cell
further along a response) are lost, and the cells' joint distribution is off (E-distance).
The quantile read-out keeps each entry's *rank* instead, the count analogue of the MSE
read-out of :mod:`trvae.module.readout`:

1. the randomized probability integral transform of the observed count ``x`` under the source
   condition's distribution (mean ``mu_s`` at the cell's latent code and library size),
   ``u = F_s(x - 1) + V * (F_s(x) - F_s(x - 1))``, ``V ~ U(0, 1)`` seeded
   (:func:`~trvae.module.readout.floor_noise`): uniform on (0, 1) when the model holds;
2. the target condition's quantile at ``u``: the smallest ``k`` with ``F_t(k) >= u``.

So each predicted gene follows the target distribution of the model, as a sample does, while
a cell keeps its place in every gene's distribution. Transferring to the source condition
itself returns ``x``. The NB CDF is the regularised incomplete beta function
``I_p(theta, k + 1)``, ``p = theta / (theta + mu)``; ZINB adds the zero mass ``pi``:
``F = pi + (1 - pi) * F_NB``. A count in the far upper tail (``1 - F`` below :data:`TAIL`: an
outlier under the fitted mean) is carried by its tail probability ``1 - u`` instead, from the
survival function ``I_{1-p}(k + 1, theta)``: ``1 - F`` rounds to 0 in float64 there, and all
such counts would read back one quantile. Computed with scipy in float64 on the CPU
(vectorised over the batch); the result is integer-valued float32 on the batch's device.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np
import torch
from scipy import special, stats
from torch import Tensor

#: Levels are kept this far inside (0, 1): the quantile at 1 is infinite.
LEVEL_MARGIN = 1e-12
#: Steps each way that align a guessed quantile with :func:`count_cdf`.
CORRECTION_STEPS = 2
#: Steps of the summed CDF that guesses a quantile before scipy's root search takes over.
WALK_STEPS = 32
#: A count whose CDF is within this of 1 is carried by its tail probability (module docstring).
TAIL = 1e-6
#: Each thread of :func:`transfer_counts` gets at least this many cells.
MIN_THREAD_CELLS = 64


def _nb_zero(mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """P(X = 0) for X ~ NB(mean ``mu``, inverse dispersion ``theta``)."""
    return np.exp(theta * (np.log(theta) - np.log(theta + mu)))


def nb_cdf(k: np.ndarray, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """P(X <= k) for X ~ NB(mean ``mu``, inverse dispersion ``theta``) at integer ``k`` (same
    shape as ``mu``): 0 below 0, ``(theta / (theta + mu))^theta`` at 0, the incomplete beta
    function above (evaluated there only: most entries of sparse data are 0). The value at 0
    is computed for every entry, then overwritten: cheaper than selecting the zeros."""
    k, mu, theta = np.broadcast_arrays(k, mu, theta)
    out = _nb_zero(mu, theta)
    above = k >= 1
    t = theta[above]
    out[above] = special.betainc(t, k[above] + 1.0, t / (t + mu[above]))
    out[k < 0] = 0.0
    return out


def _parameters(gen: dict[str, Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``mean``, ``theta`` and the zero-inflation probability (None for NB) as float64."""
    mu = gen["mean"].detach().double().cpu().numpy()
    theta = gen["theta"].detach().double().cpu().numpy()
    logits = gen.get("dropout_logits")
    pi = None if logits is None else special.expit(logits.detach().double().cpu().numpy())
    return mu, theta, pi


def count_cdf(k: np.ndarray, mu: np.ndarray, theta: np.ndarray, pi: np.ndarray | None):
    """P(X <= k) under NB (``pi`` None) or ZINB (zero mass ``pi``); 0 for ``k < 0``."""
    cdf = nb_cdf(k, mu, theta)
    return cdf if pi is None else np.where(k < 0, 0.0, pi + (1.0 - pi) * cdf)


def count_sf(k: np.ndarray, mu: np.ndarray, theta: np.ndarray, pi: np.ndarray | None):
    """P(X > k) under NB or ZINB (as :func:`count_cdf`), accurate where it is tiny; 1 for
    ``k < 0``."""
    k, mu, theta = np.broadcast_arrays(k, mu, theta)
    out = np.ones(k.shape)
    inside = k >= 0
    t, m = theta[inside], mu[inside]
    out[inside] = special.betainc(k[inside] + 1.0, t, m / (t + m))
    return out if pi is None else np.where(k < 0, 1.0, (1.0 - pi) * out)


def count_quantile(u: np.ndarray, mu: np.ndarray, theta: np.ndarray, pi: np.ndarray | None):
    """The smallest ``k >= 0`` with ``P(X <= k) >= u`` under NB or ZINB (as :func:`count_cdf`).

    0 where ``u`` is within the zero mass (most entries of sparse data: no search there);
    elsewhere a guess (:func:`_walk_quantile`), then moved by up to :data:`CORRECTION_STEPS`
    counts each way until it is exact for :func:`count_cdf` itself (the two differ in the last
    bits), so that a level taken by :func:`count_cdf` maps back to its count.
    """
    return _smallest_count(u, mu, theta, pi, upper=False)


def count_upper_quantile(
    tail: np.ndarray, mu: np.ndarray, theta: np.ndarray, pi: np.ndarray | None
) -> np.ndarray:
    """:func:`count_quantile` at ``u = 1 - tail`` given the tail probability ``tail``: the
    smallest ``k >= 0`` with ``P(X > k) <= tail`` (:func:`count_sf`), exact as
    :func:`count_quantile` is, also where ``1 - tail`` rounds to 1."""
    return _smallest_count(tail, mu, theta, pi, upper=True)


def _smallest_count(level, mu, theta, pi, upper: bool) -> np.ndarray:
    """The smallest ``k >= 0`` with ``count_cdf(k) >= level`` or, with ``upper``,
    ``count_sf(k) <= level``: :func:`_walk_quantile` (or scipy's inverse survival function)
    as the guess, corrected to be exact for this module's own functions."""

    def reached(k, level, mu, theta, pi):
        if upper:
            return count_sf(k, mu, theta, pi) <= level
        return count_cdf(k, mu, theta, pi) >= level

    k = np.zeros(np.shape(level))
    rest = ~reached(k, level, mu, theta, pi)
    if not rest.any():
        return k
    level, mu, theta = level[rest], mu[rest], theta[rest]
    pi = None if pi is None else pi[rest]
    if pi is None:
        nb_level = level
    else:
        nb_level = level / (1.0 - pi) if upper else (level - pi) / (1.0 - pi)
    low = np.finfo(float).tiny if upper else LEVEL_MARGIN
    nb_level = np.clip(nb_level, low, 1.0 - LEVEL_MARGIN)
    if upper:
        found = np.maximum(stats.nbinom.isf(nb_level, theta, theta / (theta + mu)), 0.0)
    else:
        found = _walk_quantile(nb_level, mu, theta)
    params = (level, mu, theta, pi)
    for _ in range(CORRECTION_STEPS):
        high = (found > 0) & reached(found - 1.0, *params)
        found -= high
        if not high.any():
            break
    for _ in range(CORRECTION_STEPS):
        short = ~reached(found, *params)
        found += short
        if not short.any():
            break
    k[rest] = found
    return k


def _walk_quantile(level: np.ndarray, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """NB quantiles at ``level`` (a guess for :func:`_smallest_count`, which makes it exact):
    the CDF summed up from 0 with the recursion ``P(k + 1) = P(k) (k + theta) / (k + 1) * mu /
    (theta + mu)``, at most :data:`WALK_STEPS` steps; scipy's quantile beyond. Cheaper than
    scipy's root search for the small counts that sparse data ask for."""
    ratio = mu / (theta + mu)
    pmf = _nb_zero(mu, theta)
    cdf = pmf.copy()
    found = np.zeros(level.shape)
    open_ = np.flatnonzero(cdf < level)
    for k in range(1, WALK_STEPS + 1):
        if not len(open_):
            return found
        pmf[open_] *= (k - 1 + theta[open_]) / k * ratio[open_]
        cdf[open_] += pmf[open_]
        found[open_] = k
        open_ = open_[cdf[open_] < level[open_]]
    if len(open_):
        found[open_] = stats.nbinom.ppf(level[open_], theta[open_], 1.0 - ratio[open_])
    return found


def transfer_counts(
    x: Tensor, source: dict[str, Tensor], target: dict[str, Tensor], noise: Tensor
) -> Tensor:
    """Counts ``x`` (cells x genes) carried from the ``source`` to the ``target`` distribution
    (the decoder's outputs, :meth:`~trvae.module.TRVAEModule.generative`) by rank; ``noise``:
    ``V ~ U(0, 1)``, one per entry. The cells are split over ``torch.get_num_threads()``
    threads (scipy's special functions release the GIL); the result does not depend on it."""
    arrays = [x.detach().double().cpu().numpy(), noise.detach().double().cpu().numpy()]
    for gen in (source, target):
        arrays += _parameters(gen)
    n_threads = max(1, min(torch.get_num_threads(), len(arrays[0]) // MIN_THREAD_CELLS))
    bounds = np.linspace(0, len(arrays[0]), n_threads + 1).astype(int)
    chunks = [slice(a, b) for a, b in pairwise(bounds)]

    def run(rows: slice) -> np.ndarray:  # views, not copies
        return _transfer(*(None if a is None else a[rows] for a in arrays))

    if n_threads == 1:
        out = run(chunks[0])
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            out = np.concatenate(list(pool.map(run, chunks)))
    return torch.from_numpy(out.astype(np.float32)).to(x.device)


def _transfer(counts, noise, mu_s, theta_s, pi_s, mu_t, theta_t, pi_t) -> np.ndarray:
    """:func:`transfer_counts` on float64 arrays (``pi_*`` None for NB)."""
    below = count_cdf(counts - 1.0, mu_s, theta_s, pi_s)
    upto = count_cdf(counts, mu_s, theta_s, pi_s)
    u = below + noise * (upto - below)
    upper = (counts >= 1) & (upto > 1.0 - TAIL)  # carried as tail probabilities
    out = count_quantile(u, mu_t, theta_t, pi_t)  # the tail entries' are replaced below
    if not upper.any():
        return out
    source = _at(upper, mu_s, theta_s, pi_s)
    k, v = counts[upper], noise[upper]
    above, from_k = count_sf(k - 1.0, *source), count_sf(k, *source)
    tail = above - v * (above - from_k)  # 1 - u, from the survival function
    out[upper] = count_upper_quantile(tail, *_at(upper, mu_t, theta_t, pi_t))
    return out


def _at(mask: np.ndarray, mu: np.ndarray, theta: np.ndarray, pi: np.ndarray | None) -> tuple:
    """The distribution parameters of the entries ``mask``."""
    return mu[mask], theta[mask], None if pi is None else pi[mask]
