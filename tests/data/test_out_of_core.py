"""Out-of-core data: the synthetic count writer, backed training and prediction, the block sampler,
chunked validation and ``trvae bench scale``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import trvae.data.cell_data as data_module
from trvae import TRVAE, TRVAEError
from trvae._io import write_h5ad
from trvae.cli import main
from trvae.data import validation as V
from trvae.data.cell_data import CellData
from trvae.data.h5ad import write_h5ad_chunked
from trvae.datasets import synthetic_counts

SMALL = {"n_hidden": (32,), "n_latent": 4, "n_mmd": 16, "likelihood": "nb"}
QUIET = {"progress_bar": False, "batch_size": 32}
SIM = {"n_truth_cells": 100}


@pytest.fixture(scope="module")
def counts_file(tmp_path_factory):
    """A small synthetic count file (600 cells x 40 genes), written in chunks of 256 cells."""
    path = tmp_path_factory.mktemp("scale") / "counts.h5ad"
    return synthetic_counts(600, 40, path=path, chunk_size=256, seed=1, **SIM)


@pytest.fixture
def backed(counts_file):
    adata = ad.read_h5ad(counts_file, backed="r")
    yield adata
    adata.file.close()


def _small_blocks(monkeypatch, size: int = 32, buffer: int = 4) -> None:
    """Make the block-shuffled sampler kick in on small data (more than size * buffer cells)."""
    monkeypatch.setattr(data_module, "BLOCK_SIZE", size)
    monkeypatch.setattr(data_module, "BUFFER_BLOCKS", buffer)


# ------------------------------------------------------------------ synthetic_counts
def test_synthetic_counts_is_a_valid_sparse_count_file(counts_file):
    adata = ad.read_h5ad(counts_file)
    assert adata.shape == (600, 40)
    assert sparse.issparse(adata.X) and adata.X.format == "csr"
    assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.data, np.round(adata.X.data))
    assert adata.X.data.min() > 0 and 0 < adata.X.nnz < 600 * 40  # zeros are not stored
    assert list(adata.obs.columns) == ["condition", "cell_type"]
    assert list(adata.obs["condition"].cat.categories) == ["control", "stimulated"]
    assert adata.obs["cell_type"].nunique() == 5
    assert adata.obs_names.is_unique and adata.var_names.is_unique
    assert adata.obs_names[0] == "cell000" and adata.var_names[-1] == "gene39"
    sim = adata.uns["sim"]
    for key in ("true_frequency", "true_log_norm_mean", "true_log_effect"):
        assert sim[key].shape == (5, 2, 40)
    np.testing.assert_allclose(sim["true_frequency"].sum(-1), 1.0, rtol=1e-5)
    assert np.all(sim["true_log_effect"][:, 0] == 0)  # the control has no effect
    assert not list(counts_file.parent.glob(".*tmp*"))  # the temporary file was renamed


def test_synthetic_counts_truth_matches_the_cells(tmp_path):
    path = synthetic_counts(4000, 30, n_cell_types=2, path=tmp_path / "s.h5ad", seed=3, **SIM)
    adata = ad.read_h5ad(path)
    sim = adata.uns["sim"]
    x = adata.X.toarray().astype(np.float64)
    lognorm = np.log1p(x * (sim["target_sum"] / x.sum(1, keepdims=True)))
    for t, cell_type in enumerate(sim["cell_types"]):
        for c, condition in enumerate(sim["conditions"]):
            cells = (adata.obs["cell_type"] == cell_type) & (adata.obs["condition"] == condition)
            mean = lognorm[cells.to_numpy()].mean(0)
            assert np.corrcoef(mean, sim["true_log_norm_mean"][t, c])[0, 1] > 0.97


def test_synthetic_counts_is_deterministic_whatever_the_chunks(counts_file, tmp_path):
    again = synthetic_counts(600, 40, path=tmp_path / "again.h5ad", chunk_size=1000, seed=1, **SIM)
    other = synthetic_counts(600, 40, path=tmp_path / "other.h5ad", seed=2, **SIM)
    a, b, c = (ad.read_h5ad(p) for p in (counts_file, again, other))
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    np.testing.assert_array_equal(
        a.uns["sim"]["true_log_norm_mean"], b.uns["sim"]["true_log_norm_mean"]
    )
    assert (a.X != c.X).nnz > 0


def test_chunked_write_is_atomic(tmp_path, counts_file):
    target = tmp_path / "out.h5ad"
    target.write_bytes(counts_file.read_bytes())
    obs = pd.DataFrame(index=[f"c{i}" for i in range(4)])
    var = pd.DataFrame(index=["g0", "g1"])

    def failing():
        yield np.ones((2, 2))
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_h5ad_chunked(target, obs, var, failing(), sparse_x=False)
    assert ad.read_h5ad(target).shape == (600, 40)  # the previous file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]
    with pytest.raises(ValueError, match="3 rows, obs has 4"):
        write_h5ad_chunked(target, obs, var, [np.ones((3, 2))], sparse_x=True)
    assert ad.read_h5ad(target).shape == (600, 40)


def test_writers_take_pandas_string_arrays(tmp_path):
    """pandas >= 3 makes every string index a StringArray, which anndata refuses by default."""
    strings = pd.Index(["c0", "c1"], dtype="string")
    obs = pd.DataFrame({"label": pd.array(["a", "b"], dtype="string")}, index=strings)
    var = pd.DataFrame(index=pd.Index(["g0", "g1"], dtype="string"))
    adata = ad.AnnData(np.eye(2, dtype=np.float32), obs=obs, var=var)
    with ad.settings.override(allow_write_nullable_strings=False):
        with pytest.raises(RuntimeError, match="allow_write_nullable_strings"):
            adata.write_h5ad(tmp_path / "plain.h5ad")  # what the writers must get around
        write_h5ad_chunked(tmp_path / "chunked.h5ad", obs, var, [np.eye(2)], sparse_x=True)
        write_h5ad(adata, tmp_path / "whole.h5ad")
    for name in ("chunked.h5ad", "whole.h5ad"):
        back = ad.read_h5ad(tmp_path / name)
        assert list(back.obs_names) == ["c0", "c1"] and list(back.obs["label"]) == ["a", "b"]
        np.testing.assert_array_equal(sparse.csr_matrix(back.X).toarray(), np.eye(2))


# ------------------------------------------------------------------ the block sampler
@pytest.fixture
def numbered(tmp_path):
    """A backed CSR file whose first column holds row number + 1, with 3 conditions."""
    n = 700
    x = sparse.random(n, 6, density=0.5, format="csr", random_state=0, dtype=np.float32)
    x = sparse.hstack([sparse.csr_matrix(np.arange(1, n + 1, dtype=np.float32)[:, None]), x])
    adata = ad.AnnData(x.tocsr())
    adata.write_h5ad(tmp_path / "numbered.h5ad")
    backed = ad.read_h5ad(tmp_path / "numbered.h5ad", backed="r")
    yield backed, np.arange(n) % 3
    backed.file.close()


def _served(data: CellData, indices, seed: int, batch_size: int = 32, drop: bool = False):
    rng = np.random.default_rng(seed)
    batches = list(data.batches(indices, batch_size, True, rng, drop_small_last=drop))
    rows = np.concatenate([b[0][:, 0].numpy() for b in batches]).astype(int) - 1
    conds = np.concatenate([b[1].numpy() for b in batches])
    return rows, conds, [len(b[0]) for b in batches]


def test_block_sampler_visits_every_cell_once(numbered):
    backed, codes = numbered
    data = CellData(backed.X, codes, block_size=16, buffer_blocks=3)
    indices = np.sort(np.random.default_rng(0).choice(700, 500, replace=False))
    rows, conds, sizes = _served(data, indices, seed=0)
    np.testing.assert_array_equal(np.sort(rows), indices)  # each training cell exactly once
    np.testing.assert_array_equal(conds, codes[rows])
    assert sizes[:-1] == [32] * (len(sizes) - 1) and sizes[-1] == 500 - 32 * (len(sizes) - 1)
    assert not np.all(np.diff(rows) > 0)  # shuffled
    # each batch mixes cells from several blocks of the file
    assert len(np.unique(rows[:32] // 16)) > 1
    again, _, _ = _served(data, indices, seed=0)
    np.testing.assert_array_equal(rows, again)  # seeded
    other, _, _ = _served(data, indices, seed=1)
    assert not np.array_equal(rows, other)
    # batches larger than a buffer (3 blocks of 16) are filled from the next buffers; the last
    # 20 cells are fewer than a quarter of a batch: dropped when asked
    rows, _, sizes = _served(data, indices, seed=0, batch_size=96, drop=True)
    assert sizes == [96] * 5 and len(np.unique(rows)) == 480


def test_block_sampler_with_a_row_map(numbered):
    backed, codes = numbered
    row_map = np.arange(100, 700, 2)  # a view's rows in the file
    data = CellData(backed.X, codes[row_map], row_map=row_map, block_size=8, buffer_blocks=2)
    rows, conds, _ = _served(data, np.arange(len(row_map)), seed=0)
    np.testing.assert_array_equal(np.sort(rows), row_map)
    np.testing.assert_array_equal(conds, codes[rows])


def test_small_backed_data_is_shuffled_exactly_like_memory(numbered):
    backed, codes = numbered
    indices = np.arange(0, 700, 3)
    on_disk = CellData(backed.X, codes)  # 234 cells fit in one buffer
    in_memory = CellData(backed.X.to_memory(), codes)
    for got, want in zip(
        on_disk.batches(indices, 32, shuffle=True, generator=np.random.default_rng(5)),
        in_memory.batches(indices, 32, shuffle=True, generator=np.random.default_rng(5)),
        strict=True,
    ):
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)


# ------------------------------------------------------------------ training and prediction
def test_backed_and_path_input_train_like_memory(counts_file, backed):
    """600 cells fit in one sampler buffer: backed training is the in-memory one, bit for bit."""
    in_memory = ad.read_h5ad(counts_file)
    from_path = TRVAE(str(counts_file), condition_key="condition", **SMALL)
    assert from_path.adata.isbacked
    from_path.train(max_epochs=2, **QUIET)
    reference = TRVAE(in_memory, condition_key="condition", **SMALL).train(max_epochs=2, **QUIET)
    np.testing.assert_array_equal(
        from_path.predict(backed, "stimulated").X, reference.predict(in_memory, "stimulated").X
    )
    np.testing.assert_array_equal(
        from_path.get_latent(counts_file), reference.get_latent(in_memory)
    )


def test_block_shuffled_training_is_close_to_memory(counts_file, backed, monkeypatch):
    """With blocks of 32 cells the batches differ from in-memory training, the fit hardly."""
    _small_blocks(monkeypatch)
    in_memory = ad.read_h5ad(counts_file)
    kwargs = {**QUIET, "max_epochs": 8, "early_stopping": False}
    on_disk = TRVAE(backed, condition_key="condition", **SMALL).train(**kwargs)
    reference = TRVAE(in_memory, condition_key="condition", **SMALL).train(**kwargs)
    assert not np.array_equal(on_disk.get_latent(backed), reference.get_latent(in_memory))
    a = np.log1p(on_disk.predict(backed, "stimulated").X.mean(0))
    b = np.log1p(reference.predict(in_memory, "stimulated").X.mean(0))
    assert np.corrcoef(a, b)[0, 1] ** 2 > 0.97  # measured 0.996
    final = on_disk.history["train_loss"].iloc[-1], reference.history["train_loss"].iloc[-1]
    assert abs(final[0] - final[1]) < 0.03 * final[1]  # measured 0.3 %


def test_backed_view_streams_its_rows(counts_file, backed):
    """A view of a backed AnnData trains on its rows only, read from the file (no copy)."""
    keep = ~((backed.obs["cell_type"] == "type0") & (backed.obs["condition"] == "stimulated"))
    view = backed[keep.to_numpy()]
    model = TRVAE(view, condition_key="condition", **SMALL)
    data = model._cell_data(view)
    assert data.on_disk and data.x.shape == (600, 40)
    np.testing.assert_array_equal(data.row_map, np.flatnonzero(keep))
    model.train(max_epochs=1, **QUIET)
    in_memory = ad.read_h5ad(counts_file)[keep.to_numpy()].copy()
    np.testing.assert_array_equal(model.get_latent(view), model.get_latent(in_memory))


@pytest.mark.parametrize(
    "mode, return_mean", [("decode", True), ("decode", False), ("auto", True)],
    ids=["mean", "sample", "quantile"],
)  # fmt: skip
def test_prediction_to_disk_equals_in_memory(counts_file, backed, tmp_path, mode, return_mean):
    model = TRVAE(backed, condition_key="condition", **SMALL).train(max_epochs=1, **QUIET)
    control = backed[(backed.obs["condition"] == "control").to_numpy()]
    kwargs = {"mode": mode, "return_mean": return_mean, "seed": 4, "batch_size": 64}
    want = model.predict(control, "stimulated", **kwargs)
    got = model.predict(control, "stimulated", out=tmp_path / "pred.h5ad", **kwargs)
    try:
        assert got.isbacked and got.shape == want.shape
        x = got.X[:]
        counts = want.uns["trvae_prediction"]["values"] != "mean"
        assert sparse.issparse(x) == counts  # count samples and quantiles are stored sparse
        np.testing.assert_array_equal(x.toarray() if sparse.issparse(x) else x, want.X)
        pd.testing.assert_frame_equal(got.obs, want.obs)
        pd.testing.assert_frame_equal(got.var, want.var)
        assert got.uns["trvae_prediction"]["values"] == want.uns["trvae_prediction"]["values"]
    finally:
        got.file.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.h5ad"]


# ------------------------------------------------------------------ validation
def _write_counts(path, x, fmt: str = "csr"):
    x = sparse.csr_matrix(x) if fmt == "csr" else sparse.csc_matrix(x)
    obs = pd.DataFrame({"condition": np.where(np.arange(x.shape[0]) % 2, "a", "b")})
    obs.index = obs.index.astype(str)
    ad.AnnData(x, obs=obs).write_h5ad(path)
    return path


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.nan, r"contains 1 NaN and 0 infinite values"),
        (-1.0, r"has negative values \(min -1\)"),
        (0.5, r"has non-integer values"),
    ],
)
def test_backed_validation_raises(tmp_path, monkeypatch, value, message):
    monkeypatch.setattr(V, "CHECK_CHUNK", 7)  # many chunks
    x = np.random.default_rng(0).poisson(2.0, (40, 5)).astype(np.float32) + 1
    x[33, 2] = value
    backed = ad.read_h5ad(_write_counts(tmp_path / "bad.h5ad", x), backed="r")
    try:
        with pytest.raises(TRVAEError, match=message):
            TRVAE(backed, condition_key="condition", **SMALL)
        # a view without the bad cell is checked on its own rows only
        TRVAE(backed[np.arange(40) != 33], condition_key="condition", **SMALL)
        with pytest.raises(TRVAEError, match=message):
            TRVAE(backed[np.arange(20, 40)], condition_key="condition", **SMALL)
    finally:
        backed.file.close()


def test_backed_csc_and_missing_path_are_refused(tmp_path):
    x = np.ones((10, 3), dtype=np.float32)
    backed = ad.read_h5ad(_write_counts(tmp_path / "csc.h5ad", x, "csc"), backed="r")
    try:
        with pytest.raises(TRVAEError, match="stores X as CSC"):
            TRVAE(backed, condition_key="condition", **SMALL)
    finally:
        backed.file.close()
    with pytest.raises(TRVAEError, match="no such file"):
        TRVAE(tmp_path / "missing.h5ad", condition_key="condition")


# ------------------------------------------------------------------ trvae bench scale
def test_bench_scale_end_to_end(tmp_path, capsys):
    path = tmp_path / "scale.h5ad"
    argv = ["bench", "scale", "--n-cells", "3000", "--n-genes", "50", "--path", str(path)]
    argv += ["--threads", "1", "--batch-size", "128", "--n-hidden", "32", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3,000 cells x 50 genes" in out and "peak RSS" in out and "trVAE (residual)" in out
    assert "trVAE (quantile)" in out
    for phase in ("write", "setup", "train", "predict", "residual", "quantile", "score"):
        assert f"\n{phase} " in out
    pred = ad.read_h5ad(tmp_path / "scale.pred.h5ad", backed="r")
    try:
        assert pred.n_vars == 50 and set(pred.obs["cell_type"]) == {"type0"}
        assert set(pred.obs["condition"]) == {"stimulated"}
    finally:
        pred.file.close()
    for mode in ("residual", "quantile"):
        other = ad.read_h5ad(tmp_path / f"scale.{mode}.h5ad", backed="r")
        try:
            assert other.n_obs == pred.n_obs
            assert other.uns["trvae_prediction"]["values"] == mode
        finally:
            other.file.close()
    assert main(argv) == 0  # the file is reused
    assert "\nreuse " in capsys.readouterr().out
    assert main([*argv[:3], "4000", *argv[4:]]) == 2  # a file of another size is not replaced
    assert "is not the synthetic 4000 x 50 file" in capsys.readouterr().err
