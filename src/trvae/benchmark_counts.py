"""Count likelihoods on real data: NB, ZINB and MSE trVAE on raw counts, one split, one budget.

For every held-out cell type (by default every cell type with at least :data:`MIN_CELLS` cells in
both conditions), the stimulated cells of that type are removed and

1. :data:`N_HVG` highly variable genes are chosen on the *training* cells only
   (:func:`training_hvgs`: scanpy's ``flavor="seurat_v3"`` on counts when scikit-misc is
   installed, else ``flavor="seurat"`` on the log-normalised training cells);
2. the counts of those genes are log-normalised with :func:`log_normalize`
   (``normalize_total(target_sum=1e4)`` over the selected genes, then ``log1p``);
3. an NB and a ZINB trVAE are trained on the counts and an MSE trVAE on the log-normalised
   values: same cells, same train/validation split, seed, architecture and epoch budget;
4. each predicts the held-out stimulated cells from that type's control cells with the decoder
   (``predict(mode="decode")``), as its mean (``return_mean=True``) and as one sample per cell
   from its likelihood (``return_mean=False``). NB/ZINB counts are log-normalised with the same
   :func:`log_normalize` as the real cells. The library size of a predicted cell is that of the
   control cell it was carried from (its total count over the selected genes); after
   ``normalize_total`` it only matters for the samples (it sets their Poisson noise);
5. every prediction, the MSE model's residual read-out and the ``mean_shift`` and ``control``
   baselines (on the log-normalised values) are scored with
   :func:`trvae.metrics.evaluate_prediction` on the top-100 DEGs of the real response (Wilcoxon,
   real stimulated vs control cells of the held-out type, log-normalised).

Results go to ``out_dir``: ``metrics.csv`` (long format) and ``report.md``.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from trvae import _validation as V
from trvae._errors import TRVAEError
from trvae.baselines import dense, make_method
from trvae.benchmark import (
    BENCHMARK_MODEL,
    BENCHMARK_TRAIN,
    N_BOOT,
    QUICK_N_BOOT,
    PeakRSS,
    _atomic_write,
    _check_inputs,
    _degs,
    _fmt,
    _long,
    _markdown,
    _progress,
    _run_lines,
    _software_line,
    _table,
    _warm_up,
)
from trvae.metrics import evaluate_prediction
from trvae.model import DEFAULT_ALPHA, TRVAE

__all__ = [
    "COUNT_LIKELIHOODS",
    "hvg_flavor",
    "log_normalize",
    "run_counts_benchmark",
    "training_hvgs",
]

COUNT_LIKELIHOODS = ("nb", "zinb", "mse")
BASELINES = ("mean_shift", "control")
N_HVG, MIN_CELLS, TARGET_SUM = 2000, 20, 1e4
#: Epoch budget of the three networks (n_hidden 256-256, batch 64, 2000 genes). Measured on
#: Kang counts with 1 torch thread on a 2-core machine that ran another job: the 8 cell types x
#: 3 likelihoods took 14.8 min (a fit: MSE ~20 s, NB ~36 s, ZINB ~45 s; scoring ~15-40 s).
COUNTS_EPOCHS = 20
#: ``quick=True``: NK only, 8 epochs, about 1 minute.
COUNTS_QUICK_EPOCHS = 8
#: (metric, title, lower is better) of the report's summary tables.
SUMMARY = (
    ("r2_mean_top100", "R² of mean expression, top-100 DEGs (± bootstrap SD)", False),
    ("r2_var_top100", "R² of variance, top-100 DEGs (± bootstrap SD)", False),
    ("edist_pca", "E-distance to the real cells, PCA space (lower is better)", True),
    ("delta_pearson_top100", "Pearson r of the mean response, top-100 DEGs", False),
    ("r2_mean_all", "R² of mean expression, all selected genes", False),
    ("fit_seconds", "Fit time (s)", True),
)
#: (metric, title, lower is better) of the "which likelihood wins" table.
WINNER_METRICS = (
    ("r2_mean_top100", "R² mean top-100", False),
    ("r2_var_top100", "R² var top-100", False),
    ("edist_pca", "E-distance PCA", True),
)


def hvg_flavor() -> str:
    """``"seurat_v3"`` (on counts) when scikit-misc is installed, else ``"seurat"``."""
    try:
        import skmisc.loess  # noqa: F401 - scanpy's seurat_v3 flavor needs it
    except ImportError:
        return "seurat"
    return "seurat_v3"


def log_normalize(counts, target_sum: float = TARGET_SUM):
    """``log1p`` of counts scaled to ``target_sum`` per cell; sparse stays sparse (float32).

    The same arithmetic as ``sc.pp.normalize_total(adata, target_sum=target_sum)`` followed by
    ``sc.pp.log1p(adata)``; cells without counts stay zero. Real and predicted counts both go
    through this function, so they are normalised identically.
    """
    if sparse.issparse(counts):
        x = sparse.csr_matrix(counts, dtype=np.float32, copy=True)
        totals = np.asarray(x.sum(1), dtype=np.float64).ravel()
    else:
        x = np.array(counts, dtype=np.float32)
        totals = x.sum(1, dtype=np.float64)
    scale = np.zeros_like(totals)
    np.divide(target_sum, totals, out=scale, where=totals > 0)
    scale = scale.astype(np.float32)
    if sparse.issparse(x):
        x = sparse.csr_matrix(sparse.diags(scale) @ x, dtype=np.float32)
        x.data = np.log1p(x.data)
        return x
    return np.log1p(x * scale[:, None])


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
        return {"mse": mean, "mse-sample": sample, "mse-residual": dense(residual.X)}
    residual = model.predict(ctrl, stimulated, source_condition=control, mode="residual").X
    return {
        lik: dense(log_normalize(mean)),
        f"{lik}-sample": dense(log_normalize(sample)),
        f"{lik}-residual": dense(log_normalize(residual)),
    }


def run_counts_benchmark(
    adata: AnnData,
    condition_key: str = "condition",
    cell_type_key: str = "cell_type",
    control: str = "control",
    stimulated: str = "stimulated",
    cell_types: Sequence[str] | None = None,
    out_dir: str | os.PathLike = "results/kang-counts",
    layer: str | None = None,
    n_top_genes: int = N_HVG,
    hvg: str | None = None,
    min_cells: int = MIN_CELLS,
    max_epochs: int | None = None,
    model_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
    n_boot: int | None = None,
    seed: int = 0,
    progress_bar: bool = True,
    quick: bool = False,
    dataset_name: str | None = None,
    command: str | None = None,
    n_threads: int | None = None,
) -> pd.DataFrame:
    """Score NB, ZINB and MSE trVAE on held-out stimulated cells of each cell type.

    See the module docstring for the protocol.

    Parameters
    ----------
    adata
        Raw counts (``X`` or ``layers[layer]``) with condition and cell-type columns in ``obs``.
    condition_key, cell_type_key, control, stimulated
        As in :func:`trvae.benchmark.run_benchmark`.
    cell_types
        Held-out cell types, in this order; default: those with at least ``min_cells`` cells in
        both conditions, sorted.
    out_dir
        Directory for ``metrics.csv`` and ``report.md``.
    n_top_genes, hvg
        Number of highly variable genes and scanpy flavor (default :func:`hvg_flavor`).
    max_epochs
        Epoch budget of each network (default :data:`COUNTS_EPOCHS`, or
        :data:`COUNTS_QUICK_EPOCHS` with ``quick``).
    model_kwargs, train_kwargs
        Override :data:`~trvae.benchmark.BENCHMARK_MODEL` and
        :data:`~trvae.benchmark.BENCHMARK_TRAIN` (``likelihood`` and ``layer`` are set here).
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
    threads_before = torch.get_num_threads()
    n_threads = int(n_threads or threads_before)
    V.check_adata(adata)
    x_all = V.get_matrix(adata, layer)
    V.check_values(x_all, "nb", "adata.X" if layer is None else f"adata.layers[{layer!r}]")
    if cell_types is None and not quick:
        conds0 = V.check_obs_key(adata, condition_key).to_numpy()
        types0 = V.check_obs_key(adata, cell_type_key, "cell_type_key").to_numpy()
        cell_types = _default_cell_types(types0, conds0, str(control), str(stimulated), min_cells)
        if not cell_types:
            raise TRVAEError(f"no cell type has {min_cells} cells in both conditions")
    conds, types, cell_types = _check_inputs(
        adata, condition_key, cell_type_key, control, stimulated, cell_types, quick
    )
    control, stimulated = str(control), str(stimulated)
    max_epochs = max_epochs or (COUNTS_QUICK_EPOCHS if quick else COUNTS_EPOCHS)
    n_boot = n_boot or (QUICK_N_BOOT if quick else N_BOOT)
    flavor = hvg or hvg_flavor()
    model_kwargs = {**BENCHMARK_MODEL, **(model_kwargs or {}), "seed": seed}
    for key in ("likelihood", "layer"):
        model_kwargs.pop(key, None)
    train_kw = {
        **BENCHMARK_TRAIN,
        **(train_kwargs or {}),
        "max_epochs": max_epochs,
        "seed": seed,
        "progress_bar": progress_bar,
    }
    x_all = sparse.csr_matrix(x_all) if sparse.issparse(x_all) else np.asarray(x_all)
    obs = pd.DataFrame(
        {condition_key: pd.Categorical(conds), cell_type_key: pd.Categorical(types)},
        index=adata.obs_names.astype(str),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    sizes: list[dict] = []
    scored: list[str] = []
    df = pd.DataFrame(columns=["method", "cell_type", "metric", "value"])
    try:
        torch.set_num_threads(n_threads)
        _warm_up(min(n_top_genes, adata.n_vars), {**model_kwargs, "likelihood": "zinb"})
        for i, cell_type in enumerate(cell_types, 1):
            t0 = time.perf_counter()
            gc.collect()
            is_type = types == cell_type
            held, ctrl_mask = is_type & (conds == stimulated), is_type & (conds == control)
            genes = training_hvgs(adata, ~held, n_top_genes, flavor, layer)
            pos = pd.Index([str(g) for g in adata.var_names]).get_indexer(genes)
            counts = x_all[:, pos]
            lognorm = log_normalize(counts)
            data = AnnData(
                lognorm, obs=obs.copy(), var=pd.DataFrame(index=genes), layers={"counts": counts}
            )
            train, ctrl = data[~held].copy(), data[ctrl_mask].copy()
            real, ctrl_x = dense(lognorm[np.flatnonzero(held)]), dense(ctrl.X)
            degs = _degs(real, ctrl_x, genes, stimulated, control)
            sizes.append(
                {
                    "cell type": cell_type,
                    "training cells": train.n_obs,
                    f"{control} (source)": ctrl.n_obs,
                    f"{stimulated} (held out)": len(real),
                    "genes": len(genes),
                }
            )
            preds: dict[str, tuple[np.ndarray, float, float]] = {}
            for lik in COUNT_LIKELIHOODS:
                torch.set_num_threads(n_threads)
                model = TRVAE(
                    train,
                    condition_key=condition_key,
                    layer=None if lik == "mse" else "counts",
                    likelihood=lik,
                    **model_kwargs,
                )
                tf = time.perf_counter()
                with PeakRSS() as rss:
                    model.train(**train_kw)
                fit_s = time.perf_counter() - tf
                for name, p in _predictions(model, ctrl, control, stimulated, seed).items():
                    preds[name] = (p, fit_s, rss.increase_mb)
                del model
            for name in BASELINES:
                method = make_method(
                    name,
                    condition_key=condition_key,
                    control=control,
                    stimulated=stimulated,
                    cell_type_key=cell_type_key,
                )
                tf = time.perf_counter()
                with PeakRSS() as rss:
                    method.fit(train)
                preds[name] = (method.predict(ctrl), time.perf_counter() - tf, rss.increase_mb)
            for name, (p, fit_s, rss_mb) in preds.items():
                scores = evaluate_prediction(p, real, ctrl_x, genes, degs, n_boot=n_boot, seed=seed)
                scores.update(fit_seconds=fit_s, fit_peak_rss_mb=rss_mb)
                rows += _long(name, cell_type, scores)
                if name not in scored:
                    scored.append(name)
            df = pd.DataFrame(rows, columns=["method", "cell_type", "metric", "value"])
            _atomic_write(out / "metrics.csv", df.to_csv(index=False))
            _progress(df, f"[{i}/{len(cell_types)}]", cell_type, train, ctrl, real, t0)
    finally:
        torch.set_num_threads(threads_before)
    runtime = time.perf_counter() - start
    settings = {
        "max_epochs": max_epochs,
        **{k: v for k, v in train_kw.items() if k not in ("max_epochs", "seed", "progress_bar")},
        **{k: v for k, v in model_kwargs.items() if k != "seed"},
        "alpha": model_kwargs.get("alpha", f"per likelihood {DEFAULT_ALPHA}"),
        "seed": seed,
        "n_boot": n_boot,
        "quick": quick,
        "torch_threads": n_threads,
    }
    report = _report(
        df,
        methods=scored,
        cell_types=cell_types,
        adata=adata,
        keys=(condition_key, cell_type_key, control, stimulated),
        dataset_name=dataset_name,
        command=command,
        runtime=runtime,
        settings=settings,
        flavor=flavor,
        n_top_genes=n_top_genes,
        sizes=sizes,
    )
    _atomic_write(out / "report.md", report)
    print(f"\nwhich likelihood wins ({runtime:.0f}s total)")
    print(winners(df).to_string())
    print(f"wrote {out / 'metrics.csv'} and {out / 'report.md'}")
    return df


def winners(df: pd.DataFrame) -> pd.DataFrame:
    """Cell types (+ 'mean') x (metric, read-out): the best of NB, ZINB and MSE, with its value.

    The mean read-outs (``nb``, ``zinb``, ``mse``) and the sampled ones (``*-sample``) are
    compared separately.
    """
    readouts = {
        "mean": list(COUNT_LIKELIHOODS),
        "sample": [f"{m}-sample" for m in COUNT_LIKELIHOODS],
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
                col.append(f"{best.removesuffix('-sample')} ({_fmt(values[best])})")
            columns[f"{title} ({readout})"] = col
        index = sub.index
    return pd.DataFrame(columns, index=index)


def _report(
    df, *, methods, cell_types, adata, keys, dataset_name, command, runtime, settings, flavor,
    n_top_genes, sizes,
) -> str:  # fmt: skip
    """The Markdown report: header, protocol, the winners table, summary tables."""

    condition_key, cell_type_key, control, stimulated = keys
    name = dataset_name or "AnnData"
    settings_text = ", ".join(f"{k}={v}" for k, v in settings.items())
    hvg_text = (
        "`flavor='seurat_v3'` on the raw counts"
        if flavor == "seurat_v3"
        else "`flavor='seurat'` on the log-normalised counts (scikit-misc, which `seurat_v3` "
        "needs, is not installed)"
        if flavor == "seurat"
        else f"`flavor={flavor!r}`"
    )
    size_table = pd.DataFrame(sizes).set_index("cell type") if sizes else pd.DataFrame()
    lines = [
        f"# trVAE count likelihoods: {name}",
        "",
        f"- **Dataset**: {name} — {adata.n_obs} cells × {adata.n_vars} genes of raw counts; "
        f"`{condition_key}`: {control} → {stimulated}; `{cell_type_key}` held out: "
        + ", ".join(cell_types),
        *_run_lines(command or "trvae.benchmark_counts.run_counts_benchmark(...)", runtime),
        f"- **Settings** (the same for the three networks): {settings_text}",
        _software_line(),
        "",
        "## Protocol",
        "",
        f"For each cell type, its {stimulated} cells were removed. On the remaining (training) "
        f"cells only, {n_top_genes} highly variable genes were chosen with scanpy's "
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
        "- `mse-residual`: the MSE model's default read-out (the cell's own profile plus the "
        "decoder's change), which has no count-likelihood counterpart.",
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
        "## Which likelihood wins",
        "",
        "The best of `nb`, `zinb` and `mse` for each cell type, with its value; the mean "
        "read-outs and the sampled read-outs compared separately. The `mean` row compares the "
        "averages over cell types.",
        "",
        _markdown(winners(df)),
        "",
        "## Cells",
        "",
    ]
    if not size_table.empty:
        lines += [_markdown(size_table.astype(str)), ""]
    lines += ["## Summary", ""]
    for metric, title, lower in SUMMARY:
        if (df["metric"] == metric).any():
            lines += [f"### {title}", "", _markdown(_table(df, metric, methods, lower)), ""]
    lines += [
        "## Files",
        "",
        "- `metrics.csv`: every metric, long format (method, cell_type, metric, value).",
        "",
    ]
    return "\n".join(lines)


def benchmark_command(args, argv: Sequence[str]) -> int:
    """``trvae benchmark kang-counts``: :func:`run_counts_benchmark` on :func:`kang_counts`."""
    from trvae import datasets
    from trvae.benchmark import DEFAULT_METHODS
    from trvae.cli import _cell_benchmark_kwargs

    if list(args.methods) != list(DEFAULT_METHODS):
        raise TRVAEError("--methods does not apply to kang-counts (it runs nb, zinb and mse)")
    run_counts_benchmark(
        datasets.kang_counts(),
        out_dir=args.out or Path("results") / "kang-counts",
        dataset_name="kang-counts (Kang et al. 2018 raw UMI counts)",
        **_cell_benchmark_kwargs(args, argv),
    )
    return 0
