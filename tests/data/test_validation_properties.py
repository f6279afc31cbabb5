"""Property-based tests of the input validation, through the public model.

Random small AnnData (1-30 cells, 1-20 genes, float32/float64/int32/int64, dense/CSR/CSC, 2-3
conditions with string, categorical or integer labels, likelihood mse/nb/zinb):

* good inputs construct a :class:`TRVAE` and pass ``_cell_data``, ``get_latent`` and ``predict``;
* every injected bad input raises :class:`trvae.TRVAEError`, never another exception type;
* the caller's AnnData is never modified, whether the call succeeds or fails.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import sparse

from trvae import TRVAE, TRVAEError

TINY = {"n_hidden": (16,), "n_latent": 4, "n_mmd": 8}
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DTYPES = (np.float32, np.float64, np.int32, np.int64)
FORMATS = ("dense", "csr", "csc")
LIKELIHOODS = ("mse", "nb", "zinb")
NAMES = ("control", "stimulated", "other")


@dataclass(frozen=True)
class Spec:
    """What an AnnData is built from (kept apart so that bad variants can be derived)."""

    x: np.ndarray  # dense, in the final dtype
    fmt: str
    labels: tuple  # condition of each cell
    label_kind: str  # "str", "category" or "int"
    categories: tuple  # for "category": all categories, possibly some unused
    genes: tuple
    likelihood: str

    @property
    def n_conditions(self) -> int:
        return len(set(self.labels))


def build(spec: Spec) -> ad.AnnData:
    x = spec.x
    if spec.fmt != "dense":
        x = sparse.csr_matrix(x) if spec.fmt == "csr" else sparse.csc_matrix(x)
    if spec.label_kind == "category":
        labels = pd.Categorical(spec.labels, categories=spec.categories)
    else:
        labels = list(spec.labels)
    n_obs, n_vars = spec.x.shape
    obs = pd.DataFrame(
        {"condition": labels, "batch": [f"b{i % 2}" for i in range(n_obs)]},
        index=[f"cell{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame({"gene_ids": [f"ENSG{j:05d}" for j in range(n_vars)]}, index=spec.genes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicated gene names, on purpose
        return ad.AnnData(x, obs=obs, var=var)


@st.composite
def specs(draw) -> Spec:
    n_conditions = draw(st.integers(2, 3))
    n_cells = draw(st.integers(n_conditions, 30))
    n_genes = draw(st.integers(1, 20))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    likelihood = draw(st.sampled_from(LIKELIHOODS))
    counts = likelihood != "mse"
    if counts or dtype.kind == "i":
        low = 0 if counts else -50
        elements = st.one_of(st.just(0), st.integers(low, 1000))
        x = draw(arrays(np.int64, (n_cells, n_genes), elements=elements))
    else:  # log-normalised-like values, or any real values: mse accepts negatives
        elements = st.one_of(st.just(0.0), st.floats(-20, 20, allow_nan=False, width=32))
        x = draw(arrays(np.float32, (n_cells, n_genes), elements=elements))
    order = draw(st.permutations(range(n_cells)))
    codes = [i % n_conditions for i in order]  # every condition present
    label_kind = draw(st.sampled_from(["str", "category", "int"]))
    if label_kind == "int":
        labels = tuple(10 * c + 1 for c in codes)
        categories = ()
    else:
        labels = tuple(NAMES[c] for c in codes)
        categories = tuple(NAMES[:n_conditions])
        if label_kind == "category":
            categories = tuple(draw(st.permutations(categories)))
            if draw(st.booleans()):
                categories += ("unused",)  # an unused category is not a condition
    gene_order = draw(st.permutations(range(n_genes)))
    return Spec(
        x=x.astype(dtype),
        fmt=draw(st.sampled_from(FORMATS)),
        labels=labels,
        label_kind=label_kind,
        categories=categories,
        genes=tuple(f"gene{j}" for j in gene_order),
        likelihood=likelihood,
    )


# ------------------------------------------------------------------ the caller's AnnData
def snapshot(adata: ad.AnnData) -> dict:
    x = adata.X
    return {
        "X": x,
        "X_copy": x.copy(),
        "type": type(x),
        "dtype": x.dtype,
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "obs_names": list(adata.obs_names),
        "var_names": list(adata.var_names),
        "uns": set(adata.uns.keys()),
        "layers": set(adata.layers.keys()),
        "obsm": set(adata.obsm.keys()),
    }


def assert_unchanged(adata: ad.AnnData, snap: dict) -> None:
    x, old = adata.X, snap["X_copy"]
    assert x is snap["X"], "adata.X was replaced"
    assert type(x) is snap["type"] and x.dtype == snap["dtype"]
    assert x.shape == old.shape
    if sparse.issparse(x):  # sparse stays sparse, in the same format, with the same entries
        assert x.format == old.format
        np.testing.assert_array_equal(x.data, old.data)
        np.testing.assert_array_equal(x.indices, old.indices)
        np.testing.assert_array_equal(x.indptr, old.indptr)
    else:
        np.testing.assert_array_equal(x, old)
    pd.testing.assert_frame_equal(adata.obs, snap["obs"])
    pd.testing.assert_frame_equal(adata.var, snap["var"])
    assert list(adata.obs_names) == snap["obs_names"]
    assert list(adata.var_names) == snap["var_names"]
    assert set(adata.uns.keys()) == snap["uns"]
    assert set(adata.layers.keys()) == snap["layers"]
    assert set(adata.obsm.keys()) == snap["obsm"]


def make_model(spec: Spec, adata: ad.AnnData) -> TRVAE:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*looks like raw counts", category=UserWarning)
        return TRVAE(adata, condition_key="condition", likelihood=spec.likelihood, **TINY)


def expect_error(fn, *args, **kwargs) -> str:
    """``fn`` raises TRVAEError (any other exception fails the test); returns the message."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*looks like raw counts", category=UserWarning)
        with pytest.raises(TRVAEError) as info:
            fn(*args, **kwargs)
    message = str(info.value)
    assert message.strip(), "empty error message"
    return message


# ------------------------------------------------------------------ good inputs
@SETTINGS
@given(spec=specs())
def test_good_inputs_pass_and_leave_adata_unchanged(spec):
    adata = build(spec)
    snap = snapshot(adata)
    model = make_model(spec, adata)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*looks like raw counts", category=UserWarning)
        data = model._cell_data(adata)
        latent = model.get_latent(adata)
        pred = model.predict(adata, model.conditions_[-1])

    assert len(data) == adata.n_obs and data.x.shape == adata.shape
    assert data.gene_order is None
    expected = sorted(map(str, set(spec.labels)))
    if spec.label_kind == "category":
        expected = [c for c in spec.categories if c in set(spec.labels)]  # obs order, used only
    assert model.conditions_ == expected
    assert model.var_names == list(spec.genes)
    assert latent.shape == (adata.n_obs, TINY["n_latent"]) and np.isfinite(latent).all()
    assert pred.shape == adata.shape and list(pred.var_names) == list(spec.genes)
    assert_unchanged(adata, snap)


@SETTINGS
@given(spec=specs(), data=st.data())
def test_reordered_genes_are_realigned_not_rejected(spec, data):
    adata = build(spec)
    model = make_model(spec, adata)
    perm = np.array(data.draw(st.permutations(range(adata.n_vars))))
    other = build(replace(spec, x=spec.x[:, perm], genes=tuple(np.array(spec.genes)[perm])))
    snap = snapshot(other)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*looks like raw counts", category=UserWarning)
        target = model.conditions_[0]
        np.testing.assert_array_equal(
            model.predict(other, target).X, model.predict(adata, target).X
        )
        np.testing.assert_array_equal(model.get_latent(other), model.get_latent(adata))
    assert_unchanged(other, snap)


# ------------------------------------------------------------------ bad inputs
def _inject(spec: Spec, value, cell: int, gene: int) -> Spec:
    """``spec`` with ``x[cell, gene] = value``, as floats when the value needs them."""
    x = spec.x.copy()
    if isinstance(value, float) and x.dtype.kind == "i":
        x = x.astype(np.float64)
    x[cell, gene] = value
    return replace(spec, x=x)


BAD_AT_CONSTRUCTION = (
    "nan",
    "inf",
    "negative",
    "non_integer",
    "single_condition",
    "missing_condition_key",
    "no_condition_key",
    "missing_condition_value",
    "duplicated_genes",
)
BAD_AT_PREDICT = (
    "renamed_gene",
    "missing_gene",
    "extra_gene",
    "duplicated_gene",
    "nan",
    "negative",
    "non_integer",
    "unknown_condition",
    "missing_condition_key",
    "unknown_target",
)


def _applicable(kind: str, spec: Spec) -> bool:
    if kind in ("negative", "non_integer"):
        return spec.likelihood != "mse"  # mse takes any real number
    if kind in ("duplicated_genes", "missing_gene"):
        return spec.x.shape[1] >= 2
    return True


def _bad_construction(spec: Spec, kind: str, data) -> tuple[Spec, str | None]:
    """A bad variant of ``spec`` and the condition_key to pass."""
    n_cells, n_genes = spec.x.shape
    cell = data.draw(st.integers(0, n_cells - 1), label="cell")
    gene = data.draw(st.integers(0, n_genes - 1), label="gene")
    key = "condition"
    if kind == "nan":
        spec = _inject(spec, float("nan"), cell, gene)
    elif kind == "inf":
        spec = _inject(spec, data.draw(st.sampled_from([np.inf, -np.inf])), cell, gene)
    elif kind == "negative":
        spec = _inject(spec, -data.draw(st.integers(1, 100)), cell, gene)
    elif kind == "non_integer":
        spec = _inject(
            spec, float(spec.x[cell, gene]) + data.draw(st.sampled_from([0.5, 1e-3])), cell, gene
        )
    elif kind == "single_condition":
        spec = replace(spec, labels=(spec.labels[cell],) * n_cells)
    elif kind == "missing_condition_key":
        key = data.draw(st.sampled_from(["cond", "Condition", "batch_", "cell_type"]))
    elif kind == "no_condition_key":
        key = None
    elif kind == "missing_condition_value":
        spec = replace(spec, labels=(*spec.labels[:cell], None, *spec.labels[cell + 1 :]))
    elif kind == "duplicated_genes":
        other = data.draw(st.integers(0, n_genes - 1).filter(lambda g: g != gene))
        genes = list(spec.genes)
        genes[other] = genes[gene]
        spec = replace(spec, genes=tuple(genes))
    return spec, key


@SETTINGS
@given(spec=specs(), data=st.data())
def test_bad_inputs_at_construction_raise_trvae_error(spec, data):
    kind = data.draw(
        st.sampled_from([k for k in BAD_AT_CONSTRUCTION if _applicable(k, spec)]), label="kind"
    )
    bad, key = _bad_construction(spec, kind, data)
    adata = build(bad)
    snap = snapshot(adata)
    expect_error(TRVAE, adata, condition_key=key, likelihood=spec.likelihood, **TINY)
    assert_unchanged(adata, snap)


def _bad_predict(spec: Spec, kind: str, data) -> tuple[Spec, str]:
    """A bad variant of ``spec`` to give a model trained on ``spec``, and a target condition."""
    n_cells, n_genes = spec.x.shape
    cell = data.draw(st.integers(0, n_cells - 1), label="cell")
    gene = data.draw(st.integers(0, n_genes - 1), label="gene")
    genes = list(spec.genes)
    target = str(spec.labels[0])
    if kind == "renamed_gene":
        genes[gene] = "not_a_training_gene"
        spec = replace(spec, genes=tuple(genes))
    elif kind == "missing_gene":
        keep = [j for j in range(n_genes) if j != gene]
        spec = replace(spec, x=spec.x[:, keep], genes=tuple(genes[j] for j in keep))
    elif kind == "extra_gene":
        x = np.concatenate([spec.x, spec.x[:, [gene]]], axis=1)
        spec = replace(spec, x=x, genes=(*genes, "extra_gene"))
    elif kind == "duplicated_gene":
        x = np.concatenate([spec.x, spec.x[:, [gene]]], axis=1)
        spec = replace(spec, x=x, genes=(*genes, genes[gene]))
    elif kind in ("nan", "negative", "non_integer"):
        spec, _ = _bad_construction(spec, kind, data)
    elif kind == "unknown_condition":
        labels = list(spec.labels)
        labels[cell] = "never_seen" if spec.label_kind != "int" else 999
        categories = (*spec.categories, "never_seen") if spec.label_kind == "category" else ()
        spec = replace(spec, labels=tuple(labels), categories=categories)
    elif kind == "unknown_target":
        target = "never_seen"
    return spec, target


@SETTINGS
@given(spec=specs(), data=st.data())
def test_bad_inputs_at_predict_raise_trvae_error(spec, data):
    model = make_model(spec, build(spec))
    kind = data.draw(
        st.sampled_from([k for k in BAD_AT_PREDICT if _applicable(k, spec)]), label="kind"
    )
    bad, target = _bad_predict(spec, kind, data)
    adata = build(bad)
    if kind == "missing_condition_key":
        del adata.obs["condition"]
    snap = snapshot(adata)
    if kind != "unknown_target":
        expect_error(model._cell_data, adata)
        expect_error(model.get_latent, adata)
    expect_error(model.predict, adata, target)
    assert_unchanged(adata, snap)


def test_not_an_anndata_and_empty_anndata():
    x = np.ones((4, 3), dtype=np.float32)
    expect_error(TRVAE, x, condition_key="condition", **TINY)
    spec = Spec(x, "dense", ("a", "b", "a", "b"), "str", ("a", "b"), ("g0", "g1", "g2"), "mse")
    adata = build(spec)
    model = make_model(spec, adata)
    expect_error(TRVAE, adata[:0].copy(), condition_key="condition", **TINY)
    expect_error(TRVAE, adata[:, []].copy(), condition_key="condition", **TINY)
    expect_error(model.predict, adata[:0].copy(), "a")
    expect_error(model.predict, x, "a")
