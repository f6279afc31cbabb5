"""Plots of predicted versus real cells (scanpy-like naming).

Every function builds a :class:`matplotlib.figure.Figure` without pyplot (safe under any
backend, nothing is shown), returns it, and writes it to ``save`` when given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from trvae._errors import TRVAEError
from trvae.metrics._helpers import _pair, _r2
from trvae.pl._common import _finish, _gene_index
from trvae.pl._embedding import embedding_grid

__all__ = [
    "embedding_grid",
    "logfc_scatter",
    "mean_scatter",
    "r2_bars",
    "response_violin",
    "var_scatter",
]


def _stat_scatter(
    stat: str,
    pred: Any,
    real: Any,
    var_names: Sequence[str],
    degs: Sequence[str] | None,
    label_top: int,
    title: str | None,
    save: str | Path | None,
) -> Figure:
    pred, real = _pair(pred, real)
    fn = np.mean if stat == "mean" else np.var
    x, y = fn(pred, axis=0), fn(real, axis=0)
    idx = _gene_index(var_names, degs or [], pred.shape[1])
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.scatter(x, y, s=6, c="lightgrey", label=f"all genes: R²={_r2(x, y):.3f}", rasterized=True)
    if idx.size:
        ax.scatter(x[idx], y[idx], s=12, c="tab:red", label=f"DEGs: R²={_r2(x[idx], y[idx]):.3f}")
        for i in idx[: max(0, label_top)]:
            ax.annotate(
                str(var_names[i]),
                (x[i], y[i]),
                xytext=(3, 3),
                textcoords="offset points",
                fontsize=7,
            )
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], ls="--", c="black", lw=0.8)
    ax.set_xlabel(f"predicted {stat}")
    ax.set_ylabel(f"real {stat}")
    ax.set_title(title if title is not None else f"per-gene {stat}")
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    return _finish(fig, save)


def mean_scatter(
    pred: Any,
    real: Any,
    var_names: Sequence[str],
    degs: Sequence[str] | None = None,
    label_top: int = 10,
    title: str | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Scatter of per-gene means, predicted (x) against real (y), as in the trVAE paper.

    All genes are grey, ``degs`` red, the first ``label_top`` of ``degs`` labelled; the legend
    gives R² over all genes and over the DEGs; the dashed line is the diagonal.

    Parameters
    ----------
    pred, real
        Cells x genes matrices (dense or sparse) over the same genes.
    var_names
        Gene names of the columns.
    degs
        Highlighted genes, most important first (e.g. from :func:`trvae.metrics.top_degs`).
    label_top
        How many DEGs get a name label.
    title
        Axes title; defaults to ``"per-gene mean"``.
    save
        File to write the figure to (PNG at 150 dpi unless the suffix says otherwise).

    Returns
    -------
    Figure
        The scatter: predicted (x) against real (y) per-gene means.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.pl import mean_scatter
    >>> real = np.random.default_rng(0).poisson(2.0, size=(20, 5)).astype(float)
    >>> fig = mean_scatter(real + 0.1, real, ["g1", "g2", "g3", "g4", "g5"], degs=["g1", "g2"])
    >>> fig.axes[0].get_xlabel()
    'predicted mean'
    """
    return _stat_scatter("mean", pred, real, var_names, degs, label_top, title, save)


def var_scatter(
    pred: Any, real: Any, var_names: Sequence[str], degs: Sequence[str] | None = None, **kwargs
) -> Figure:
    """Scatter of per-gene variances (``ddof=0``), predicted (x) against real (y).

    Same layout and parameters (``label_top``, ``title``, ``save``) as :func:`mean_scatter`.

    Returns
    -------
    Figure
        The scatter plot.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.pl import var_scatter
    >>> real = np.random.default_rng(0).poisson(2.0, size=(20, 5)).astype(float)
    >>> fig = var_scatter(real, real, ["g1", "g2", "g3", "g4", "g5"], degs=["g1"])
    >>> fig.axes[0].get_ylabel()
    'real var'
    """
    options = {"label_top": 10, "title": None, "save": None, **kwargs}
    return _stat_scatter("var", pred, real, var_names, degs, **options)


def response_violin(
    control: Any,
    pred: Any,
    real: Any,
    var_names: Sequence[str],
    genes: Sequence[str],
    save: str | Path | None = None,
) -> Figure:
    """Violins of control, predicted and real expression, one panel per gene.

    Parameters
    ----------
    control, pred, real
        Cells x genes matrices (dense or sparse) over the same genes.
    var_names
        Gene names of the columns.
    genes
        Genes to show, one panel each.
    save
        File to write the figure to (PNG at 150 dpi unless the suffix says otherwise).

    Returns
    -------
    Figure
        One panel per gene: control, predicted and real violins.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.pl import response_violin
    >>> rng = np.random.default_rng(0)
    >>> control, real = rng.normal(0, 1, (30, 3)), rng.normal(2, 1, (30, 3))
    >>> names = ["ISG15", "IFI6", "MX1"]
    >>> fig = response_violin(control, real + 0.1, real, names, genes=["ISG15", "MX1"])
    >>> [ax.get_title() for ax in fig.axes]
    ['ISG15', 'MX1']
    """
    pred, real = _pair(pred, real)
    _, control = _pair(pred, control)
    if len(genes) == 0:
        raise TRVAEError("no genes to plot")
    idx = _gene_index(var_names, genes, pred.shape[1])
    fig = Figure(figsize=(2.4 * len(idx), 3), layout="constrained")
    axes = fig.subplots(1, len(idx), squeeze=False).ravel()
    labels, colors = ["control", "predicted", "real"], ["tab:blue", "tab:orange", "tab:green"]
    for ax, i, gene in zip(axes, idx, genes, strict=True):
        parts = ax.violinplot([m[:, i] for m in (control, pred, real)], showmedians=True)
        for body, c in zip(parts["bodies"], colors, strict=True):
            body.set_facecolor(c)
            body.set_alpha(0.6)
        ax.set_xticks([1, 2, 3], labels, rotation=45)
        ax.set_title(str(gene))
    axes[0].set_ylabel("expression")
    return _finish(fig, save)


def r2_bars(
    df: pd.DataFrame, metric: str = "r2_mean_top100", save: str | Path | None = None
) -> Figure:
    """Grouped bar chart of one metric per cell type (groups) and method (bars).

    Parameters
    ----------
    df
        Long table with columns ``method``, ``cell_type``, ``metric``, ``value``. Repeated rows
        for the same method and cell type (e.g. seeds) are averaged, their SD drawn as error bars.
    metric
        The ``metric`` value to plot.
    save
        File to write the figure to (PNG at 150 dpi unless the suffix says otherwise).

    Returns
    -------
    Figure
        The bar chart (one group of bars per cell type).

    Examples
    --------
    >>> import pandas as pd
    >>> from trvae.pl import r2_bars
    >>> df = pd.DataFrame({
    ...     "method": ["trVAE", "mean shift"] * 2, "cell_type": ["NK", "NK", "B", "B"],
    ...     "metric": "r2_mean_top100", "value": [0.93, 0.89, 0.95, 0.94],
    ... })
    >>> fig = r2_bars(df)
    >>> [label.get_text() for label in fig.axes[0].get_xticklabels()]
    ['NK', 'B']
    """
    missing = {"method", "cell_type", "metric", "value"} - set(df.columns)
    if missing:
        raise TRVAEError(f"df lacks columns {sorted(missing)}")
    sub = df[df["metric"] == metric]
    if sub.empty:
        raise TRVAEError(f"no rows with metric == {metric!r}")
    grouped = sub.groupby(["cell_type", "method"], sort=False)["value"]
    mean, sd = grouped.mean().unstack("method"), grouped.std().unstack("method")
    n_types, n_methods = mean.shape
    width = 0.8 / n_methods
    fig = Figure(figsize=(max(4.0, 1.2 * n_types + 2), 3.5), layout="constrained")
    ax = fig.subplots()
    pos = np.arange(n_types)
    for k, method in enumerate(mean.columns):
        err = sd[method].to_numpy() if sd[method].notna().any() else None
        offset = (k - (n_methods - 1) / 2) * width
        ax.bar(pos + offset, mean[method].to_numpy(), width, yerr=err, capsize=2, label=str(method))
    ax.set_xticks(pos, [str(c) for c in mean.index])
    ax.set_ylabel(metric)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    return _finish(fig, save)


def logfc_scatter(
    predictions: dict[str, Any],
    real: Any,
    control: Any,
    genes: pd.DataFrame,
    title: str | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Predicted (x) against real (y) log fold change of the response genes, one panel a method.

    Genes are coloured by their class from :func:`trvae.metrics.response_genes`: specific to the
    cell type (red) or shared with the other cell types (blue); other genes are not drawn. Each
    panel's legend gives the class's direction accuracy and R².

    Parameters
    ----------
    predictions
        Method name -> predicted cells x genes matrix (dense or sparse).
    real, control
        The real stimulated and control cells of the cell type, same genes.
    genes
        :func:`trvae.metrics.response_genes` of the cell type (one row per column).
    title
        Figure title.
    save
        File to write the figure to (PNG at 150 dpi unless the suffix says otherwise).

    Returns
    -------
    Figure
        One panel per method: predicted against real logFC.

    Examples
    --------
    >>> import trvae
    >>> from trvae.metrics import response_genes
    >>> from trvae.pl import logfc_scatter
    >>> adata = trvae.datasets.simulate_perturbation("specific", n_genes=60, cells_per_group=40)
    >>> x, t = adata.X, (adata.obs["cell_type"] == "type0").to_numpy()  # one cell type
    >>> s = (adata.obs["condition"] == "stimulated").to_numpy()
    >>> genes = response_genes(x[t & s], x[t & ~s], x[~t & s], x[~t & ~s], adata.var_names)
    >>> fig = logfc_scatter({"perfect": x[t & s]}, x[t & s], x[t & ~s], genes)
    >>> fig.axes[0].get_title()
    'perfect'
    """
    from trvae.metrics import response_gene_scores

    if not predictions:
        raise TRVAEError("no predictions to plot")
    real, control = _pair(real, control)
    ctrl = control.mean(0)
    lfc_real = real.mean(0) - ctrl
    classes = genes["response"].to_numpy()
    fig = Figure(figsize=(3.2 * len(predictions), 3.4), layout="constrained")
    axes = fig.subplots(1, len(predictions), squeeze=False, sharey=True).ravel()
    shown = np.isin(classes, ("specific", "shared"))
    lim = np.abs(lfc_real[shown]).max() if shown.any() else 1.0
    for ax, (name, pred) in zip(axes, predictions.items(), strict=True):
        pred = _pair(pred, real)[0]
        lfc_pred = pred.mean(0) - ctrl
        scores = response_gene_scores(pred, real, control, genes)
        for cls, colour in (("shared", "tab:blue"), ("specific", "tab:red")):
            mask = classes == cls
            label = (
                f"{cls} ({int(mask.sum())}): dir {scores[f'{cls}_direction']:.2f}, "
                f"R² {scores[f'{cls}_lfc_r2']:.2f}"
            )
            ax.scatter(lfc_pred[mask], lfc_real[mask], s=10, c=colour, alpha=0.7, label=label)
        hi = max(lim, np.abs(lfc_pred[shown]).max() if shown.any() else 0.0) * 1.05
        ax.plot([-hi, hi], [-hi, hi], ls="--", c="black", lw=0.8)
        ax.axhline(0, c="grey", lw=0.5)
        ax.axvline(0, c="grey", lw=0.5)
        ax.set_title(str(name))
        ax.set_xlabel("predicted logFC")
        ax.legend(loc="upper left", frameon=False, fontsize=6)
    axes[0].set_ylabel("real logFC")
    if title:
        fig.suptitle(title)
    return _finish(fig, save)
