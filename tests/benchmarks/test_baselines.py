"""Tests of trvae_benchmarks.baselines: the fit/predict interface of every benchmarked method."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from trvae._errors import TRVAEError
from trvae.model import DEFAULT_BETA
from trvae_benchmarks.baselines import (
    CVAE,
    METHODS,
    ControlUnchanged,
    LatentArithmetic,
    MeanShift,
    PaperTRVAE,
    TRVAEMethod,
    _balance,
    make_method,
)

TINY = {"n_hidden": (16,), "n_latent": 4, "n_mmd": 8, "progress_bar": False, "seed": 0}


def _toy(n: int = 30, n_genes: int = 12, shift: float = 2.0, seed: int = 0) -> ad.AnnData:
    """``n`` cells per (cell type, condition); stimulation adds ``shift`` to the first 4 genes."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(1, 3, size=(3, n_genes))
    blocks, obs = [], []
    for t in range(3):
        for c, cond in enumerate(("control", "stimulated")):
            mean = base[t] + c * shift * (np.arange(n_genes) < 4)
            blocks.append(mean + rng.normal(scale=0.2, size=(n, n_genes)))
            obs += [(cond, f"type{t}")] * n
    return ad.AnnData(
        np.vstack(blocks).astype(np.float32),
        obs=pd.DataFrame(obs, columns=["condition", "cell_type"], index=map(str, range(len(obs)))),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]),
    )


def _split(adata: ad.AnnData, cell_type: str = "type1"):
    is_type = (adata.obs["cell_type"] == cell_type).to_numpy()
    held = is_type & (adata.obs["condition"] == "stimulated").to_numpy()
    ctrl = is_type & (adata.obs["condition"] == "control").to_numpy()
    return adata[~held].copy(), adata[ctrl].copy(), np.asarray(adata[held].X)


def test_control_unchanged_returns_input():
    adata = _toy(n=5)
    train, ctrl, _ = _split(adata)
    out = ControlUnchanged().fit(train).predict(ctrl)
    assert out.dtype == np.float32 and out.shape == ctrl.shape
    np.testing.assert_array_equal(out, ctrl.X)
    ctrl.X = sparse.csr_matrix(ctrl.X)  # sparse input, genes in another order
    np.testing.assert_array_equal(ControlUnchanged().fit(train).predict(ctrl[:, ::-1]), out)


def test_mean_shift_hand_computed():
    x = np.array([[1, 2], [3, 4], [5, 6], [7, 10], [0, 0]], dtype=np.float32)
    obs = pd.DataFrame(
        {
            "condition": ["control", "control", "stimulated", "stimulated", "control"],
            "cell_type": ["A", "A", "A", "A", "B"],
        },
        index=list("abcde"),
    )
    train = ad.AnnData(x, obs=obs, var=pd.DataFrame(index=["g0", "g1"]))
    ctrl = ad.AnnData(
        np.array([[0, 0], [1, 1]], dtype=np.float32), var=pd.DataFrame(index=["g0", "g1"])
    )
    # B has no stimulated cells: the shift comes from A only, (6, 8) - (2, 3)
    model = MeanShift().fit(train)
    np.testing.assert_allclose(model.shift_, [4, 5])
    np.testing.assert_allclose(model.predict(ctrl), [[4, 5], [5, 6]])
    # without cell types every cell counts: (6, 8) - (4/3, 2)
    pooled = MeanShift(cell_type_key=None).fit(train)
    np.testing.assert_allclose(pooled.shift_, [6 - 4 / 3, 6], rtol=1e-6)
    train.X = sparse.csr_matrix(train.X)
    np.testing.assert_allclose(MeanShift().fit(train).shift_, [4, 5])


def test_latent_arithmetic_moves_towards_the_shift():
    adata = _toy(n=40, shift=3.0)
    train, ctrl, real = _split(adata)
    model = LatentArithmetic(**TINY, max_epochs=25, lr=1e-2, batch_size=64).fit(train)
    assert model.delta_.shape == (4,)
    pred = model.predict(ctrl)
    assert pred.shape == ctrl.shape and pred.dtype == np.float32 and np.isfinite(pred).all()
    moved = pred.mean(0) - np.asarray(ctrl.X).mean(0)
    true = real.mean(0) - np.asarray(ctrl.X).mean(0)
    assert moved[:4].mean() > 0.5 * true[:4].mean()
    assert np.corrcoef(moved, true)[0, 1] > 0.5
    assert model.module.n_conditions == 1 and model.module.beta == 0


def test_neural_methods_share_arguments():
    train, ctrl, _ = _split(_toy(n=10))
    trvae = TRVAEMethod(**TINY, max_epochs=1).fit(train)
    cvae = CVAE(**TINY, max_epochs=1, beta=5.0).fit(train)
    paper = PaperTRVAE(**TINY, max_epochs=1, decoder_conditioning="all_layers").fit(train)
    assert trvae.model.init_params["beta"] == DEFAULT_BETA["mse", True]  # grouped by cell type
    assert trvae.model.init_params["decoder_conditioning"] == "all_layers"
    assert cvae.model.init_params["beta"] == 0.0
    drop = {"beta"}
    assert {k: v for k, v in trvae.model.init_params.items() if k not in drop} == {
        k: v for k, v in cvae.model.init_params.items() if k not in drop
    }
    # trVAE and the CVAE compare the conditions within cell types; the paper's network does not
    assert trvae.model.init_params["mmd_group_key"] == "cell_type"
    assert trvae.model.init_params["mmd_groups"] == sorted(set(train.obs["cell_type"]))
    paper_params = paper.model.init_params
    assert paper_params["mmd_group_key"] is None and paper_params["beta"] == 100.0
    assert paper_params["decoder_conditioning"] == "mmd_layer"
    assert paper_params["mmd_estimator"] == "biased"
    for method in (trvae, cvae, paper):
        pred = method.predict(ctrl)
        assert pred.shape == ctrl.shape and pred.dtype == np.float32
        embs = method.embeddings(ctrl)
        assert embs["z"].shape == (ctrl.n_obs, 4) and embs["y"].shape == (ctrl.n_obs, 8)


def test_balance_equal_cells_per_type():
    types = np.array(["a"] * 5 + ["b"] * 2 + ["c"] * 1)
    out = _balance(np.arange(8), types, np.random.default_rng(0))
    assert sorted(pd.Series(types[out]).value_counts().tolist()) == [5, 5, 5]
    np.testing.assert_array_equal(_balance(np.arange(3), None, np.random.default_rng(0)), [0, 1, 2])


def test_errors():
    train, ctrl, _ = _split(_toy(n=5))
    with pytest.raises(TRVAEError, match="unknown arguments"):
        MeanShift(n_layers=3)
    with pytest.raises(TRVAEError, match="unknown method"):
        make_method("nope")
    with pytest.raises(TRVAEError, match="not fitted"):
        MeanShift().predict(ctrl)
    with pytest.raises(TRVAEError, match="no cells with condition == 'treated'"):
        MeanShift(stimulated="treated").fit(train)
    with pytest.raises(TRVAEError, match="genes differ"):
        ControlUnchanged().fit(train).predict(ctrl[:, :5])
    assert set(METHODS) == {"trVAE", "CVAE", "trVAE-paper", "scGen", "mean_shift", "control"}
