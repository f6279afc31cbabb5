"""Count likelihoods on real data: NB, ZINB and MSE trVAE on raw counts, one split, one budget.

For every held-out cell type (by default every cell type with at least :data:`MIN_CELLS` cells in
both conditions), the stimulated cells of that type are removed and

1. :data:`N_HVG` highly variable genes are chosen on the *training* cells only
   (:func:`training_hvgs`: scanpy's ``flavor="seurat_v3"`` on counts when scikit-misc is
   installed, else ``flavor="seurat"`` on the log-normalised training cells);
2. the counts of those genes are log-normalised with :func:`log_normalize`
   (``normalize_total(target_sum=1e4)`` over the selected genes, then ``log1p``);
3. an NB and a ZINB trVAE are trained on the counts and an MSE trVAE on the log-normalised
   values: same cells, same train/validation split, seed, architecture and epoch budget, each
   with the cell types as ``mmd_group_key`` (what a user with cell-type labels gets; the MSE
   model's ``anchor="auto"`` and level-aware mean shift need those groups);
4. each predicts the held-out stimulated cells from that type's control cells with the decoder
   (``predict(mode="decode")``), as its mean (``return_mean=True``) and as one sample per cell
   from its likelihood (``return_mean=False``), and with its default read-out
   (``mode="quantile"``) and the residual one. NB/ZINB counts are log-normalised with the same
   :func:`log_normalize` as the real cells. The library size of a predicted cell is that of the
   control cell it was carried from (its total count over the selected genes); after
   ``normalize_total`` it only matters for the samples and the quantile read-out (it sets
   the Poisson noise of their counts);
5. every prediction and the ``mean_shift`` and ``control``
   baselines (on the log-normalised values) are scored with
   :func:`trvae.metrics.evaluate_prediction` on the top-100 DEGs of the real response (Wilcoxon,
   real stimulated vs control cells of the held-out type, log-normalised).

Results go to ``out_dir``: ``metrics.csv`` (long format) and ``report.md``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from trvae._errors import TRVAEError
from trvae._io import atomic_write_text
from trvae.data import validation as V
from trvae.model import DEFAULT_ALPHA, TRVAE
from trvae.pp import log_normalize
from trvae_benchmarks.baselines import dense
from trvae_benchmarks.common import (
    BENCHMARK_MODEL,
    HeldOutRun,
    Split,
    check_inputs,
    fmt,
    markdown,
    n_boots,
    run_lines,
    save_fig,
    slug,
    software_line,
    summary_sections,
    summary_spec,
    timed_fit,
    torch_threads,
    train_arguments,
    warm_up,
)

__all__ = [
    "COUNT_LIKELIHOODS",
    "hvg_flavor",
    "log_normalize",
    "run_counts_benchmark",
    "training_hvgs",
    "winners",
]

COUNT_LIKELIHOODS = ("nb", "zinb", "mse")
#: Read-outs whose violins (control / predicted / real, top-3 DEGs) go to ``figures/``.
VIOLIN_READOUTS = ("nb-quantile", "mse-quantile")
BASELINES = ("mean_shift", "control")
N_HVG, MIN_CELLS, TARGET_SUM = 2000, 20, 1e4
#: ``quick=True``: NK only, 8 epochs, about 1 minute.
COUNTS_QUICK_EPOCHS = 8
#: (metric, title, lower is better) of the report's summary tables.
SUMMARY = summary_spec(
    "r2_mean_top100", "r2_var_top100", "edist_pca", "edist_top100", "wasserstein_top100",
    "r2_nonzero_top100", "delta_pearson_top100", "r2_mean_all", "fit_seconds",
    r2_mean_all="R² of mean expression, all selected genes",
)  # fmt: skip
#: (metric, title, lower is better) of the "which likelihood wins" table.
WINNER_METRICS = (
    ("r2_mean_top100", "R² mean top-100", False),
    ("r2_var_top100", "R² var top-100", False),
    ("edist_pca", "E-distance PCA", True),
    ("edist_top100", "E-distance top-100", True),
    ("wasserstein_top100", "Wasserstein top-100", True),
)


def hvg_flavor() -> str:
    """``"seurat_v3"`` (on counts) when scikit-misc is installed, else ``"seurat"``."""
    try:
        import skmisc.loess  # noqa: F401 - scanpy's seurat_v3 flavor needs it
    except ImportError:
        return "seurat"
    return "seurat_v3"


def training_hvgs(
    adata: AnnData,
    train_mask: np.ndarray,
    n_top_genes: int = N_HVG,
    flavor: str | None = None,
    layer: str | None = None,
) -> list[str]:
    """Highly variable genes chosen on the cells of ``train_mask`` only, in ``adata``'s order.

    Parameters
    ----------
    adata
        Raw counts (``X`` or ``layers[layer]``), cells x genes.
    train_mask
        Boolean mask of the cells the selection may look at; the other cells' values have no
        influence on the result.
    n_top_genes
        Genes to keep; all genes when ``adata`` has no more than that.
    flavor
        ``"seurat_v3"`` (on counts, needs scikit-misc) or ``"seurat"`` (on the log-normalised
        counts); default :func:`hvg_flavor`.
    """
    import scanpy as sc

    names = [str(g) for g in adata.var_names]
    if n_top_genes >= len(names):
        return names
    flavor = flavor or hvg_flavor()
    x = V.get_matrix(adata, layer)[np.flatnonzero(train_mask)]
    x = sparse.csr_matrix(x, dtype=np.float32) if sparse.issparse(x) else np.asarray(x, np.float32)
    train = AnnData(
        x if flavor == "seurat_v3" else log_normalize(x),
        obs=pd.DataFrame(index=adata.obs_names[np.asarray(train_mask)]),
        var=pd.DataFrame(index=names),
    )
    sc.pp.highly_variable_genes(train, n_top_genes=n_top_genes, flavor=flavor, subset=False)
    chosen = train.var["highly_variable"].to_numpy()
    return [g for g, keep in zip(names, chosen, strict=True) if keep]


@dataclass(kw_only=True)
class _CountsRun(HeldOutRun):
    """A counts benchmark run: the counts, the gene selection, the networks' arguments."""

    x_all: Any
    obs: pd.DataFrame
    layer: str | None
    n_top_genes: int
    flavor: str
    model_kwargs: dict
    train_kw: dict
    sizes: list[dict] = field(default_factory=list)


def _default_cell_types(types, conds, control, stimulated, min_cells: int) -> list[str]:
    """Cell types with at least ``min_cells`` cells in each of the two conditions, sorted."""
    table = pd.crosstab(types, conds)
    ok = (table.get(control, 0) >= min_cells) & (table.get(stimulated, 0) >= min_cells)
    return sorted(str(t) for t in table.index[ok])


def _predictions(model: TRVAE, ctrl: AnnData, control: str, stimulated: str, seed: int) -> dict:
    """Read-outs of one fitted model, log-normalised: name -> dense cells x genes."""
    lik = model.init_params["likelihood"]
    kw = {"source_condition": control, "mode": "decode", "seed": seed}
    mean = dense(model.predict(ctrl, stimulated, return_mean=True, **kw).X)
    sample = dense(model.predict(ctrl, stimulated, return_mean=False, **kw).X)
    if lik == "mse":
        residual = model.predict(ctrl, stimulated, source_condition=control, mode="residual")
        quantile = model.predict(ctrl, stimulated, source_condition=control, mode="quantile")
        return {
            "mse": mean,
            "mse-sample": sample,
            "mse-residual": dense(residual.X),
            "mse-quantile": dense(quantile.X),
        }
    residual = model.predict(ctrl, stimulated, source_condition=control, mode="residual").X
    quantile = model.predict(ctrl, stimulated, source_condition=control, mode="quantile", seed=seed)
    return {
        lik: dense(log_normalize(mean)),
        f"{lik}-sample": dense(log_normalize(sample)),
        f"{lik}-residual": dense(log_normalize(residual)),
        f"{lik}-quantile": dense(log_normalize(quantile.X)),
    }


def run_counts_benchmark(
    adata: AnnData,
    condition_key: str = "condition", cell_type_key: str = "cell_type",
    control: str = "control", stimulated: str = "stimulated",
    cell_types: Sequence[str] | None = None,
    out_dir: str | os.PathLike = "results/kang-counts",
    layer: str | None = None,
    n_top_genes: int = N_HVG, hvg: str | None = None, min_cells: int = MIN_CELLS,
    max_epochs: int | None = None,
    model_kwargs: dict | None = None, train_kwargs: dict | None = None,
    n_boot: int | None = None, seed: int = 0,
    progress_bar: bool = True, quick: bool = False,
    dataset_name: str | None = None, command: str | None = None,
    n_threads: int | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Score NB, ZINB and MSE trVAE on held-out stimulated cells of each cell type.

    See the module docstring for the protocol.

    Parameters
    ----------
    adata
        Raw counts (``X`` or ``layers[layer]``) with condition and cell-type columns in ``obs``.
    condition_key, cell_type_key, control, stimulated
        As in :func:`trvae_benchmarks.kang.run_benchmark`.
    cell_types
        Held-out cell types, in this order; default: those with at least ``min_cells`` cells in
        both conditions, sorted.
    out_dir
        Directory for ``metrics.csv`` and ``report.md``.
    n_top_genes, hvg
        Number of highly variable genes and scanpy flavor (default :func:`hvg_flavor`).
    max_epochs
        Epoch budget of each network (default: the package's, :func:`trvae.train.budget.
        epoch_budget`; :data:`COUNTS_QUICK_EPOCHS` with ``quick``).
    model_kwargs, train_kwargs
        Override :data:`~trvae_benchmarks.common.BENCHMARK_MODEL` and
        :data:`~trvae_benchmarks.common.BENCHMARK_TRAIN` (``likelihood`` and ``layer`` are set
        here).
    n_boot
        Bootstrap replicates of the R² SDs (default 100, or 20 with ``quick``).
    quick
        Hold out ``"NK"`` only (or the first of ``cell_types``) with the quick budgets.
    n_threads
        torch CPU threads of the fits (default: torch's setting when called).

    Returns
    -------
    pandas.DataFrame
        Long format: ``method``, ``cell_type``, ``metric``, ``value``.
    """
    start = time.perf_counter()
    run = _prepare(
        adata, (condition_key, cell_type_key, control, stimulated), cell_types, out_dir, quick,
        seed, layer=layer, n_top_genes=n_top_genes, hvg=hvg, min_cells=min_cells,
        max_epochs=max_epochs, model_kwargs=model_kwargs, train_kwargs=train_kwargs,
        n_boot=n_boot, progress_bar=progress_bar,
    )  # fmt: skip
    with torch_threads(n_threads) as threads:
        run.n_threads = threads
        warm_up(min(n_top_genes, adata.n_vars), {**run.model_kwargs, "likelihood": "zinb"})
        df = run.run_all(lambda cell_type: _score_cell_type(run, cell_type))
    runtime = time.perf_counter() - start
    _write_report(run, df, runtime, dataset_name, command, quick)
    return df


def _prepare(
    adata, keys, cell_types, out_dir, quick, seed, *, layer, n_top_genes, hvg, min_cells,
    max_epochs, model_kwargs, train_kwargs, n_boot, progress_bar,
) -> _CountsRun:  # fmt: skip
    """Check the counts and labels, pick the cell types, resolve the budgets and arguments."""
    condition_key, cell_type_key, control, stimulated = keys
    V.check_adata(adata)
    x_all = V.get_matrix(adata, layer)
    V.check_values(x_all, "nb", "adata.X" if layer is None else f"adata.layers[{layer!r}]")
    if cell_types is None and not quick:
        conds0 = V.check_obs_key(adata, condition_key).to_numpy()
        types0 = V.check_obs_key(adata, cell_type_key, "cell_type_key").to_numpy()
        cell_types = _default_cell_types(types0, conds0, str(control), str(stimulated), min_cells)
        if not cell_types:
            raise TRVAEError(f"no cell type has {min_cells} cells in both conditions")
    conds, types, cell_types = check_inputs(adata, *keys, cell_types, quick)
    max_epochs = max_epochs or (COUNTS_QUICK_EPOCHS if quick else None)  # None: package budget
    model_kwargs = {**BENCHMARK_MODEL, **(model_kwargs or {}), "seed": seed}
    for key in ("likelihood", "layer"):
        model_kwargs.pop(key, None)
    train_kw = train_arguments(train_kwargs, max_epochs, seed, progress_bar)
    obs = pd.DataFrame(
        {condition_key: pd.Categorical(conds), cell_type_key: pd.Categorical(types)},
        index=adata.obs_names.astype(str),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return _CountsRun(
        adata, (condition_key, cell_type_key, str(control), str(stimulated)), conds, types,
        cell_types, out, n_boots(n_boot, quick), seed,
        x_all=sparse.csr_matrix(x_all) if sparse.issparse(x_all) else np.asarray(x_all),
        obs=obs, layer=layer, n_top_genes=n_top_genes, flavor=hvg or hvg_flavor(),
        model_kwargs=model_kwargs, train_kw=train_kw,
    )  # fmt: skip


def _hold_out(run: _CountsRun, cell_type: str) -> Split:
    """Hold out ``cell_type``: genes chosen on the training cells, their log-normalised values."""
    genes = training_hvgs(run.adata, ~run.held(cell_type), run.n_top_genes, run.flavor, run.layer)
    pos = pd.Index([str(g) for g in run.adata.var_names]).get_indexer(genes)
    counts = run.x_all[:, pos]
    lognorm = log_normalize(counts)
    data = AnnData(
        lognorm, obs=run.obs.copy(), var=pd.DataFrame(index=genes), layers={"counts": counts}
    )
    split = run.split(cell_type, data, lognorm, genes)
    _, _, control, stimulated = run.keys
    run.sizes.append(
        {
            "cell type": cell_type,
            "training cells": split.train.n_obs,
            f"{control} (source)": split.ctrl.n_obs,
            f"{stimulated} (held out)": len(split.real),
            "genes": len(genes),
        }
    )
    return split


def _fit(run: _CountsRun, split: Split) -> dict[str, tuple[np.ndarray, float, float]]:
    """Fit the NB, ZINB and MSE networks and the baselines; read-out -> (prediction, s, MB)."""
    condition_key, cell_type_key, control, stimulated = run.keys
    preds: dict[str, tuple[np.ndarray, float, float]] = {}
    for lik in COUNT_LIKELIHOODS:
        torch.set_num_threads(run.n_threads)
        model = TRVAE(
            split.train,
            condition_key=condition_key,
            layer=None if lik == "mse" else "counts",
            likelihood=lik,
            **{"mmd_group_key": cell_type_key, **run.model_kwargs},
        )
        fit_s, rss_mb = timed_fit(model.train, **run.train_kw)
        for name, p in _predictions(model, split.ctrl, control, stimulated, run.seed).items():
            preds[name] = (p, fit_s, rss_mb)
        del model
    for name in BASELINES:
        method = run.make(name)
        fit_s, rss_mb = timed_fit(method.fit, split.train)
        preds[name] = (method.predict(split.ctrl), fit_s, rss_mb)
    return preds


def _score_cell_type(run: _CountsRun, cell_type: str) -> Split:
    """Hold out ``cell_type``, fit every network and baseline, score every read-out, and draw
    the violins of the default read-outs (:data:`VIOLIN_READOUTS`)."""
    from trvae import pl

    split = _hold_out(run, cell_type)
    for name, (p, fit_s, rss_mb) in _fit(run, split).items():
        scores = run.evaluate(p, split)
        scores.update(fit_seconds=fit_s, fit_peak_rss_mb=rss_mb)
        run.add(name, cell_type, scores)
        if name in VIOLIN_READOUTS:
            save_fig(
                pl.response_violin(split.ctrl_x, p, split.real, split.var_names, split.degs[:3]),
                run.out / "figures" / f"{slug(cell_type)}_{name}_violin.png",
            )
    return split


def _write_report(run: _CountsRun, df, runtime, dataset_name, command, quick) -> None:
    """Write ``report.md`` and print the winners table."""
    settings = {
        "max_epochs": run.train_kw["max_epochs"] or "package default (epoch_budget)",
        **{
            k: v for k, v in run.train_kw.items() if k not in ("max_epochs", "seed", "progress_bar")
        },
        **{k: v for k, v in run.model_kwargs.items() if k != "seed"},
        "alpha": run.model_kwargs.get("alpha", f"per likelihood {DEFAULT_ALPHA}"),
        "seed": run.seed,
        "n_boot": run.n_boot,
        "quick": quick,
        "torch_threads": run.n_threads,
    }
    atomic_write_text(
        run.out / "report.md", _report(run, df, runtime, dataset_name, command, settings)
    )
    print(f"\nwhich likelihood wins ({runtime:.0f}s total)")
    print(winners(df).to_string())
    print(f"wrote {run.out / 'metrics.csv'} and {run.out / 'report.md'}")


def winners(df: pd.DataFrame) -> pd.DataFrame:
    """Cell types (+ 'mean') x (metric, read-out): the best of NB, ZINB and MSE, with its value.

    The mean read-outs (``nb``, ``zinb``, ``mse``), the sampled ones (``*-sample``) and the
    default ones (``*-quantile``) are compared separately.
    """
    readouts = {
        "mean": list(COUNT_LIKELIHOODS),
        "sample": [f"{m}-sample" for m in COUNT_LIKELIHOODS],
        "quantile": [f"{m}-quantile" for m in COUNT_LIKELIHOODS],
    }
    columns = {}
    for metric, title, lower in WINNER_METRICS:
        wide = (
            df[df.metric == metric]
            .groupby(["cell_type", "method"], sort=False)["value"]
            .mean()
            .unstack()
        )
        wide = wide.reindex(index=df["cell_type"].unique())
        for readout, names in readouts.items():
            sub = wide.reindex(columns=names)
            sub.loc["mean"] = sub.mean(0)
            col = []
            for _, values in sub.iterrows():
                values = values.dropna()
                if values.empty:
                    col.append("–")
                    continue
                best = values.idxmin() if lower else values.idxmax()
                name = best.removesuffix("-sample").removesuffix("-quantile")
                col.append(f"{name} ({fmt(values[best])})")
            columns[f"{title} ({readout})"] = col
        index = sub.index
    return pd.DataFrame(columns, index=index)


def _report(run: _CountsRun, df, runtime, dataset_name, command, settings) -> str:
    """The Markdown report: header, protocol, the winners table, summary tables."""
    name = dataset_name or "AnnData"
    settings_text = ", ".join(f"{k}={v}" for k, v in settings.items())
    size_table = pd.DataFrame(run.sizes).set_index("cell type") if run.sizes else pd.DataFrame()
    lines = [
        f"# trVAE count likelihoods: {name}",
        "",
        run.dataset_line(name, " of raw counts"),
        *run_lines(command or "trvae_benchmarks.kang_counts.run_counts_benchmark(...)", runtime),
        f"- **Settings** (the same for the three networks): {settings_text}",
        software_line(),
        "",
        *_protocol(run),
        "## Which likelihood wins",
        "",
        "The best of `nb`, `zinb` and `mse` for each cell type, with its value; the mean "
        "read-outs, the sampled read-outs and the default (quantile) read-outs compared "
        "separately. The `mean` row compares the averages over cell types.",
        "",
        markdown(winners(df)),
        "",
        "## Cells",
        "",
    ]
    if not size_table.empty:
        lines += [markdown(size_table.astype(str)), ""]
    lines += ["## Summary", "", *summary_sections(df, SUMMARY, run.scored)]
    lines += [
        "## Files",
        "",
        "- `metrics.csv`: every metric, long format (method, cell_type, metric, value).",
        "- `figures/<cell type>_<read-out>_violin.png`: control / predicted / real expression "
        "(log-normalised) of the top-3 response genes, for "
        + " and ".join(f"`{r}`" for r in VIOLIN_READOUTS)
        + " (the NB and the MSE default read-outs).",
        "",
    ]
    return "\n".join(lines)


def _protocol(run: _CountsRun) -> list[str]:
    """The report's protocol section: gene selection, the networks, the read-outs, the scores."""
    _, _, control, stimulated = run.keys
    flavor = run.flavor
    hvg_text = (
        "`flavor='seurat_v3'` on the raw counts"
        if flavor == "seurat_v3"
        else "`flavor='seurat'` on the log-normalised counts (scikit-misc, which `seurat_v3` "
        "needs, is not installed)"
        if flavor == "seurat"
        else f"`flavor={flavor!r}`"
    )
    return [
        "## Protocol",
        "",
        f"For each cell type, its {stimulated} cells were removed. On the remaining (training) "
        f"cells only, {run.n_top_genes} highly variable genes were chosen with scanpy's "
        f"`highly_variable_genes`, {hvg_text}; so each held-out cell type has its own gene set. "
        "Log-normalised values are `log1p(normalize_total(counts, target_sum=1e4))`, the total "
        "taken over the selected genes. Three trVAEs were trained on the same training cells, "
        "with the same train/validation split, seed, network and epoch budget: `nb` and `zinb` "
        "on the counts, `mse` on the log-normalised values. Each carried the held-out type's "
        f"{control} cells to {stimulated} with its decoder (`predict(mode='decode')`):",
        "",
        "- `nb`, `zinb`, `mse`: the decoder's mean (`return_mean=True`). For NB/ZINB this is a "
        "count mean, log-normalised exactly like the real cells; the normalisation removes the "
        "library size, so it is the decoder's gene proportions.",
        "- `*-sample`: one draw per cell from the model's likelihood (`return_mean=False`): "
        "Gamma-Poisson counts (NB), with zero inflation (ZINB), log-normalised like the real "
        "cells; for MSE the mean plus Gaussian noise of the per-gene training residual SD.",
        f"- The library size of each predicted cell is that of the {control} cell it was "
        "carried from (its total count over the selected genes), which sets the Poisson noise "
        "of the NB/ZINB samples.",
        "- `*-quantile`: each network's default read-out (`predict()`), which carries each "
        "cell's rank: for NB/ZINB each count's randomized probability integral transform under "
        "the source condition's distribution read off the target condition's (integer counts, "
        "log-normalised like the real cells); for MSE each value's rank in the source "
        "condition's residual distribution read off the target condition's.",
        "- `*-residual`: the cell's own profile plus the decoder's change (expected counts for "
        "NB/ZINB).",
        f"- `mean_shift` ({control} cells plus the mean response of the other cell types) and "
        f"`control` (the {control} cells unchanged), on the log-normalised values.",
        "",
        "Scores compare the log-normalised prediction with the real held-out cells on the "
        f"top-100 DEGs (Wilcoxon, real {stimulated} vs {control} of that cell type, "
        "log-normalised) or in a 50-component PCA fitted on the real stimulated and control "
        "cells (`trvae.metrics.evaluate_prediction`). R² and Pearson r: higher is better; "
        "E-distance: lower is better. Variance and E-distance reward predictions that spread "
        "like real cells, which decoder means do not: compare the sampled read-outs there.",
        "",
    ]
