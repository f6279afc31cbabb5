"""Tests of trvae.metrics against hand-computed values."""

from __future__ import annotations

import copy
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from trvae._errors import TRVAEError
from trvae.metrics import (
    bootstrap_r2,
    delta_pearson,
    energy_distance,
    evaluate_prediction,
    mmd_rbf,
    nonzero_fraction,
    pca_embed,
    r2_mean,
    r2_nonzero,
    r2_var,
    top_degs,
    wasserstein_genes,
)


def _pearson(x, y):
    """Pearson r from the textbook formula (independent of the code under test)."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


PRED = np.array([[1.0, 2.0, 3.0, 0.0], [3.0, 4.0, 9.0, 2.0]])  # means 2, 3, 6, 1
REAL = np.array([[1.0, 1.0, 1.0, 4.0], [3.0, 5.0, 2.0, 0.0], [2.0, 3.0, 0.0, 2.0]])  # 2, 3, 1, 2
CTRL = np.array([[0.0, 1.0, 2.0, 3.0], [2.0, 1.0, 0.0, 1.0]])  # means 1, 1, 1, 2


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def test_r2_mean_linear_is_one(rng):
    real = rng.normal(size=(50, 20)) + rng.uniform(0, 5, size=20)
    assert r2_mean(2.0 * real + 3.0, real) == pytest.approx(1.0)


def test_r2_mean_hand():
    expected = _pearson([2, 3, 6, 1], [2, 3, 1, 2]) ** 2
    assert r2_mean(PRED, REAL) == pytest.approx(expected)


def test_r2_var_hand():
    def var(col):
        m = sum(col) / len(col)
        return sum((v - m) ** 2 for v in col) / len(col)  # ddof=0

    vx = [var(PRED[:, j].tolist()) for j in range(4)]
    vy = [var(REAL[:, j].tolist()) for j in range(4)]
    assert r2_var(PRED, REAL) == pytest.approx(_pearson(vx, vy) ** 2)


def test_r2_constant_is_nan():
    assert math.isnan(r2_mean(np.ones((3, 4)), REAL))


def test_gene_mismatch_raises():
    with pytest.raises(TRVAEError):
        r2_mean(PRED, REAL[:, :3])


def test_delta_pearson_hand():
    # shifts pred - ctrl: 1, 2, 5, -1 ; real - ctrl: 1, 2, 0, 0
    assert delta_pearson(PRED, REAL, CTRL) == pytest.approx(_pearson([1, 2, 5, -1], [1, 2, 0, 0]))


def test_delta_pearson_constructed(rng):
    control = rng.normal(size=(40, 30))
    shift = rng.normal(size=30)
    real = control + shift
    assert delta_pearson(control + 2 * shift + 1, real, control) == pytest.approx(1.0)
    assert delta_pearson(control - shift, real, control) == pytest.approx(-1.0)


def test_bootstrap(rng):
    # per-gene means and spreads vary, so both R² are well defined and high
    real = rng.normal(size=(200, 50)) * rng.uniform(0.5, 3, size=50) + rng.uniform(0, 3, size=50)
    pred = real[rng.permutation(200)] + rng.normal(scale=0.3, size=(200, 50))
    for stat, point in (("mean", r2_mean(pred, real)), ("var", r2_var(pred, real))):
        mean, sd = bootstrap_r2(pred, real, stat=stat, n_boot=50, seed=1)
        assert sd > 0
        assert abs(mean - point) < 0.1
        assert (mean, sd) == bootstrap_r2(pred, real, stat=stat, n_boot=50, seed=1)
    with pytest.raises(TRVAEError):
        bootstrap_r2(pred, real, stat="median")


def test_energy_distance_hand():
    a = np.array([0.0, 1.0])
    # cross: (3 + 2) / 2 = 2.5 ; within a: (0 + 1 + 1 + 0) / 4 = 0.5 ; within b: 0
    assert energy_distance(a, np.array([3.0])) == pytest.approx(2 * 2.5 - 0.5 - 0.0)
    # cross: (2 + 4 + 1 + 3) / 4 = 2.5 ; within b: (0 + 2 + 2 + 0) / 4 = 1
    assert energy_distance(a, np.array([2.0, 4.0])) == pytest.approx(2 * 2.5 - 0.5 - 1.0)


def test_energy_distance_identical_and_symmetric(rng):
    a, b = rng.normal(size=(30, 5)), rng.normal(loc=1.0, size=(20, 5))
    assert energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(a, b) == pytest.approx(energy_distance(b, a))
    assert energy_distance(a, b) > 0


def test_mmd_hand():
    a, b = np.array([0.0]), np.array([1.0])
    assert mmd_rbf(a, b, gammas=[1.0]) == pytest.approx(2 - 2 * math.exp(-1))
    assert mmd_rbf(a, b, gammas=[1.0, 2.0]) == pytest.approx(
        ((2 - 2 * math.exp(-1)) + (2 - 2 * math.exp(-2))) / 2
    )
    # median heuristic: the only distinct pair has squared distance 1 -> bandwidths = scales
    scales = (0.25, 0.5, 1, 2, 4)
    expected = sum(2 - 2 * math.exp(-1 / s) for s in scales) / len(scales)
    assert mmd_rbf(a, b) == pytest.approx(expected)


def test_mmd_same_and_shifted(rng):
    a = rng.normal(size=(40, 5))
    assert mmd_rbf(a, a) == pytest.approx(0.0, abs=1e-12)
    small = mmd_rbf(a, rng.normal(size=(40, 5)))
    shifted = mmd_rbf(a, rng.normal(loc=2.0, size=(40, 5)))
    assert shifted > 0
    assert shifted > small


def test_sparse_equals_dense(rng):
    x = rng.poisson(1.0, size=(30, 12)).astype(float)
    y = rng.poisson(1.5, size=(25, 12)).astype(float)
    c = rng.poisson(0.8, size=(20, 12)).astype(float)
    sx, sy, sc_ = sparse.csr_matrix(x), sparse.csr_matrix(y), sparse.csr_array(c)
    assert r2_mean(sx, sy) == pytest.approx(r2_mean(x, y))
    assert r2_var(sx, sy) == pytest.approx(r2_var(x, y))
    assert delta_pearson(sx, sy, sc_) == pytest.approx(delta_pearson(x, y, c))
    assert energy_distance(sx, sy) == pytest.approx(energy_distance(x, y))
    assert mmd_rbf(sx, sy) == pytest.approx(mmd_rbf(x, y))
    assert bootstrap_r2(sx, sy, n_boot=5) == pytest.approx(bootstrap_r2(x, y, n_boot=5))
    for e_s, e_d in zip(pca_embed(sx, sy, n_comps=3), pca_embed(x, y, n_comps=3), strict=True):
        np.testing.assert_allclose(e_s, e_d, atol=1e-8)


def test_pca_embed(rng):
    ref, other = rng.normal(size=(40, 10)), rng.normal(size=(15, 10))
    emb = pca_embed(ref, other, ref, n_comps=4)
    assert [e.shape for e in emb] == [(40, 4), (15, 4), (40, 4)]
    np.testing.assert_allclose(emb[0], emb[2])
    np.testing.assert_allclose(emb[0].mean(axis=0), 0, atol=1e-10)
    assert np.all(np.diff(emb[0].var(axis=0)) <= 1e-12)  # components ordered by variance
    assert pca_embed(ref, n_comps=100)[0].shape == (40, 10)  # capped at min(shape)


def _deg_adata(rng, down=False):
    n, g = 60, 30
    x = rng.normal(loc=3.0, scale=0.5, size=(n, g))
    cond = np.array(["ctrl"] * 30 + ["stim"] * 30)
    x[cond == "stim", :5] += 5.0
    if down:
        x[cond == "stim", 10] -= 3.0
    obs = pd.DataFrame({"condition": cond}, index=[f"c{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(g)])
    adata = ad.AnnData(x, obs=obs, var=var)
    adata.uns["note"] = {"a": 1}
    return adata


def test_top_degs_and_caller_unchanged(rng):
    adata = _deg_adata(rng)
    obs, var, x, uns = adata.obs.copy(), adata.var.copy(), adata.X.copy(), copy.deepcopy(adata.uns)
    genes = top_degs(adata, "condition", "stim", "ctrl", n_genes=5)
    assert sorted(genes) == [f"g{j}" for j in range(5)]
    pd.testing.assert_frame_equal(adata.obs, obs)
    pd.testing.assert_frame_equal(adata.var, var)
    np.testing.assert_array_equal(adata.X, x)
    assert adata.uns.keys() == uns.keys() and adata.uns["note"] == uns["note"]
    assert len(top_degs(adata, "condition", "stim", "ctrl", n_genes=1000)) == adata.n_vars


def test_top_degs_includes_down(rng):
    genes = top_degs(_deg_adata(rng, down=True), "condition", "stim", "ctrl", n_genes=6)
    assert sorted(genes) == sorted([f"g{j}" for j in range(5)] + ["g10"])


def test_top_degs_bad_group(rng):
    with pytest.raises(TRVAEError):
        top_degs(_deg_adata(rng), "condition", "nope", "ctrl")
    with pytest.raises(TRVAEError):
        top_degs(_deg_adata(rng), "missing", "stim", "ctrl")


KEYS = {
    "r2_mean_all",
    "r2_mean_top100",
    "r2_mean_top100_sd",
    "r2_var_all",
    "r2_var_top100",
    "r2_var_top100_sd",
    "delta_pearson_all",
    "delta_pearson_top100",
    "edist_top100",
    "mmd_top100",
    "edist_pca",
    "mmd_pca",
    "wasserstein_top100",
    "r2_nonzero_top100",
}


def test_evaluate_prediction(rng):
    control = rng.normal(loc=2.0, size=(60, 25))
    shift = np.zeros(25)
    shift[:5] = 3.0
    real = rng.normal(loc=2.0, size=(50, 25)) + shift
    names = [f"g{j}" for j in range(25)]
    degs = names[:8]

    perfect = evaluate_prediction(real, real, control, names, degs, n_boot=10, n_comps=5)
    assert set(perfect) == KEYS
    assert all(isinstance(v, float) for v in perfect.values())
    for key in ("r2_mean_all", "r2_mean_top100", "delta_pearson_all", "delta_pearson_top100"):
        assert perfect[key] == pytest.approx(1.0)
    for key in ("edist_top100", "mmd_top100", "edist_pca", "mmd_pca", "wasserstein_top100"):
        assert perfect[key] == pytest.approx(0.0, abs=1e-10)

    noisy = evaluate_prediction(
        sparse.csr_matrix(control), real, control, names, degs, n_boot=10, n_comps=5
    )
    assert noisy["edist_top100"] > 0 and noisy["mmd_pca"] > 0
    assert noisy["r2_mean_top100_sd"] > 0
    with pytest.raises(TRVAEError):
        evaluate_prediction(real, real, control, names, ["nope"], n_boot=10)
    with pytest.raises(TRVAEError):
        evaluate_prediction(real, real, control, names[:-1], degs, n_boot=10)


def test_wasserstein_genes_hand_computed():
    # a constant shift d scores |d|; an identical gene scores 0: mean over genes
    pred = np.array([[0.0, 5.0], [1.0, 6.0]])
    real = np.array([[2.0, 5.0], [3.0, 6.0]])
    assert wasserstein_genes(pred, real) == pytest.approx((2.0 + 0.0) / 2)
    # unequal sizes: CDFs 2/3 and 1/2 on [0, 1): W1 = 1/6
    assert wasserstein_genes(np.array([[0.0], [0.0], [1.0]]), np.array([[0.0], [1.0]])) == (
        pytest.approx(1 / 6)
    )
    assert wasserstein_genes(sparse.csr_matrix(pred), real) == pytest.approx(1.0)


def test_r2_nonzero_hand_computed():
    pred = np.array([[0, 1, 1, 0], [1, 1, 0, 0]])  # non-zero fractions 0.5, 1, 0.5, 0
    real = np.array([[0, 1, 0, 0], [0, 1, 0, 1], [0, 1, 1, 0], [1, 0, 0, 0]])  # .25 .75 .25 .25
    x, y = np.array([0.5, 1.0, 0.5, 0.0]), np.array([0.25, 0.75, 0.25, 0.25])
    r = np.corrcoef(x, y)[0, 1]
    assert nonzero_fraction(real).tolist() == [0.25, 0.75, 0.25, 0.25]
    assert r2_nonzero(pred, real) == pytest.approx(r**2)
    assert r2_nonzero(pred, pred) == pytest.approx(1.0)
    assert np.isnan(r2_nonzero(np.ones((3, 2)), real[:, :2]))  # constant fractions
