"""Tests of trvae.pl: every function returns a Figure and writes a PNG on request."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import sparse

from trvae import pl
from trvae._errors import TRVAEError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    control = rng.poisson(1.0, size=(40, 20)).astype(float)
    real = control + rng.normal(scale=0.3, size=(40, 20))
    real[:, :5] += 2.0
    pred = real + rng.normal(scale=0.3, size=(40, 20))
    names = [f"g{j}" for j in range(20)]
    return control, pred, real, names


def _check(fig, path):
    assert isinstance(fig, Figure)
    assert path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("fn", [pl.mean_scatter, pl.var_scatter])
def test_scatter(fn, data, tmp_path):
    _, pred, real, names = data
    fig = fn(pred, real, names, degs=names[:8], label_top=3, save=tmp_path / "s.png")
    _check(fig, tmp_path / "s.png")
    ax = fig.axes[0]
    assert len(ax.texts) == 3
    assert "R²" in ax.get_legend().get_texts()[0].get_text()
    assert isinstance(fn(sparse.csr_matrix(pred), real, names, title="x"), Figure)


def test_scatter_unknown_deg(data):
    _, pred, real, names = data
    with pytest.raises(TRVAEError):
        pl.mean_scatter(pred, real, names, degs=["nope"])


def test_response_violin(data, tmp_path):
    control, pred, real, names = data
    fig = pl.response_violin(control, pred, real, names, ["g0", "g7"], save=tmp_path / "v.png")
    _check(fig, tmp_path / "v.png")
    assert len(fig.axes) == 2
    assert isinstance(pl.response_violin(control, pred, real, names, ["g1"]), Figure)


def test_r2_bars(tmp_path):
    rows = [
        (m, ct, metric, v)
        for m in ("trvae", "scgen")
        for ct in ("NK", "B", "CD4T")
        for metric, v in (("r2_mean_top100", 0.9), ("r2_var_top100", 0.5))
        for v in (v, v - 0.05)  # two seeds -> error bars
    ]
    df = pd.DataFrame(rows, columns=["method", "cell_type", "metric", "value"])
    fig = pl.r2_bars(df, save=tmp_path / "sub" / "b.png")
    _check(fig, tmp_path / "sub" / "b.png")
    assert len(fig.axes[0].patches) == 6
    assert isinstance(pl.r2_bars(df.drop_duplicates(["method", "cell_type", "metric"])), Figure)
    with pytest.raises(TRVAEError):
        pl.r2_bars(df, metric="nope")


def test_logfc_scatter(data, tmp_path):
    control, pred, real, names = data
    genes = pd.DataFrame(
        {"response": ["specific"] * 3 + ["shared"] * 2 + [""] * 15}, index=pd.Index(names)
    )
    fig = pl.logfc_scatter(
        {"a": pred, "b": control}, real, control, genes, title="t", save=tmp_path / "l.png"
    )
    _check(fig, tmp_path / "l.png")
    assert len(fig.axes) == 2
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0].startswith("shared (2)") and labels[1].startswith("specific (3)")
    with pytest.raises(TRVAEError):
        pl.logfc_scatter({}, real, control, genes)


def test_embedding_grid(tmp_path):
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"condition": np.repeat(["c", "s"], 30), "cell_type": ["x", "y"] * 30})
    embs = {"z": rng.normal(size=(60, 4)), "y": rng.normal(size=(60, 3))}
    fig = pl.embedding_grid(embs, obs, ["condition", "cell_type"], save=tmp_path / "u.png")
    _check(fig, tmp_path / "u.png")
    assert len(fig.axes) == 4
    assert fig.axes[1].get_title() == "z — cell_type"
    with pytest.raises(TRVAEError, match="no column"):
        pl.embedding_grid(embs, obs, ["nope"])
    with pytest.raises(TRVAEError, match="has 5 cells"):
        pl.embedding_grid({"z": embs["z"][:5]}, obs, ["condition"])
