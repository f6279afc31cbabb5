"""Cell-type-specific responses: which genes respond only in the held-out type, and scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from trvae._errors import TRVAEError
from trvae._threads import torch_threads_kept
from trvae.metrics._helpers import _pair

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
    with torch_threads_kept():
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
