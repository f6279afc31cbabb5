"""Tests of trvae_benchmarks.kang_counts (NB vs ZINB vs MSE) on tiny synthetic counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

from trvae._errors import TRVAEError
from trvae_benchmarks import kang_counts
from trvae_benchmarks.kang_counts import (
    VIOLIN_READOUTS,
    hvg_flavor,
    log_normalize,
    run_counts_benchmark,
    training_hvgs,
    winners,
)

TINY = {"n_hidden": (16,), "n_latent": 4, "n_mmd": 8}
READOUTS = {f"{lik}{r}" for lik in ("nb", "zinb", "mse") for r in ("", "-sample", "-residual")}
READOUTS |= {"nb-quantile", "zinb-quantile", "mse-quantile"}


@pytest.fixture
def counts(synthetic_adata):
    adata = synthetic_adata(
        n_cells_per_group=25, n_genes=40, n_cell_types=3, counts=True, sparse=True, seed=1
    )
    # a fourth cell type with too few stimulated cells: not held out by default
    rare = synthetic_adata(n_cells_per_group=25, n_genes=40, n_cell_types=1, counts=True, seed=2)
    rare = rare[(rare.obs.condition == "control").to_numpy() | (np.arange(rare.n_obs) % 25 < 5)]
    rare = rare.copy()
    rare.obs["cell_type"] = pd.Categorical(["rare"] * rare.n_obs)
    rare.obs_names = [f"rare{i}" for i in range(rare.n_obs)]
    rare.X = sparse.csr_matrix(rare.X)
    out = sc.concat([adata, rare])
    out.obs["cell_type"] = out.obs["cell_type"].astype(str).astype("category")
    return out


def test_log_normalize_matches_scanpy(counts):
    ref = counts.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    np.testing.assert_allclose(log_normalize(counts.X).toarray(), ref.X.toarray(), rtol=1e-5)
    dense = log_normalize(np.vstack([counts.X[:3].toarray(), np.zeros((1, counts.n_vars))]))
    np.testing.assert_allclose(dense[:3], ref.X[:3].toarray(), rtol=1e-5)
    assert (dense[3] == 0).all()  # a cell without counts stays zero


@pytest.mark.parametrize("flavor", ["seurat_v3", "seurat"])
def test_hvgs_ignore_the_held_out_cells(counts, flavor):
    if flavor == "seurat_v3" and hvg_flavor() != "seurat_v3":
        pytest.skip("scikit-misc is not installed")
    held = ((counts.obs.cell_type == "type0") & (counts.obs.condition == "stimulated")).to_numpy()
    genes = training_hvgs(counts, ~held, n_top_genes=10, flavor=flavor)
    assert len(genes) >= 10 and set(genes) <= set(counts.var_names)

    def altered(mask):
        other = counts.copy()
        x = other.X.toarray()
        rng = np.random.default_rng(0)
        # make the genes not chosen wildly variable in the ``mask`` cells
        rest = [j for j, g in enumerate(counts.var_names) if g not in genes]
        x[np.ix_(mask, rest)] = rng.poisson(200.0, size=(int(mask.sum()), len(rest)))
        other.X = sparse.csr_matrix(x)
        return other

    assert training_hvgs(altered(held), ~held, n_top_genes=10, flavor=flavor) == genes
    # the same change in training cells does change the choice (the check above has teeth)
    train_part = ~held & (counts.obs.cell_type == "type1").to_numpy()
    assert training_hvgs(altered(train_part), ~held, n_top_genes=10, flavor=flavor) != genes


def test_counts_benchmark_writes_csv_and_report(counts, tmp_path, monkeypatch, capsys):
    seen = []
    hvg = sc.pp.highly_variable_genes

    def spy(adata, **kwargs):
        seen.append(set(adata.obs_names))
        return hvg(adata, **kwargs)

    monkeypatch.setattr(sc.pp, "highly_variable_genes", spy)
    group_keys = []

    class Spied(kang_counts.TRVAE):
        def __init__(self, adata, **kwargs):
            group_keys.append(kwargs.get("mmd_group_key"))
            super().__init__(adata, **kwargs)

    monkeypatch.setattr(kang_counts, "TRVAE", Spied)
    out = tmp_path / "res"
    df = run_counts_benchmark(
        counts,
        out_dir=out,
        n_top_genes=20,
        max_epochs=2,
        model_kwargs=TINY,
        n_boot=5,
        progress_bar=False,
        dataset_name="toy counts",
        command="trvae benchmark kang-counts",
    )
    csv = pd.read_csv(out / "metrics.csv")
    pd.testing.assert_frame_equal(csv, df, check_dtype=False)
    # the rare type (5 stimulated cells) is not held out by default
    assert list(csv["cell_type"].unique()) == ["type0", "type1", "type2"]
    assert set(csv["method"]) == READOUTS | {"mean_shift", "control"}
    assert not csv.duplicated(["method", "cell_type", "metric"]).any()
    for metric in ("r2_mean_top100", "r2_var_top100", "edist_pca", "fit_seconds"):
        assert metric in set(csv["metric"])
    value = csv.set_index(["method", "cell_type", "metric"])["value"]
    for method in ("nb", "zinb", "mse"):
        assert np.isfinite(value[(method, "type0", "r2_mean_top100")])
    # every network compares the conditions within cell types, as a user with labels would
    assert group_keys == ["cell_type"] * 9
    # HVGs were chosen three times, each on the training cells only
    obs = counts.obs
    assert len(seen) == 3
    for cells, cell_type in zip(seen, ["type0", "type1", "type2"], strict=True):
        held = set(obs.index[(obs.cell_type == cell_type) & (obs.condition == "stimulated")])
        assert cells == set(obs.index) - held

    # violins of the NB and the MSE default read-outs, one per held-out type
    violins = sorted(p.name for p in (out / "figures").iterdir())
    assert violins == sorted(f"type{t}_{r}_violin.png" for t in range(3) for r in VIOLIN_READOUTS)

    report = (out / "report.md").read_text()
    for text in (
        "# trVAE count likelihoods: toy counts",
        "`trvae benchmark kang-counts`",
        "## Which likelihood wins",
        "R² mean top-100 (mean)",
        "E-distance PCA (sample)",
        "seurat",
        "| **mean** |",
        "max_epochs=2",
    ):
        assert text in report, text
    assert "which likelihood wins" in capsys.readouterr().out


def test_winners_picks_the_best_likelihood():
    rows = [
        ("nb", "A", "r2_mean_top100", 0.5),
        ("zinb", "A", "r2_mean_top100", 0.7),
        ("mse", "A", "r2_mean_top100", 0.6),
        ("nb", "A", "edist_pca", 3.0),
        ("zinb", "A", "edist_pca", 1.0),
        ("mse", "A", "edist_pca", 2.0),
        ("control", "A", "r2_mean_top100", 0.9),  # baselines are not candidates
        ("nb-quantile", "A", "wasserstein_top100", 0.4),
        ("mse-quantile", "A", "wasserstein_top100", 0.6),
    ]
    df = pd.DataFrame(rows, columns=["method", "cell_type", "metric", "value"])
    table = winners(df)
    assert table.loc["A", "R² mean top-100 (mean)"] == "zinb (0.700)"
    assert table.loc["A", "E-distance PCA (mean)"] == "zinb (1.000)"
    assert table.loc["mean", "R² var top-100 (sample)"] == "–"
    assert table.loc["A", "Wasserstein top-100 (quantile)"] == "nb (0.400)"


def test_quick_and_errors(counts, tmp_path):
    with pytest.raises(TRVAEError, match=r"non-integer|counts"):
        bad = counts.copy()
        bad.X = bad.X * 0.5
        run_counts_benchmark(bad, out_dir=tmp_path)
    with pytest.raises(TRVAEError, match="unknown cell type"):
        run_counts_benchmark(counts, cell_types=["X"], out_dir=tmp_path)
    df = run_counts_benchmark(
        counts,
        cell_types=["type2", "type1"],
        quick=True,
        out_dir=tmp_path,
        n_top_genes=20,
        max_epochs=1,
        model_kwargs=TINY,
        progress_bar=False,
    )
    assert set(df["cell_type"]) == {"type2"}
