"""Metrics comparing predicted cells with real held-out cells.

All functions take cells x genes matrices, dense (``numpy``) or ``scipy.sparse``; sparse input is
densified (the evaluation sets are small), so dense and sparse inputs give identical values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial.distance import cdist
from scipy.stats import linregress

from trvae._errors import TRVAEError

__all__ = [
    "bootstrap_r2",
    "delta_pearson",
    "energy_distance",
    "evaluate_prediction",
    "knn_label_accuracy",
    "mixing_score",
    "mmd_rbf",
    "nonzero_fraction",
    "pca_embed",
    "r2_mean",
    "r2_nonzero",
    "r2_var",
    "response_gene_scores",
    "response_genes",
    "top_degs",
    "wasserstein_genes",
]

MMD_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def _dense(x: Any) -> np.ndarray:
    """Return ``x`` as a 2-D float64 array (cells x genes); 1-D input becomes one column."""
    arr = x.toarray() if sparse.issparse(x) else np.asarray(x)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise TRVAEError(f"expected a cells x genes matrix, got an array of shape {arr.shape}")
    return arr


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _dense(a), _dense(b)
    if a.shape[1] != b.shape[1]:
        raise TRVAEError(f"gene dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise TRVAEError("both matrices need at least one cell")
    return a, b


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    """Squared Pearson r of ``linregress(x, y)``; NaN when either vector is constant."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(linregress(x, y).rvalue ** 2)


def _stat(x: np.ndarray, stat: str) -> np.ndarray:
    if stat == "mean":
        return x.mean(axis=0)
    if stat == "var":
        return x.var(axis=0)
    raise TRVAEError(f"stat must be 'mean' or 'var', got {stat!r}")


def r2_mean(pred: Any, real: Any) -> float:
    """R² between per-gene means of predicted and real cells.

    Parameters
    ----------
    pred, real
        Cells x genes matrices (dense or sparse) over the same genes.

    Returns
    -------
    float
        ``linregress(mean(pred), mean(real)).rvalue ** 2`` (predicted means on x, real on y);
        NaN when either mean vector is constant.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import r2_mean
    >>> real = np.array([[0.0, 1.0, 4.0], [0.0, 3.0, 4.0]])
    >>> r2_mean(real + 0.5, real)  # every gene shifted alike: still 1
    1.0
    """
    pred, real = _pair(pred, real)
    return _r2(pred.mean(axis=0), real.mean(axis=0))


def r2_var(pred: Any, real: Any) -> float:
    """R² between per-gene variances (``ddof=0``) of predicted and real cells.

    As :func:`r2_mean`, on variances: ``linregress(var(pred), var(real)).rvalue ** 2``, NaN
    when either vector is constant.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import r2_var
    >>> real = np.array([[0.0, 1.0, 4.0], [0.0, 3.0, 8.0]])
    >>> r2_var(2 * real, real)
    1.0
    """
    pred, real = _pair(pred, real)
    return _r2(pred.var(axis=0), real.var(axis=0))


def bootstrap_r2(
    pred: Any,
    real: Any,
    stat: Literal["mean", "var"] = "mean",
    n_boot: int = 100,
    frac: float = 0.8,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap mean and standard deviation of :func:`r2_mean` / :func:`r2_var`.

    As in the trVAE paper, each replicate draws ``round(frac * n)`` cells *with replacement*
    independently from ``pred`` and from ``real`` and recomputes the R².

    Parameters
    ----------
    pred, real
        Cells x genes matrices (dense or sparse) over the same genes.
    stat
        ``"mean"`` or ``"var"`` (per-gene statistic, variance with ``ddof=0``).
    n_boot
        Number of bootstrap replicates (at least 2).
    frac
        Fraction of each matrix's cells drawn per replicate, in ``(0, 1]``.
    seed
        Seed of the ``numpy`` random generator.

    Returns
    -------
    tuple of float
        ``(mean, sd)`` of the replicate R² values; the SD uses ``ddof=1``. Replicates with an
        undefined R² (constant statistic) are ignored.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import bootstrap_r2
    >>> real = np.random.default_rng(0).normal(size=(50, 20)) + np.arange(20)
    >>> mean, sd = bootstrap_r2(real, real, n_boot=10)
    >>> bool(mean > 0.9 and sd < 0.1)
    True
    """
    pred, real = _pair(pred, real)
    _stat(pred[:1], stat)  # validate ``stat`` early
    if n_boot < 2:
        raise TRVAEError(f"n_boot must be at least 2, got {n_boot}")
    if not 0 < frac <= 1:
        raise TRVAEError(f"frac must lie in (0, 1], got {frac}")
    rng = np.random.default_rng(seed)
    n_p, n_r = max(1, round(frac * pred.shape[0])), max(1, round(frac * real.shape[0]))
    scores = np.array(
        [
            _r2(
                _stat(pred[rng.integers(0, pred.shape[0], n_p)], stat),
                _stat(real[rng.integers(0, real.shape[0], n_r)], stat),
            )
            for _ in range(n_boot)
        ]
    )
    scores = scores[np.isfinite(scores)]
    if scores.size < 2:
        return float("nan"), float("nan")
    return float(scores.mean()), float(scores.std(ddof=1))


def delta_pearson(pred: Any, real: Any, control: Any) -> float:
    """Pearson r between predicted and real per-gene mean shifts from control.

    Parameters
    ----------
    pred, real, control
        Cells x genes matrices (dense or sparse) over the same genes.

    Returns
    -------
    float
        ``corr(mean(pred) - mean(control), mean(real) - mean(control))`` over genes; NaN when
        either shift vector is constant.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import delta_pearson
    >>> control = np.zeros((4, 3))
    >>> real = control + [1.0, -1.0, 0.5]
    >>> round(delta_pearson(0.5 * real, real, control), 6)  # the right direction, half the size
    1.0
    """
    pred, real = _pair(pred, real)
    _, control = _pair(pred, control)
    ctrl = control.mean(axis=0)
    x, y = pred.mean(axis=0) - ctrl, real.mean(axis=0) - ctrl
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def energy_distance(a: Any, b: Any) -> float:
    """Energy distance (E-distance) between two samples, as in scPerturBench / pertpy.

    ``2 * mean ||a_i - b_j|| - mean ||a_i - a_j|| - mean ||b_i - b_j||`` with Euclidean
    distances. The within-sample means run over *all* ordered pairs, including ``i == j``
    (V-statistic, as pertpy's ``Edistance``), so identical samples give exactly 0 and the value
    is never negative. Memory is O(n_a * n_b + n_a² + n_b²).

    Parameters
    ----------
    a, b
        Samples x features matrices (dense or sparse); a 1-D array is a set of 1-D points.

    Returns
    -------
    float
        The E-distance (symmetric in ``a`` and ``b``).

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import energy_distance
    >>> a = np.random.default_rng(0).normal(size=(100, 2))
    >>> round(energy_distance(a, a), 6), bool(energy_distance(a, a + 3) > 1)
    (0.0, True)
    """
    a, b = _pair(a, b)
    return float(2 * cdist(a, b).mean() - cdist(a, a).mean() - cdist(b, b).mean())


def wasserstein_genes(pred: Any, real: Any) -> float:
    """Mean over genes of the 1-D Wasserstein (earth mover's) distance between the predicted
    and real values of each gene.

    A distribution metric per gene: it sees spread, zeros and bimodality, not only the mean
    (a prediction shifted by a constant ``d`` from the real cells scores ``|d|``).

    Parameters
    ----------
    pred, real
        Cells x genes matrices (dense or sparse) over the same genes; the cell counts may differ.

    Returns
    -------
    float
        ``mean_g W1(pred[:, g], real[:, g])`` (:func:`scipy.stats.wasserstein_distance`).

    Examples
    --------
    >>> import numpy as np
    >>> wasserstein_genes(np.array([[0.0], [1.0]]), np.array([[2.0], [3.0]]))
    2.0
    """
    from scipy.stats import wasserstein_distance

    pred, real = _pair(pred, real)
    return float(
        np.mean([wasserstein_distance(pred[:, g], real[:, g]) for g in range(pred.shape[1])])
    )


def nonzero_fraction(x: Any, threshold: float = 0.0) -> np.ndarray:
    """Per gene, the fraction of cells whose value exceeds ``threshold`` (0: non-zero cells).

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import nonzero_fraction
    >>> nonzero_fraction(np.array([[0, 1], [2, 3]]))
    array([0.5, 1. ])
    """
    return (_dense(x) > threshold).mean(axis=0)


def r2_nonzero(pred: Any, real: Any, threshold: float = 0.0) -> float:
    """R² between the per-gene fractions of expressing cells (values above ``threshold``) of
    predicted and real cells.

    Returns
    -------
    float
        ``linregress(frac(pred), frac(real)).rvalue ** 2``; NaN when either is constant.

    Examples
    --------
    >>> import numpy as np
    >>> real = np.array([[0, 1, 1], [0, 0, 1]])
    >>> round(r2_nonzero(real, real), 6)
    1.0
    """
    pred, real = _pair(pred, real)
    return _r2(nonzero_fraction(pred, threshold), nonzero_fraction(real, threshold))


def mmd_rbf(a: Any, b: Any, gammas: Sequence[float] | None = None) -> float:
    """Squared maximum mean discrepancy with a multi-scale RBF kernel (biased V-statistic).

    ``MMD² = mean K(a, a) + mean K(b, b) - 2 mean K(a, b)`` with all pairs including
    ``i == j``, averaged over kernels ``K(x, y) = exp(-gamma * ||x - y||²)``. By default the
    bandwidths are ``h = s * median`` for ``s`` in ``(0.25, 0.5, 1, 2, 4)``, where ``median`` is
    the median squared Euclidean distance over distinct pairs of the pooled sample (median
    heuristic), and ``gamma = 1 / h`` (``median`` falls back to 1 when it is 0).

    Parameters
    ----------
    a, b
        Samples x features matrices (dense or sparse); a 1-D array is a set of 1-D points.
    gammas
        Explicit kernel parameters ``gamma``, overriding the median heuristic.

    Returns
    -------
    float
        The squared MMD, clipped at 0 against round-off.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import mmd_rbf
    >>> a = np.random.default_rng(0).normal(size=(100, 2))
    >>> round(mmd_rbf(a, a), 6), bool(mmd_rbf(a, a + 3) > mmd_rbf(a, a + 0.1))
    (0.0, True)
    """
    a, b = _pair(a, b)
    n = a.shape[0]
    d2 = cdist(np.vstack([a, b]), np.vstack([a, b]), "sqeuclidean")
    if gammas is None:
        iu = np.triu_indices(d2.shape[0], k=1)
        med = float(np.median(d2[iu])) if iu[0].size else 0.0
        gammas = [1.0 / (s * (med if med > 0 else 1.0)) for s in MMD_SCALES]
    daa, dbb, dab = d2[:n, :n], d2[n:, n:], d2[:n, n:]
    vals = [
        np.exp(-g * daa).mean() + np.exp(-g * dbb).mean() - 2 * np.exp(-g * dab).mean()
        for g in gammas
    ]
    return max(0.0, float(np.mean(vals)))


def top_degs(
    adata: Any, group_key: str, group: str, reference: str, n_genes: int = 100
) -> list[str]:
    """Top differentially expressed genes of ``group`` versus ``reference`` (Wilcoxon).

    Runs ``scanpy.tl.rank_genes_groups(method="wilcoxon", use_raw=False)`` on ``adata.X`` of a
    copy restricted to the two groups, so the caller's AnnData is never modified. Genes are
    ranked by the *absolute* Wilcoxon score, so both up- and down-regulated genes are included.

    Parameters
    ----------
    adata
        AnnData with log-normalised expression in ``X``.
    group_key
        Column of ``adata.obs`` holding the groups (e.g. ``"condition"``).
    group, reference
        The tested group (e.g. ``"stimulated"``) and the reference group (e.g. ``"control"``).
    n_genes
        Number of genes returned (at most ``adata.n_vars``).

    Returns
    -------
    list of str
        Gene names, strongest absolute score first.

    Examples
    --------
    >>> import trvae
    >>> from trvae.metrics import top_degs
    >>> adata = trvae.datasets.simulate_perturbation("shared", n_genes=50, cells_per_group=20)
    >>> degs = top_degs(adata, "condition", "stimulated", "control", n_genes=5)
    >>> len(degs), degs[0] in adata.var_names
    (5, True)
    """
    import scanpy as sc

    if group_key not in adata.obs:
        raise TRVAEError(f"obs has no column {group_key!r}")
    labels = adata.obs[group_key].astype(str)
    for name in (group, reference):
        if not (labels == str(name)).any():
            raise TRVAEError(f"no cells with {group_key} == {name!r}")
    if n_genes < 1:
        raise TRVAEError(f"n_genes must be positive, got {n_genes}")
    sub = adata[labels.isin([str(group), str(reference)]).to_numpy()].copy()
    sub.obs[group_key] = sub.obs[group_key].astype(str).astype("category")
    sc.tl.rank_genes_groups(
        sub,
        group_key,
        groups=[str(group)],
        reference=str(reference),
        method="wilcoxon",
        use_raw=False,
        n_genes=min(n_genes, sub.n_vars),
        rankby_abs=True,
        key_added="_trvae_degs",
    )
    return [str(g) for g in sub.uns["_trvae_degs"]["names"][str(group)]]


def pca_embed(reference: Any, *others: Any, n_comps: int = 50, seed: int = 0) -> list[np.ndarray]:
    """Fit a PCA on ``reference`` and project ``reference`` and ``others`` onto it.

    Parameters
    ----------
    reference
        Cells x genes matrix (dense or sparse) the PCA is fitted on.
    *others
        Further matrices over the same genes to project.
    n_comps
        Number of components, capped at ``min(n_cells, n_genes)`` of ``reference``.
    seed
        ``random_state`` of :class:`sklearn.decomposition.PCA` (randomised solver).

    Returns
    -------
    list of numpy.ndarray
        ``[reference_embedding, *other_embeddings]``, each cells x components.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import pca_embed
    >>> reference = np.random.default_rng(0).normal(size=(30, 10))
    >>> ref, other = pca_embed(reference, reference[:5], n_comps=3)
    >>> ref.shape, other.shape
    ((30, 3), (5, 3))
    """
    from sklearn.decomposition import PCA

    ref = _dense(reference)
    mats = [_pair(ref, o)[1] for o in others]
    pca = PCA(n_components=max(1, min(n_comps, *ref.shape)), random_state=seed).fit(ref)
    return [pca.transform(m) for m in (ref, *mats)]


def evaluate_prediction(
    pred: Any,
    real: Any,
    control: Any,
    var_names: Sequence[str],
    degs: Sequence[str],
    n_boot: int = 100,
    n_comps: int = 50,
    seed: int = 0,
) -> dict[str, float]:
    """All benchmark metrics of one prediction as a flat ``{name: value}`` dict.

    ``*_top100`` metrics use the genes in ``degs`` (normally the top-100 DEGs from
    :func:`top_degs`; the names stay the same for another length). ``*_pca`` metrics use a PCA
    with ``n_comps`` components fitted on ``real`` and ``control`` pooled, into which ``pred``
    and ``real`` are projected. Keys: ``r2_mean_all``, ``r2_mean_top100``, ``r2_mean_top100_sd``,
    ``r2_var_all``, ``r2_var_top100``, ``r2_var_top100_sd`` (bootstrap SDs, see
    :func:`bootstrap_r2`), ``delta_pearson_all``, ``delta_pearson_top100``, ``edist_top100``,
    ``mmd_top100``, ``edist_pca``, ``mmd_pca``, ``wasserstein_top100`` (per-gene 1-D
    Wasserstein, :func:`wasserstein_genes`) and ``r2_nonzero_top100`` (:func:`r2_nonzero`).

    Parameters
    ----------
    pred, real, control
        Cells x genes matrices (dense or sparse): predicted, real perturbed and control cells.
    var_names
        Gene names of the columns.
    degs
        Gene names of the DEG subset; all must be in ``var_names``.
    n_boot
        Bootstrap replicates for the ``*_sd`` entries.
    n_comps
        PCA components for ``edist_pca`` / ``mmd_pca``.
    seed
        Seed of the bootstrap and the PCA.

    Returns
    -------
    dict of str to float

    Examples
    --------
    >>> import trvae
    >>> from trvae.metrics import evaluate_prediction
    >>> adata = trvae.datasets.simulate_perturbation("shared", n_genes=50, cells_per_group=20)
    >>> stimulated = adata[adata.obs["condition"] == "stimulated"].X
    >>> control = adata[adata.obs["condition"] == "control"].X
    >>> degs = list(adata.var_names[:10])
    >>> names = adata.var_names
    >>> scores = evaluate_prediction(stimulated, stimulated, control, names, degs, n_boot=5)
    >>> round(scores["r2_mean_top100"], 6), round(scores["edist_top100"], 6)  # a perfect prediction
    (1.0, 0.0)
    """
    pred, real = _pair(pred, real)
    _, control = _pair(pred, control)
    names = [str(g) for g in var_names]
    if len(names) != pred.shape[1]:
        raise TRVAEError(f"{len(names)} var_names for {pred.shape[1]} genes")
    pos = {g: i for i, g in enumerate(names)}
    missing = [g for g in degs if str(g) not in pos]
    if missing or len(degs) == 0:
        raise TRVAEError(f"DEGs missing from var_names: {missing[:10]}" if missing else "no DEGs")
    idx = np.array([pos[str(g)] for g in degs])
    p_d, r_d, c_d = pred[:, idx], real[:, idx], control[:, idx]
    _, p_pca, r_pca = pca_embed(np.vstack([real, control]), pred, real, n_comps=n_comps, seed=seed)
    return {
        "r2_mean_all": r2_mean(pred, real),
        "r2_mean_top100": r2_mean(p_d, r_d),
        "r2_mean_top100_sd": bootstrap_r2(p_d, r_d, "mean", n_boot=n_boot, seed=seed)[1],
        "r2_var_all": r2_var(pred, real),
        "r2_var_top100": r2_var(p_d, r_d),
        "r2_var_top100_sd": bootstrap_r2(p_d, r_d, "var", n_boot=n_boot, seed=seed)[1],
        "delta_pearson_all": delta_pearson(pred, real, control),
        "delta_pearson_top100": delta_pearson(p_d, r_d, c_d),
        "edist_top100": energy_distance(p_d, r_d),
        "mmd_top100": mmd_rbf(p_d, r_d),
        "edist_pca": energy_distance(p_pca, r_pca),
        "mmd_pca": mmd_rbf(p_pca, r_pca),
        "wasserstein_top100": wasserstein_genes(p_d, r_d),
        "r2_nonzero_top100": r2_nonzero(p_d, r_d),
    }


# ----------------------------------------------------------------- cell-type-specific responses

#: Significance and effect-size thresholds of :func:`response_genes`.
DE_PVAL, DE_MIN_LFC = 0.05, 0.25
#: The classes of :func:`response_genes` that :func:`response_gene_scores` reports.
RESPONSE_CLASSES = ("specific", "shared")


def _wilcoxon_pvals_adj(group: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted Wilcoxon rank-sum p-values per gene (scanpy's test)."""
    import scanpy as sc
    from anndata import AnnData

    x = np.vstack([group, reference]).astype(np.float32)
    labels = ["g"] * len(group) + ["r"] * len(reference)
    sub = AnnData(x, obs={"grp": pd.Categorical(labels)})
    sub.var_names = [str(i) for i in range(x.shape[1])]
    sc.tl.rank_genes_groups(
        sub, "grp", groups=["g"], reference="r", method="wilcoxon", use_raw=False,
        n_genes=x.shape[1], key_added="_test",
    )  # fmt: skip
    res = sub.uns["_test"]
    out = np.ones(x.shape[1])
    out[np.asarray(res["names"]["g"], dtype=int)] = np.asarray(res["pvals_adj"]["g"], float)
    return out


def response_genes(
    stimulated: Any,
    control: Any,
    other_stimulated: Any,
    other_control: Any,
    var_names: Sequence[str],
    pval_cutoff: float = DE_PVAL,
    min_lfc: float = DE_MIN_LFC,
) -> pd.DataFrame:
    """Classify a cell type's response genes as *specific* to it or *shared* with the others.

    All four matrices are real, log-normalised cells (log1p scale) over the same genes: the
    cell type's stimulated and control cells, and the stimulated and control cells of the other
    cell types pooled. The log fold change (``lfc``) of a gene is the difference of its mean
    log1p expression, stimulated minus control (natural-log scale). A gene is differentially
    expressed (DE) in a group when its Wilcoxon rank-sum test (scanpy, Benjamini-Hochberg) gives
    ``pvals_adj < pval_cutoff`` and ``|lfc| >= min_lfc``.

    Rule: a gene DE in the cell type is **specific** when its response differs from the pooled
    response of the other cell types in one of three ways, recorded in ``reason``:

    - ``"only_here"``: not DE in the other cell types;
    - ``"opposite"``: DE in both, with opposite signs;
    - ``"weaker_elsewhere"``: DE in both, same sign, but ``|lfc_others| < |lfc| / 2``.

    Every other gene DE in the cell type is **shared**; genes not DE in the cell type are ``""``.
    A baseline that adds the other types' mean response (mean shift) cannot get the
    ``"opposite"`` genes right by construction.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene: ``lfc``, ``pvals_adj``, ``lfc_others``, ``pvals_adj_others``, ``de``,
        ``de_others``, ``response`` (``"specific"``, ``"shared"`` or ``""``) and ``reason``.

    Examples
    --------
    >>> import trvae
    >>> from trvae.metrics import response_genes
    >>> adata = trvae.datasets.simulate_perturbation("specific", n_genes=60, cells_per_group=40)
    >>> x, t = adata.X, (adata.obs["cell_type"] == "type0").to_numpy()  # one cell type
    >>> s = (adata.obs["condition"] == "stimulated").to_numpy()
    >>> genes = response_genes(x[t & s], x[t & ~s], x[~t & s], x[~t & ~s], adata.var_names)
    >>> bool((genes["response"] == "specific").any())
    True
    """
    stim, ctrl = _pair(stimulated, control)
    o_stim, o_ctrl = _pair(other_stimulated, other_control)
    _pair(stim, o_stim)
    names = [str(g) for g in var_names]
    if len(names) != stim.shape[1]:
        raise TRVAEError(f"{len(names)} var_names for {stim.shape[1]} genes")
    for label, mat in (("stimulated", stim), ("control", ctrl)):
        if len(mat) < 2:
            raise TRVAEError(f"response_genes needs at least 2 {label} cells, got {len(mat)}")
    lfc = stim.mean(0) - ctrl.mean(0)
    lfc_o = o_stim.mean(0) - o_ctrl.mean(0)
    p, p_o = _wilcoxon_pvals_adj(stim, ctrl), _wilcoxon_pvals_adj(o_stim, o_ctrl)
    de = (p < pval_cutoff) & (np.abs(lfc) >= min_lfc)
    de_o = (p_o < pval_cutoff) & (np.abs(lfc_o) >= min_lfc)
    opposite = de_o & (np.sign(lfc) != np.sign(lfc_o))
    weaker = de_o & ~opposite & (np.abs(lfc_o) < np.abs(lfc) / 2)
    reason = np.select([~de_o, opposite, weaker], ["only_here", "opposite", "weaker_elsewhere"], "")
    reason = np.where(de, reason, "")
    response = np.where(de, np.where(reason != "", "specific", "shared"), "")
    return pd.DataFrame(
        {
            "lfc": lfc,
            "pvals_adj": p,
            "lfc_others": lfc_o,
            "pvals_adj_others": p_o,
            "de": de,
            "de_others": de_o,
            "response": response,
            "reason": reason,
        },
        index=pd.Index(names, name="gene"),
    )


def response_gene_scores(
    pred: Any, real: Any, control: Any, genes: pd.DataFrame
) -> dict[str, float]:
    """How well a prediction gets the specific and the shared response genes right.

    For each class of :func:`response_genes` (``genes``, rows in the column order of the
    matrices), the predicted log fold change ``mean(pred) - mean(control)`` is compared with the
    real one ``mean(real) - mean(control)``. Keys, for ``cls`` in ``specific`` and ``shared``:
    ``{cls}_n`` (number of genes), ``{cls}_direction`` (fraction predicted with the right sign;
    a predicted change of exactly 0 counts as wrong), ``{cls}_lfc_pearson`` and ``{cls}_lfc_r2``
    (Pearson r and its square, predicted vs real logFC; NaN with fewer than 3 genes).

    Examples
    --------
    >>> import trvae
    >>> from trvae.metrics import response_gene_scores, response_genes
    >>> adata = trvae.datasets.simulate_perturbation("specific", n_genes=60, cells_per_group=40)
    >>> x, t = adata.X, (adata.obs["cell_type"] == "type0").to_numpy()  # one cell type
    >>> s = (adata.obs["condition"] == "stimulated").to_numpy()
    >>> genes = response_genes(x[t & s], x[t & ~s], x[~t & s], x[~t & ~s], adata.var_names)
    >>> scores = response_gene_scores(x[t & s], x[t & s], x[t & ~s], genes)  # a perfect prediction
    >>> scores["specific_direction"]
    1.0
    """
    pred, real = _pair(pred, real)
    _, control = _pair(pred, control)
    if len(genes) != pred.shape[1]:
        raise TRVAEError(f"{len(genes)} classified genes for {pred.shape[1]} genes")
    ctrl = control.mean(0)
    lfc_pred, lfc_real = pred.mean(0) - ctrl, real.mean(0) - ctrl
    out: dict[str, float] = {}
    for cls in RESPONSE_CLASSES:
        mask = (genes["response"] == cls).to_numpy()
        x, y = lfc_pred[mask], lfc_real[mask]
        r = (
            float(np.corrcoef(x, y)[0, 1])
            if mask.sum() >= 3 and np.ptp(x) and np.ptp(y)
            else np.nan
        )
        out[f"{cls}_n"] = float(mask.sum())
        out[f"{cls}_direction"] = float((np.sign(x) == np.sign(y)).mean()) if mask.any() else np.nan
        out[f"{cls}_lfc_pearson"] = r
        out[f"{cls}_lfc_r2"] = r * r
    return out


# ---------------------------------------------------------------------- latent diagnostics


def _neighbour_counts(embedding: Any, labels: Any, n_neighbors: int) -> tuple[np.ndarray, ...]:
    """Integer labels, and per cell the label counts among its nearest other cells."""
    from sklearn.neighbors import NearestNeighbors

    emb = _dense(embedding)
    codes, uniques = pd.factorize(pd.Series(np.asarray(labels)).astype(str))
    if len(codes) != len(emb):
        raise TRVAEError(f"{len(codes)} labels for {len(emb)} cells")
    if len(emb) < 3:
        raise TRVAEError(f"need at least 3 cells, got {len(emb)}")
    k = min(n_neighbors, len(emb) - 1)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(emb).kneighbors(emb)
    neigh = codes[idx[:, 1:]]
    counts = np.zeros((len(codes), len(uniques)))
    np.add.at(counts, (np.repeat(np.arange(len(codes)), k), neigh.ravel()), 1.0)
    return codes, counts


def mixing_score(embedding: Any, labels: Any, n_neighbors: int = 30) -> float:
    """How well the groups in ``labels`` (e.g. conditions) mix in ``embedding``.

    The entropy of the label distribution among each cell's ``n_neighbors`` nearest neighbours
    (Euclidean, the cell itself excluded), averaged over cells and divided by the entropy of the
    overall label distribution: about 1 when every neighbourhood holds the labels in their overall
    proportions (slightly below, from the finite neighbourhoods), 0 when every neighbourhood is
    pure. Dividing by the overall entropy rather than ``log(n_labels)`` makes unbalanced groups
    score 1 when mixed. NaN with a single label.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import mixing_score
    >>> labels = np.repeat(["control", "stimulated"], 100)
    >>> embedding = np.random.default_rng(0).normal(size=(200, 2))
    >>> bool(mixing_score(embedding, labels) > 0.9)  # labels unrelated to the embedding: mixed
    True
    >>> mixing_score(embedding + 100 * (labels == "stimulated")[:, None], labels)  # apart
    0.0
    """
    codes, counts = _neighbour_counts(embedding, labels, n_neighbors)
    if counts.shape[1] < 2:
        return float("nan")

    def entropy(p: np.ndarray) -> np.ndarray:
        p = p / p.sum(-1, keepdims=True)
        return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)

    return float(entropy(counts).mean() / entropy(np.bincount(codes).astype(float)))


def knn_label_accuracy(embedding: Any, labels: Any, n_neighbors: int = 15) -> float:
    """Fraction of cells whose label (e.g. cell type) is the majority among their neighbours.

    A leave-one-out k-nearest-neighbour classifier in ``embedding`` (ties go to the smaller
    label code): 1 when labels form pure neighbourhoods, about the largest label's share when
    the embedding ignores them.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import knn_label_accuracy
    >>> labels = np.repeat(["B", "NK"], 50)
    >>> embedding = np.random.default_rng(0).normal(size=(100, 2)) + 10 * (labels == "NK")[:, None]
    >>> knn_label_accuracy(embedding, labels)
    1.0
    """
    codes, counts = _neighbour_counts(embedding, labels, n_neighbors)
    return float((counts.argmax(1) == codes).mean())
