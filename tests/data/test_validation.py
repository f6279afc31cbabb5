"""Direct tests of the input checks in trvae.data.validation."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from trvae import TRVAEError
from trvae.data.validation import (
    align_genes,
    check_adata,
    check_condition_value,
    check_conditions,
    check_obs_key,
    check_values,
    get_matrix,
)


def _adata(genes=("a", "b", "c", "d")) -> ad.AnnData:
    x = np.arange(3 * len(genes), dtype=np.float32).reshape(3, len(genes))
    obs = pd.DataFrame({"condition": ["x", "y", "x"]}, index=["c0", "c1", "c2"])
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=list(genes)))


# ---------------------------------------------------------------- check_values
def test_sparse_nan_and_inf_in_data_are_found():
    x = sparse.random(20, 10, density=0.3, format="csr", random_state=0, dtype=np.float64)
    check_values(x, "mse")
    x.data[0] = np.nan
    with pytest.raises(TRVAEError, match=r"adata\.X contains 1 NaN and 0 infinite"):
        check_values(x, "mse")
    x.data[1] = np.inf
    x.data[2] = -np.inf
    with pytest.raises(TRVAEError, match=r"1 NaN and 2 infinite"):
        check_values(x, "nb", where="adata.layers['counts']")


def test_dense_nan_names_the_place():
    x = np.ones((3, 3))
    x[1, 1] = np.nan
    with pytest.raises(TRVAEError, match=r"adata\.layers\['raw'\] contains 1 NaN"):
        check_values(x, "mse", where="adata.layers['raw']")


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_count_likelihoods_need_non_negative_integers(likelihood):
    counts = np.array([[0.0, 3.0, 10.0], [1.0, 0.0, 200.0]])
    check_values(counts, likelihood)
    check_values(sparse.csr_matrix(counts), likelihood)
    check_values(counts.astype(np.int32), likelihood)
    with pytest.raises(TRVAEError, match=r"negative values \(min -1\).*likelihood='mse'"):
        check_values(counts - 1, likelihood)
    with pytest.raises(TRVAEError, match=r"non-integer values.*layer="):
        check_values(counts + 0.5, likelihood)
    with pytest.raises(TRVAEError, match=r"non-integer"):
        check_values(sparse.csr_matrix(np.log1p(counts)), likelihood)


def test_counts_given_to_mse_warn():
    counts = np.array([[0.0, 3.0, 10.0], [1.0, 0.0, 200.0]])
    with pytest.warns(UserWarning, match=r"looks like raw counts.*max 200"):
        check_values(counts, "mse")
    with pytest.warns(UserWarning, match=r"raw counts"):
        check_values(sparse.csr_matrix(counts), "mse")


def test_log_normalised_data_does_not_warn():
    x = np.log1p(np.array([[0.0, 3.0, 10.0], [1.0, 0.0, 200.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_values(x, "mse")
        check_values(np.array([[0.0, 1.0], [2.0, 3.0]]), "mse")  # small integers are fine


def test_non_numeric_values():
    with pytest.raises(TRVAEError, match=r"real numbers.*bool"):
        check_values(np.ones((2, 2), dtype=bool), "mse")
    with pytest.raises(TRVAEError, match=r"real numbers.*complex"):
        check_values(np.ones((2, 2), dtype=complex), "mse")


def test_empty_values_pass():
    check_values(sparse.csr_matrix((3, 4)), "nb")
    check_values(np.zeros((0, 4)), "mse")


# ---------------------------------------------------------------- align_genes
def test_align_genes_same_order_is_none():
    assert align_genes(_adata(), ["a", "b", "c", "d"]) is None


def test_align_genes_permuted_returns_indexer():
    adata = _adata(genes=("c", "a", "d", "b"))
    order = align_genes(adata, ["a", "b", "c", "d"])
    assert order is not None
    assert list(adata.var_names[order]) == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(adata.X[:, order][:, 0], adata[:, "a"].X.ravel())


def test_align_genes_missing_and_extra():
    with pytest.raises(TRVAEError, match=r"1 training genes missing \(e\.g\. \['e'\]\)"):
        align_genes(_adata(), ["a", "b", "c", "d", "e"])
    with pytest.raises(TRVAEError, match=r"1 genes not seen in training \(e\.g\. \['d'\]\)"):
        align_genes(_adata(), ["a", "b", "c"])
    with pytest.raises(TRVAEError, match=r"missing \(e\.g\. \['z'\]\).*not seen.*\['d'\]"):
        align_genes(_adata(), ["a", "b", "c", "z"])


def test_align_genes_duplicates():
    with pytest.warns(UserWarning, match=r"not unique"):
        adata = _adata(genes=("a", "b", "a", "c"))
    with pytest.raises(TRVAEError, match=r"duplicated gene names"):
        align_genes(adata, ["a", "b", "c"])


# ---------------------------------------------------------------- the others
def test_check_adata():
    with pytest.raises(TRVAEError, match=r"must be an AnnData object, got ndarray"):
        check_adata(np.zeros((2, 2)))
    with pytest.raises(TRVAEError, match=r"no cells"):
        check_adata(_adata()[[]])
    with pytest.raises(TRVAEError, match=r"no genes"):
        check_adata(_adata()[:, []])
    adata = _adata()
    assert check_adata(adata) is adata


def test_check_obs_key():
    adata = _adata()
    adata.obs["batch"] = ["b1", "b2", "b1"]
    with pytest.raises(TRVAEError, match=r"'cond' is not a column.*'condition', 'batch'"):
        check_obs_key(adata, "cond")
    values = check_obs_key(adata, "condition")
    assert list(values) == ["x", "y", "x"]
    adata.obs["gaps"] = ["x", None, "y"]
    with pytest.raises(TRVAEError, match=r"1 missing values"):
        check_obs_key(adata, "gaps")


def test_check_conditions():
    assert check_conditions(pd.Series(["b", "a", "b"]), "condition") == ["a", "b"]
    with pytest.raises(TRVAEError, match=r"at least 2 conditions.*'a'"):
        check_conditions(pd.Series(["a", "a"]), "condition")
    with pytest.raises(TRVAEError, match=r"fewer than 2 cells: 'b' \(1\)"):
        check_conditions(pd.Series(["a", "a", "b"]), "condition", min_cells=2)


def test_check_condition_value():
    assert check_condition_value("b", ["a", "b"]) == "b"
    with pytest.raises(TRVAEError, match=r"'c' was not seen in training; known conditions: 'a'"):
        check_condition_value("c", ["a", "b"])


def test_get_matrix():
    adata = _adata()
    adata.layers["counts"] = adata.X.copy()
    assert get_matrix(adata, None) is adata.X
    assert get_matrix(adata, "counts") is adata.layers["counts"]
    with pytest.raises(TRVAEError, match=r"layer 'raw' is not in adata\.layers.*'counts'"):
        get_matrix(adata, "raw")
    empty = ad.AnnData(obs=adata.obs, var=adata.var)
    with pytest.raises(TRVAEError, match=r"adata\.X is empty"):
        get_matrix(empty, None)
