"""Shared fixtures: a factory of small synthetic AnnData with a known condition shift."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse as sp

# The test networks are tiny: one thread is several times faster than two on a shared machine
# (measured 0.14 s vs 1.5 s per epoch under load), and keeps the suite from oversubscribing CPUs.
torch.set_num_threads(1)

# Tests write their own AnnData with anndata (as a user would); under pandas >= 3 its string
# indexes are StringArrays, which anndata writes only when allowed. trvae's own writers allow it
# themselves (tests/data/test_out_of_core.py checks them with the setting off).
ad.settings.allow_write_nullable_strings = True

KANG_FILE = "kang_pbmc_scgen_valid_1975x6998.h5ad"


def make_adata(
    n_cells_per_group: int = 40,
    n_genes: int = 30,
    n_cell_types: int = 3,
    conditions: Sequence[str] = ("control", "stimulated"),
    sparse: bool = False,
    counts: bool = False,
    seed: int = 0,
    rank: int = 3,
    shift_fraction: float = 1 / 3,
    noise: float = 0.3,
) -> ad.AnnData:
    """Simulate ``n_cells_per_group`` cells for every (cell type, condition) pair.

    The expected log-expression of a cell of type ``t`` in condition number ``c`` is

        baseline + (type factors @ gene loadings)[t] + c * magnitude[t] * direction

    where ``direction`` is a fixed vector of ±1 on the first ``shift_fraction`` of the genes (zero
    elsewhere), the same for every cell type, and ``magnitude[t]`` varies with the cell type
    (cell type 0 has the median magnitude).
    With ``counts=False`` X holds that plus Gaussian noise, clipped at 0 (log-normalised-like,
    non-negative floats); with ``counts=True`` X holds negative-binomial counts whose log-mean
    is that value.

    Ground truth goes to ``uns["sim"]``: ``direction`` (genes), ``magnitude`` (cell types),
    ``true_shift`` (cell types x genes, condition 1 minus condition 0 in expected log-space)
    and ``shift_genes`` (indices of the shifted genes).
    """
    rng = np.random.default_rng(seed)
    conditions = list(conditions)
    baseline = rng.uniform(1.5, 2.5, size=n_genes)
    type_signal = rng.normal(size=(n_cell_types, rank)) @ rng.normal(
        scale=0.5, size=(rank, n_genes)
    )
    n_shift = max(1, round(shift_fraction * n_genes))
    direction = np.zeros(n_genes)
    direction[:n_shift] = rng.choice([-1.0, 1.0], size=n_shift)
    # cell type 0 gets the median magnitude, so that a held-out type 0 is inside the range
    magnitude = np.roll(np.linspace(0.8, 1.6, n_cell_types), -(n_cell_types // 2))

    blocks, cell_types, cell_conditions = [], [], []
    for t in range(n_cell_types):
        for c, name in enumerate(conditions):
            log_mean = baseline + type_signal[t] + c * magnitude[t] * direction
            if counts:
                mu = np.exp(log_mean)
                theta = 5.0
                lam = rng.gamma(theta, mu / theta, size=(n_cells_per_group, n_genes))
                block = rng.poisson(lam).astype(np.float32)
            else:
                block = log_mean + rng.normal(scale=noise, size=(n_cells_per_group, n_genes))
                block = np.clip(block, 0.0, None).astype(np.float32)
            blocks.append(block)
            cell_types += [f"type{t}"] * n_cells_per_group
            cell_conditions += [name] * n_cells_per_group
    x = np.vstack(blocks)
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(cell_conditions, categories=conditions),
            "cell_type": pd.Categorical(
                cell_types, categories=[f"type{t}" for t in range(n_cell_types)]
            ),
        },
        index=[f"cell{i}" for i in range(len(x))],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    adata = ad.AnnData(sp.csr_matrix(x) if sparse else x, obs=obs, var=var)
    adata.uns["sim"] = {
        "direction": direction,
        "magnitude": magnitude,
        "true_shift": magnitude[:, None] * direction[None, :],
        "shift_genes": np.arange(n_shift),
    }
    return adata


@pytest.fixture(scope="session")
def synthetic_adata():
    """The :func:`make_adata` factory (call it with the sizes a test needs)."""
    return make_adata


@pytest.fixture(scope="session")
def kang_path() -> Path:
    """The Kang PBMC validation file of the shared data directory; skips when it is absent."""
    path = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / KANG_FILE).resolve()
    if not path.is_file():
        pytest.skip(f"{KANG_FILE} not found at {path}")
    return path
