"""Tests for trvae.datasets: local search order, errors, and the (offline) download path."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import threading
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from trvae import datasets
from trvae._errors import TRVAEError

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared data not present")


def _small_adata(n: int = 12, obs: dict | None = None) -> ad.AnnData:
    rng = np.random.default_rng(0)
    obs = obs or {
        "condition": ["control", "stimulated"] * (n // 2),
        "cell_type": ["B", "NK", "CD4T"] * (n // 3),
    }
    return ad.AnnData(
        X=rng.poisson(2.0, size=(n, 5)).astype(np.float32),
        obs=pd.DataFrame(obs, index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(5)]),
    )


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No shared data, no TRVAE_DATA_DIR, an empty cache; returns the cache dir."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(datasets, "_REPO_SHARED_DATA", tmp_path / "no_shared")
    monkeypatch.delenv("TRVAE_DATA_DIR", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("TRVAE_CACHE_DIR", str(cache))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return cache


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/'www' on 127.0.0.1; yields (directory, base_url)."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(www))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# -- the real shared files, found by the default search -------------------------------------


@needs_shared
def test_kang_pbmc_shared(monkeypatch):
    monkeypatch.delenv("TRVAE_DATA_DIR", raising=False)
    adata = datasets.kang_pbmc(download=False)
    assert adata.shape == (1975, 6998)
    assert isinstance(adata.obs["condition"].dtype, pd.CategoricalDtype)
    assert set(adata.obs["condition"].cat.categories) == {"control", "stimulated"}
    assert "cell_type" in adata.obs


@needs_shared
def test_kang_counts_shared(monkeypatch):
    monkeypatch.delenv("TRVAE_DATA_DIR", raising=False)
    adata = datasets.kang_counts(download=False)
    assert adata.shape == (4482, 9015)
    assert {"condition", "cell_type"} <= set(adata.obs)
    assert adata.obs["condition"].value_counts().to_dict() == {"stimulated": 2260, "control": 2222}


@needs_shared
def test_mnist_shared(monkeypatch):
    monkeypatch.delenv("TRVAE_DATA_DIR", raising=False)
    adata = datasets.mnist(download=False)
    assert adata.shape == (5000, 784)
    assert adata.X.dtype == np.float32
    assert adata.X.min() >= 0.0 and adata.X.max() <= 1.0 and adata.X.max() > 0.5
    assert list(adata.obs["digit"].cat.categories) == [str(d) for d in range(10)]
    assert adata.var_names[0] == "px_0" and adata.var_names[-1] == "px_783"
    assert tuple(adata.uns["image_shape"]) == (28, 28)


# -- search order and errors ------------------------------------------------------------------


def test_explicit_path_wins(tmp_path, monkeypatch):
    f = tmp_path / "mine.h5ad"
    _small_adata().write_h5ad(f)
    monkeypatch.setenv("TRVAE_DATA_DIR", str(tmp_path))
    assert datasets.kang_pbmc(path=f).shape == (12, 5)
    assert datasets.kang_counts(path=str(f)).shape == (12, 5)


def test_data_dir_env_honoured(tmp_path, isolated, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    _small_adata(6).write_h5ad(data / "kang_pbmc_scgen_valid_1975x6998.h5ad")
    monkeypatch.setenv("TRVAE_DATA_DIR", str(data))
    adata = datasets.kang_pbmc(download=False)
    assert adata.shape == (6, 5)
    assert isinstance(adata.obs["cell_type"].dtype, pd.CategoricalDtype)


def test_missing_explicit_path(tmp_path):
    missing = tmp_path / "nope.h5ad"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        datasets.kang_pbmc(path=missing)


def test_nothing_found_lists_places(tmp_path, isolated):
    with pytest.raises(FileNotFoundError) as exc:
        datasets.kang_pbmc(download=False)
    msg = str(exc.value)
    assert "TRVAE_DATA_DIR" in msg and "download=False" in msg
    assert str(tmp_path / "no_shared" / "kang_pbmc_scgen_valid_1975x6998.h5ad") in msg
    assert str(isolated / "kang_pbmc_scgen_valid_1975x6998.h5ad") in msg
    assert "shared" in msg


def test_kang_counts_missing_points_to_kang_2018(isolated):
    with pytest.raises(FileNotFoundError, match=r"kang_2018\(\)"):
        datasets.kang_counts()


def test_failed_download_is_file_not_found(isolated, monkeypatch, server):
    _, base = server
    monkeypatch.setitem(datasets.REGISTRY, "kang_pbmc", ("k.h5ad", f"{base}/absent.h5ad", None))
    with pytest.raises(FileNotFoundError, match=r"absent\.h5ad"):
        datasets.kang_pbmc()


# -- offline download path --------------------------------------------------------------------


def test_download_records_and_checks_hash(isolated, monkeypatch, server):
    www, base = server
    _small_adata(12).write_h5ad(www / "valid_pbmc.h5ad")
    monkeypatch.setitem(
        datasets.REGISTRY, "kang_pbmc", ("kang_pbmc.h5ad", f"{base}/valid_pbmc.h5ad", None)
    )
    adata = datasets.kang_pbmc(download=True)
    assert adata.shape == (12, 5)
    cached = isolated / "kang_pbmc.h5ad"
    sidecar = isolated / "kang_pbmc.h5ad.sha256"
    assert cached.is_file() and sidecar.is_file()
    assert sidecar.read_text().strip() == hashlib.sha256(cached.read_bytes()).hexdigest()

    (www / "valid_pbmc.h5ad").unlink()  # a second load must come from the cache
    assert datasets.kang_pbmc(download=True).shape == (12, 5)

    with open(cached, "r+b") as fh:  # corrupt the cached copy
        fh.seek(100)
        fh.write(b"garbage")
    with pytest.raises(TRVAEError, match="Delete"):
        datasets.kang_pbmc()


def test_download_with_known_hash(isolated, monkeypatch, server):
    www, base = server
    _small_adata(6).write_h5ad(www / "k.h5ad")
    sha = hashlib.sha256((www / "k.h5ad").read_bytes()).hexdigest()
    monkeypatch.setitem(datasets.REGISTRY, "kang_pbmc", ("k.h5ad", f"{base}/k.h5ad", sha))
    assert datasets.kang_pbmc().shape == (6, 5)
    assert (isolated / "k.h5ad").is_file()
    assert not (isolated / "k.h5ad.sha256").exists()


def test_download_with_wrong_hash(isolated, monkeypatch, server):
    www, base = server
    _small_adata(6).write_h5ad(www / "k.h5ad")
    monkeypatch.setitem(datasets.REGISTRY, "kang_pbmc", ("k.h5ad", f"{base}/k.h5ad", "0" * 64))
    with pytest.raises(TRVAEError, match="checksum"):
        datasets.kang_pbmc()
    assert not (isolated / "k.h5ad").exists()


def test_mnist_keras_download(isolated, monkeypatch, server):
    www, base = server
    rng = np.random.default_rng(1)
    np.savez(
        www / "mnist.npz",
        x_train=rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        y_train=np.array([0, 1, 2, 3, 4, 5]),
        x_test=np.full((4, 28, 28), 255, dtype=np.uint8),
        y_test=np.array([6, 7, 8, 9]),
    )
    name, _, _, cache_name = datasets.REGISTRY["mnist"]
    monkeypatch.setitem(datasets.REGISTRY, "mnist", (name, f"{base}/mnist.npz", None, cache_name))
    adata = datasets.mnist()
    assert adata.shape == (10, 784)
    assert adata.X.dtype == np.float32 and adata.X.min() >= 0 and adata.X.max() == 1.0
    assert list(adata.obs["digit"]) == [str(d) for d in range(10)]
    assert isinstance(adata.obs["digit"].dtype, pd.CategoricalDtype)
    assert adata.uns["image_shape"] == (28, 28)
    assert (isolated / f"{cache_name}.sha256").is_file()


def test_kang_2018_label_mapping(isolated, monkeypatch, server):
    www, base = server
    obs = {"label": ["ctrl", "stim", "stim", "ctrl"], "cell_type": ["B", "B", "NK", "NK"]}
    _small_adata(4, obs).write_h5ad(www / "kang_2018.h5ad")
    monkeypatch.setitem(
        datasets.REGISTRY, "kang_2018", ("kang_2018.h5ad", f"{base}/kang_2018.h5ad", None)
    )
    adata = datasets.kang_2018()
    assert list(adata.obs["condition"]) == ["control", "stimulated", "stimulated", "control"]
    assert list(adata.obs["label"]) == ["ctrl", "stim", "stim", "ctrl"]
    assert isinstance(adata.obs["condition"].dtype, pd.CategoricalDtype)
    assert isinstance(adata.obs["cell_type"].dtype, pd.CategoricalDtype)
    # an explicit local file goes through the same normalisation
    assert datasets.kang_2018(path=isolated / "kang_2018.h5ad").obs["condition"].iloc[1] == (
        "stimulated"
    )
