"""Shared helpers, R² of means and variances, the response correlation, DEGs, PCA and the
benchmark bundle :func:`evaluate_prediction`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from trvae._errors import TRVAEError
from trvae._threads import torch_threads_kept
from trvae.metrics._distribution import energy_distance, mmd_rbf, r2_nonzero, wasserstein_genes
from trvae.metrics._helpers import _dense, _pair, _r2, _stat


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
    with torch_threads_kept():
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
