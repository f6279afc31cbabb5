"""Simulated perturbation counts with the truth known: the count model and an out-of-core
count file of any size (:func:`synthetic_counts`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from trvae._errors import TRVAEError
from trvae.pp import log_normalize

#: Cells simulated at a time by :func:`synthetic_counts`, each block from its own seeded stream,
#: so that the file does not depend on ``chunk_size``.
SIM_BLOCK = 1024


def _condition_names(n: int) -> list[str]:
    if n == 2:
        return ["control", "stimulated"]
    return ["control"] + [f"stimulated{i}" for i in range(1, n)]


def _names(prefix: str, n: int) -> pd.Index:
    """``prefix`` + zero-padded numbers ``0 .. n-1``, built without a Python loop."""
    return pd.Index(np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), len(str(n - 1)))))


def _response_sizes(response_fraction: float, n_genes: int) -> tuple[int, int]:
    """Genes in a shared response and in each group-specific one (half as many)."""
    n_shared = max(1, round(response_fraction * n_genes))
    return n_shared, max(1, round(response_fraction * n_genes / 2))


def _simulator(
    n_genes: int,
    n_conditions: int,
    n_cell_types: int,
    seed: int,
    n_factors: int,
    response_fraction: float,
) -> dict:
    """The parameters of the count model of :func:`synthetic_counts` (seeded)."""
    rng = np.random.default_rng([seed, 0])
    baseline = rng.normal(0.0, 1.0, n_genes)  # log-abundance of each gene
    loadings = rng.normal(0.0, 0.4, (n_factors, n_genes))  # gene programmes
    centroids = rng.normal(0.0, 1.0, (n_cell_types, n_factors))  # cell types in factor space
    n_shared, n_specific = _response_sizes(response_fraction, n_genes)
    effect = np.zeros((n_cell_types, n_conditions, n_genes))
    for c in range(1, n_conditions):  # condition 0 is the control: no effect
        shared = np.zeros(n_genes)
        shared[rng.choice(n_genes, n_shared, replace=False)] = rng.normal(0.0, 1.0, n_shared)
        for t in range(n_cell_types):
            specific = np.zeros(n_genes)
            genes = rng.choice(n_genes, n_specific, replace=False)
            specific[genes] = rng.normal(0.0, 0.8, n_specific)
            effect[t, c] = rng.uniform(0.5, 1.5) * shared + specific
    return {
        "baseline": baseline,
        "loadings": loadings,
        "centroids": centroids,
        "effect": effect,
        "theta": np.exp(rng.normal(np.log(4.0), 0.5, n_genes)),  # per-gene inverse dispersion
        "fractions": rng.dirichlet(np.full(n_cell_types, 5.0)),
        "cell_sd": 0.35,  # within-type spread of the cells in factor space
    }


def _simulate_cells(
    sim: dict,
    types: np.ndarray,
    conds: np.ndarray,
    rng: np.random.Generator,
    library_median: float,
    library_sd: float,
) -> tuple[np.ndarray, np.ndarray]:
    """NB counts (int64, cells x genes) and expected frequencies of cells of the given labels."""
    n = len(types)
    n_factors = sim["centroids"].shape[1]
    factors = sim["centroids"][types] + rng.normal(0.0, sim["cell_sd"], (n, n_factors))
    eta = sim["baseline"] + factors @ sim["loadings"] + sim["effect"][types, conds]
    eta -= eta.max(1, keepdims=True)
    freq = np.exp(eta)
    freq /= freq.sum(1, keepdims=True)
    library = np.exp(rng.normal(np.log(library_median), library_sd, n))
    theta = sim["theta"]
    shape = np.broadcast_to(theta.astype(np.float32), freq.shape)
    rate = rng.standard_gamma(shape, dtype=np.float32) * (library[:, None] * freq / theta)
    counts = rng.poisson(rate)  # Gamma-Poisson: NB with mean L * p and inverse dispersion theta
    return counts, freq


def synthetic_counts(
    n_cells: int,
    n_genes: int,
    n_conditions: int = 2,
    n_cell_types: int = 5,
    path: str | os.PathLike = "synthetic_counts.h5ad",
    chunk_size: int = 16384,
    seed: int = 0,
    n_factors: int = 10,
    library_median: float = 1500.0,
    library_sd: float = 0.4,
    response_fraction: float = 0.1,
    n_truth_cells: int = 4000,
    target_sum: float = 1e4,
) -> Path:
    """Write a simulated raw-count ``.h5ad`` (CSR) of any size, chunk by chunk, with its truth.

    The model: every cell ``i`` of cell type ``t`` in condition ``c`` has factors
    ``f_i = centroid[t] + N(0, 0.35²)`` in a ``n_factors``-dimensional programme space, and
    expected gene frequencies ``p_i = softmax(baseline + f_i @ loadings + effect[t, c])``. Its
    counts are negative binomial with mean ``L_i * p_i`` and a per-gene inverse dispersion
    ``theta`` (lognormal around 4), where the library size ``L_i`` is lognormal (median
    ``library_median``, log-SD ``library_sd``). The condition effect is a response shared by
    all cell types (``response_fraction`` of the genes, log-fold changes ~ N(0, 1)) scaled by a
    cell-type factor in [0.5, 1.5], plus a cell-type-specific part (half as many genes,
    ~ N(0, 0.8)); the control (condition 0) has none. Cell types have Dirichlet proportions,
    conditions are equally likely, and the cells are in random order.

    Parameters
    ----------
    n_cells, n_genes
        Shape of X.
    n_conditions
        Conditions ``control``, ``stimulated`` (or ``stimulated1``, ``stimulated2``, ...).
    n_cell_types
        Cell types ``type0``, ``type1``, ...
    path
        Target file; written as ``.<name>.tmp-<pid>`` beside it and renamed when complete.
    chunk_size
        Cells appended to the file at a time (rounded up to whole blocks of
        :data:`SIM_BLOCK` cells). The file does not depend on it.
    seed
        Seed of everything; the same seed gives the same file.
    n_factors, library_median, library_sd, response_fraction
        Model parameters (see above).
    n_truth_cells
        Cells simulated per (cell type, condition), apart from the file, to estimate the truth.
    target_sum
        Library size of the normalisation of the truth's log-expression.

    Returns
    -------
    The path written. ``obs`` has categorical ``condition`` and ``cell_type`` (cells
    ``cell0000000``, ...), ``var`` the genes (``gene0000``, ...) with their ``dispersion``
    (theta) and ``baseline``, X float32 integer counts. ``uns["sim"]`` holds the truth of every
    (cell type, condition), arrays of shape (cell types, conditions, genes) indexed like
    ``uns["sim"]["cell_types"]`` and ``["conditions"]``: ``true_frequency`` (the mean of
    ``p_i``), ``true_log_norm_mean`` (the mean of ``log1p(target_sum * counts / total)``, what
    normalised real cells average to, estimated from ``n_truth_cells`` cells) and
    ``true_log_effect`` (``effect``); and the parameters.

    Notes
    -----
    Memory: obs (about 100 bytes per cell: 100 MB at 1M cells), one chunk of CSR counts (about
    ``chunk_size * n_genes * density * 12`` bytes; density is about 0.3 with the defaults) and
    a few dense ``SIM_BLOCK x n_genes`` float64 arrays (16 MB each at 2000 genes), never X.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import anndata
    >>> from trvae.datasets import synthetic_counts
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = synthetic_counts(200, 30, path=Path(folder) / "cells.h5ad", n_truth_cells=50)
    ...     adata = anndata.read_h5ad(path)
    >>> adata.shape, adata.obs["condition"].cat.categories.tolist()
    ((200, 30), ['control', 'stimulated'])
    >>> adata.uns["sim"]["true_log_norm_mean"].shape  # cell types x conditions x genes
    (5, 2, 30)
    """
    from trvae.data.h5ad import write_h5ad_chunked

    if n_cells < 1 or n_genes < 1 or n_conditions < 2 or n_cell_types < 1:
        raise TRVAEError(
            "synthetic_counts needs n_cells, n_genes and n_cell_types >= 1 and n_conditions >= 2"
        )
    sim = _simulator(n_genes, n_conditions, n_cell_types, seed, n_factors, response_fraction)
    labels = np.random.default_rng([seed, 1])
    types = labels.choice(n_cell_types, n_cells, p=sim["fractions"])
    conds = labels.integers(0, n_conditions, n_cells)
    type_names = [f"type{t}" for t in range(n_cell_types)]
    cond_names = _condition_names(n_conditions)
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical.from_codes(conds, categories=cond_names),
            "cell_type": pd.Categorical.from_codes(types, categories=type_names),
        },
        index=_names("cell", n_cells),
    )
    var = pd.DataFrame(
        {
            "dispersion": sim["theta"].astype(np.float32),
            "baseline": sim["baseline"].astype(np.float32),
        },
        index=_names("gene", n_genes),
    )
    truth_rng = np.random.default_rng([seed, 2])
    frequency = np.zeros((n_cell_types, n_conditions, n_genes), dtype=np.float32)
    log_norm = np.zeros_like(frequency)
    for t in range(n_cell_types):
        for c in range(n_conditions):
            group = np.full(n_truth_cells, t), np.full(n_truth_cells, c)
            counts, freq = _simulate_cells(sim, *group, truth_rng, library_median, library_sd)
            frequency[t, c] = freq.mean(0)
            log_norm[t, c] = log_normalize(counts, target_sum, np.float64).mean(0)
    uns = {
        "sim": {
            "cell_types": np.array(type_names),
            "conditions": np.array(cond_names),
            "true_frequency": frequency,
            "true_log_norm_mean": log_norm,
            "true_log_effect": sim["effect"].astype(np.float32),
            "cell_type_fractions": sim["fractions"],
            "target_sum": float(target_sum),
            "library_median": float(library_median),
            "library_sd": float(library_sd),
            "n_truth_cells": int(n_truth_cells),
            "n_cells": int(n_cells),
            "n_genes": int(n_genes),
            "seed": int(seed),
        }
    }

    def chunks():
        pending, n_pending = [], 0
        for k, start in enumerate(range(0, n_cells, SIM_BLOCK)):
            stop = min(start + SIM_BLOCK, n_cells)
            rng = np.random.default_rng([seed, 3, k])
            counts, _ = _simulate_cells(
                sim, types[start:stop], conds[start:stop], rng, library_median, library_sd
            )
            pending.append(sparse.csr_matrix(counts.astype(np.float32)))
            n_pending += stop - start
            if n_pending >= chunk_size:
                yield sparse.vstack(pending, format="csr")
                pending, n_pending = [], 0
        if pending:
            yield sparse.vstack(pending, format="csr")

    return write_h5ad_chunked(path, obs, var, chunks(), sparse_x=True, uns=uns)
