"""Out-of-distribution benchmark: hold out one cell type's stimulated cells, predict them.

For every held-out cell type, every method is trained on all other cells, predicts the held-out
stimulated cells from that type's control cells, and is scored with
:func:`trvae.metrics.evaluate_prediction` on the top-100 DEGs of the real response. Results go
to ``out_dir``: ``metrics.csv`` (long format), ``figures/*.png`` and ``report.md``.
"""

from __future__ import annotations

import inspect
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

from trvae._errors import TRVAEError
from trvae._io import atomic_write_text
from trvae.data import validation as V
from trvae.metrics import (
    knn_label_accuracy,
    mixing_score,
    pca_embed,
    response_gene_scores,
    response_genes,
)
from trvae.model import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_DECODER_CONDITIONING, TRVAE
from trvae_benchmarks.baselines import METHODS, dense
from trvae_benchmarks.common import (
    BENCHMARK_MODEL,
    HeldOutRun,
    Split,
    check_inputs,
    markdown,
    n_boots,
    run_lines,
    save_fig,
    slug,
    software_line,
    summary_sections,
    summary_spec,
    table,
    timed_fit,
    torch_threads,
    train_arguments,
    warm_up,
)
from trvae_benchmarks.memory import PeakRSS

__all__ = ["BENCHMARK_MODEL", "DEFAULT_METHODS", "PeakRSS", "run_benchmark"]

DEFAULT_METHODS = ("trVAE", "CVAE", "trVAE-paper", "scGen", "mean_shift", "control")
#: Methods whose fit is preceded by an untimed warm-up fit (:func:`~.common.warm_up`).
WARM_UP_METHODS = ("trVAE", "CVAE", "scGen")
#: ``quick=True``: NK only, 3 networks x 15 epochs, about 1 minute on 2 CPU cores.
QUICK_EPOCHS = 15
#: Latent diagnostics use at most this many cells of the whole data set (seeded subsample).
DIAG_MAX_CELLS = 3000
#: Methods whose z and y are drawn as UMAPs for every held-out cell type.
UMAP_METHODS = ("trVAE", "CVAE", "trVAE-paper")
#: (metric, title, lower is better) of the specific-response and latent-diagnostics tables.
RESPONSE_SUMMARY = summary_spec(
    "specific_direction", "specific_lfc_r2", "shared_direction", "shared_lfc_r2"
)
LATENT_SUMMARY = summary_spec("mixing_y", "mixing_z", "celltype_knn_y", "celltype_knn_z")
#: (metric, title, lower is better) of the report's summary tables.
SUMMARY = summary_spec(
    "r2_mean_top100", "r2_mean_all", "r2_var_top100", "delta_pearson_top100", "edist_pca",
    "edist_top100", "wasserstein_top100", "r2_nonzero_top100", "fit_seconds", "fit_peak_rss_mb",
)  # fmt: skip


@dataclass(kw_only=True)
class _KangRun(HeldOutRun):
    """A Kang benchmark run: the methods, their arguments, the diagnostics cells, the figures."""

    methods: Sequence[str]
    kwargs: dict  # model and training arguments of every neural method
    model_kwargs: dict
    settings: dict  # as the report shows them, without the thread count
    umap: bool
    x_all: Any = None
    var_names: list[str] = field(default_factory=list)
    fig_method: str = ""
    diag_adata: AnnData | None = None
    diag_obs: pd.DataFrame | None = None
    reference: dict[str, float] = field(default_factory=dict)
    figures: dict[str, list[str]] = field(default_factory=dict)
    response_figs: dict[str, str] = field(default_factory=dict)
    latent_figs: dict[str, str] = field(default_factory=dict)
    gene_tables: list[pd.DataFrame] = field(default_factory=list)

    @property
    def figdir(self) -> Path:
        return self.out / "figures"


def run_benchmark(
    adata: AnnData,
    condition_key: str = "condition",
    cell_type_key: str = "cell_type",
    control: str = "control",
    stimulated: str = "stimulated",
    cell_types: Sequence[str] | None = None,
    out_dir: str | os.PathLike = "results/kang",
    methods: Sequence[str] = DEFAULT_METHODS,
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
    umap: bool = True,
) -> pd.DataFrame:
    """Hold out each cell type's stimulated cells in turn and score every method on them.

    Parameters
    ----------
    adata
        Log-normalised expression (``X``, or ``model_kwargs["layer"]``) with condition and
        cell-type columns in ``obs``.
    condition_key, cell_type_key
        Columns of ``adata.obs``.
    control, stimulated
        Source and target conditions.
    cell_types
        Held-out cell types, in this order; default: all, sorted.
    out_dir
        Directory for ``metrics.csv``, ``report.md`` and ``figures/``.
    methods
        Names from :data:`trvae_benchmarks.baselines.METHODS`.
    max_epochs
        Epoch budget of every neural method (default: the package's; 15 with ``quick``).
    model_kwargs, train_kwargs
        Architecture arguments (:class:`trvae.TRVAE`) and training arguments
        (:meth:`trvae.TRVAE.train`), the same for every neural method; they override
        :data:`~trvae_benchmarks.common.BENCHMARK_MODEL` and
        :data:`~trvae_benchmarks.common.BENCHMARK_TRAIN`.
    n_boot
        Bootstrap replicates of the R² SDs (default 100, or 20 with ``quick``).
    seed
        Seed of the weights, the training, the cell-type balancing and the bootstrap.
    progress_bar
        Show the per-epoch progress bars.
    quick
        Only hold out ``"NK"`` (or the first of ``cell_types``, or the first cell type), with
        the quick epoch and bootstrap budgets.
    dataset_name, command
        Shown in the report's header.
    n_threads
        torch CPU threads of the fits (default: torch's setting when called). Re-applied before
        every fit, because scanpy's DEG test resets torch's OpenMP thread count.
    umap
        Draw UMAPs of z and y of :data:`UMAP_METHODS` for every held-out cell type.

    Returns
    -------
    pandas.DataFrame
        Long format: ``method``, ``cell_type``, ``metric``, ``value``; the metrics of
        :func:`~trvae.metrics.evaluate_prediction` and
        :func:`~trvae.metrics.response_gene_scores`, ``fit_seconds``, ``fit_peak_rss_mb`` and,
        for methods with a latent space, :func:`_latent_scores` of z (and y).
    """
    start = time.perf_counter()
    run = _prepare(
        adata, (condition_key, cell_type_key, control, stimulated), cell_types, methods,
        out_dir, quick, seed, max_epochs=max_epochs, n_boot=n_boot, model_kwargs=model_kwargs,
        train_kwargs=train_kwargs, progress_bar=progress_bar, umap=umap,
    )  # fmt: skip
    warm = any(m in WARM_UP_METHODS for m in methods)
    with torch_threads(n_threads, apply=warm) as threads:
        run.n_threads = threads
        _prepare_diagnostics(run, warm)
        df = run.run_all(lambda cell_type: _score_cell_type(run, cell_type))
        bars = _summary_figures(run, df)
    runtime = time.perf_counter() - start
    _write_report(run, df, runtime, bars, dataset_name, command)
    return df


def _prepare(
    adata, keys, cell_types, methods, out_dir, quick, seed, *, max_epochs, n_boot, model_kwargs,
    train_kwargs, progress_bar, umap,
) -> _KangRun:  # fmt: skip
    """Check the inputs, resolve the budgets and arguments, make the output directories."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise TRVAEError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    conds, types, cell_types = check_inputs(adata, *keys, cell_types, quick)
    keys = (keys[0], keys[1], str(keys[2]), str(keys[3]))
    max_epochs = max_epochs or (QUICK_EPOCHS if quick else None)  # None: the package's budget
    n_boot = n_boots(n_boot, quick)
    model_kwargs = {**BENCHMARK_MODEL, **(model_kwargs or {})}
    kwargs = {**model_kwargs, **train_arguments(train_kwargs, max_epochs, seed, progress_bar)}
    settings = {
        "max_epochs": max_epochs or "package default (epoch_budget)",
        "seed": seed,
        "n_boot": n_boot,
        "quick": quick,
        **{k: v for k, v in kwargs.items() if k not in ("max_epochs", "seed", "progress_bar")},
    }
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    return _KangRun(
        adata, keys, conds, types, cell_types, out, n_boot, seed, methods=methods,
        kwargs=kwargs, model_kwargs=model_kwargs, settings=settings, umap=umap,
    )  # fmt: skip


def _prepare_diagnostics(run: _KangRun, warm: bool) -> None:
    """The expression matrix, the warm-up fit and the latent diagnostics' cells and reference."""
    adata, (condition_key, cell_type_key, _, _) = run.adata, run.keys
    run.x_all = V.get_matrix(adata, run.model_kwargs.get("layer"))
    run.var_names = [str(g) for g in adata.var_names]
    run.fig_method = "trVAE" if "trVAE" in run.methods else run.methods[0]
    if warm:
        warm_up(len(run.var_names), run.model_kwargs)
    diag = np.sort(np.random.default_rng(run.seed).permutation(adata.n_obs)[:DIAG_MAX_CELLS])
    run.diag_adata = adata[diag].copy()
    run.diag_obs = pd.DataFrame(
        {condition_key: run.conds[diag], cell_type_key: run.types[diag]},
        index=run.diag_adata.obs_names,
    )
    data_pca = pca_embed(dense(run.x_all[diag]), n_comps=50, seed=run.seed)[0]
    run.reference = _latent_scores({"pca": data_pca}, run.diag_obs, condition_key, cell_type_key)


def _score_cell_type(run: _KangRun, cell_type: str) -> Split:
    """Hold out ``cell_type``; fit, score and draw every method; write the response genes."""
    split = run.split(cell_type, run.adata, run.x_all, run.var_names)
    _, _, control, stimulated = run.keys
    x, conds = run.x_all, run.conds
    genes = response_genes(
        split.real,
        split.ctrl_x,
        dense(x[np.flatnonzero(~split.is_type & (conds == stimulated))]),
        dense(x[np.flatnonzero(~split.is_type & (conds == control))]),
        run.var_names,
    )
    run.gene_tables.append(genes[genes["de"]].reset_index().assign(cell_type=cell_type))
    lfc_preds: dict[str, np.ndarray] = {}
    embeddings: dict[str, np.ndarray] = {}
    for name in run.methods:
        pred, embs = _fit_and_score(run, split, genes, name)
        if name in UMAP_METHODS:
            embeddings.update({f"{name} {k}": v for k, v in embs.items()})
        if name != "control":
            lfc_preds[name] = pred
    _response_figures(run, split, genes, lfc_preds, embeddings)
    atomic_write_text(
        run.out / "response_genes.csv", pd.concat(run.gene_tables).to_csv(index=False)
    )
    return split


def _fit_and_score(
    run: _KangRun, split: Split, genes: pd.DataFrame, name: str
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Fit method ``name`` and score it and its read-outs; (its prediction, its embeddings)."""
    condition_key, cell_type_key, _, stimulated = run.keys
    method = run.make(name, **run.kwargs)
    torch.set_num_threads(run.n_threads)  # scanpy's DEG test resets it
    fit_s, rss_mb = timed_fit(method.fit, split.train)
    pred = method.predict(split.ctrl)
    variants = method.variants(split.ctrl) if hasattr(method, "variants") else {}
    embs = method.embeddings(run.diag_adata)
    for label, p in {name: pred, **variants}.items():
        scores = run.evaluate(p, split)
        scores.update(response_gene_scores(p, split.real, split.ctrl_x, genes))
        scores.update(fit_seconds=fit_s, fit_peak_rss_mb=rss_mb)
        if label == name:
            scores.update(_latent_scores(embs, run.diag_obs, condition_key, cell_type_key))
        run.add(label, split.cell_type, scores)
    if name == run.fig_method:
        run.figures[split.cell_type] = _cell_type_figures(
            run.figdir, split.cell_type, name, stimulated, pred, split.real, split.ctrl_x,
            run.var_names, split.degs,
        )  # fmt: skip
    return pred, embs


def _cell_type_figures(
    figdir, cell_type, method, stimulated, pred, real, ctrl_x, var_names, degs
) -> list[str]:
    """Mean and variance scatter (DEGs labelled) and violins of the top-3 DEGs; file names."""
    from trvae import pl

    name, title = slug(cell_type), f"{method}, {cell_type}: predicted vs real {stimulated}"
    return [
        save_fig(
            pl.mean_scatter(pred, real, var_names, degs, title=title),
            figdir / f"{name}_mean_scatter.png",
        ),
        save_fig(
            pl.var_scatter(pred, real, var_names, degs, title=title),
            figdir / f"{name}_var_scatter.png",
        ),
        save_fig(
            pl.response_violin(ctrl_x, pred, real, var_names, degs[:3]),
            figdir / f"{name}_violin.png",
        ),
    ]


def _response_figures(run: _KangRun, split: Split, genes, lfc_preds, embeddings) -> None:
    """The held-out cell type's logFC scatter and UMAPs of the latent spaces."""
    from trvae import pl

    condition_key, cell_type_key, _, stimulated = run.keys
    cell_type = split.cell_type
    name = slug(cell_type)
    if lfc_preds:
        run.response_figs[cell_type] = save_fig(
            pl.logfc_scatter(
                lfc_preds,
                split.real,
                split.ctrl_x,
                genes,
                title=f"{cell_type}: response genes, predicted vs real logFC",
            ),
            run.figdir / f"{name}_logfc.png",
        )
    if run.umap and embeddings:
        run.latent_figs[cell_type] = save_fig(
            pl.embedding_grid(
                embeddings,
                run.diag_obs,
                [condition_key, cell_type_key],
                seed=run.seed,
                title=f"held out: {stimulated} {cell_type}",
            ),
            run.figdir / f"{name}_latent_umap.png",
        )


def _summary_figures(run: _KangRun, df: pd.DataFrame) -> list[str]:
    """Bar charts of the top-100 R² and the PCA E-distance; file names."""
    from trvae import pl

    return [
        save_fig(pl.r2_bars(df, metric), run.figdir / f"{metric}.png")
        for metric in ("r2_mean_top100", "edist_pca")
    ]


def _write_report(run: _KangRun, df, runtime, bars, dataset_name, command) -> None:
    """Write ``report.md`` and print the top-100 R² summary."""
    settings = {**run.settings, "torch_threads": run.n_threads}
    lines = [
        *_header(run, dataset_name, command, runtime, settings),
        *_how_to_read(run),
        *summary_sections(df, SUMMARY, run.scored),
        *_figure_lines(run, bars),
        *_specific_response_lines(run, df),
        *_latent_lines(run, df),
        "## Files",
        "",
        "- `metrics.csv`: every metric, long format (method, cell_type, metric, value).",
        "- `response_genes.csv`: every held-out cell type's DE genes and their class.",
        "",
    ]
    atomic_write_text(run.out / "report.md", "\n".join(lines))
    summary = table(df, "r2_mean_top100", run.scored, lower=False).map(lambda s: s.strip("*"))
    print(f"\nr2_mean_top100 (held-out {run.keys[3]} cells; {runtime:.0f}s total)")
    print(summary.to_string())
    print(f"wrote {run.out / 'metrics.csv'}, {run.out / 'report.md'} and {run.figdir}/")


def _architecture(settings: dict) -> tuple[str, str]:
    """The network's arguments (defaults filled in) and the other settings, as text."""
    defaults = {
        k: p.default
        for k, p in inspect.signature(TRVAE.__init__).parameters.items()
        if k in ("likelihood", "n_latent", "n_hidden", "n_mmd", "alpha", "beta", "dropout")
    }
    arch = {**defaults, **{k: v for k, v in settings.items() if k in defaults}}
    if arch.get("alpha") is None:
        arch["alpha"] = DEFAULT_ALPHA[arch.get("likelihood") or "mse"]
    if arch.get("beta") is None:  # trVAE groups its MMD by cell type (trVAE-paper: 100)
        arch["beta"] = DEFAULT_BETA[arch.get("likelihood") or "mse", True]
    arch.setdefault("decoder_conditioning", DEFAULT_DECODER_CONDITIONING[True])
    arch_text = ", ".join(f"{k}={v}" for k, v in arch.items())
    other = ", ".join(f"{k}={v}" for k, v in settings.items() if k not in defaults)
    return arch_text, other


def _header(run: _KangRun, dataset_name, command, runtime, settings) -> list[str]:
    """The report's title and its header list."""
    arch_text, other = _architecture(settings)
    return [
        f"# trVAE benchmark: {dataset_name or 'AnnData'}",
        "",
        run.dataset_line(dataset_name or "AnnData"),
        *run_lines(command or "trvae_benchmarks.kang.run_benchmark(...)", runtime),
        f"- **Settings**: {other}",
        "- **Architecture** (all neural methods; trVAE compares the conditions within cell "
        "types in its MMD, CVAE sets beta=0, trVAE-paper is the paper's network: condition in "
        "the decoder's first layer only, pooled biased MMD, beta=100; scGen has no condition "
        f"input): {arch_text}",
        software_line(),
        f"- **Methods**: {', '.join(run.scored)}",
        "",
    ]


def _how_to_read(run: _KangRun) -> list[str]:
    _, _, control, stimulated = run.keys
    return [
        "## How to read",
        "",
        f"For each cell type, its {stimulated} cells were removed from training; every method then "
        f"predicted them from that cell type's {control} cells. Metrics compare prediction and "
        "real cells on the top-100 differentially expressed genes (Wilcoxon, real "
        f"{stimulated} vs {control} of that cell type) or on all genes. R² and Pearson r: higher "
        "is better (1 is perfect). E-distance: lower is better (0 means the predicted and real "
        "cells are distributed alike). Compare every method with the `control` column, which "
        "is doing nothing (predicting the unstimulated cells): a method is only useful where "
        "it beats it. `mean_shift` adds the average response of the other cell types. The "
        "best value of each row is in bold; the `mean` row averages over cell types. Fit time is "
        "wall time; peak memory is the largest rise of the process's resident memory during "
        "the fit (sampled every 20 ms).",
        "",
        "## Summary",
        "",
    ]


def _figure_lines(run: _KangRun, bars: list[str]) -> list[str]:
    """The report's figures: the summary bars, then each held-out cell type's figures."""
    control = run.keys[2]
    lines = ["## Figures", ""]
    lines += [f"![{name}](figures/{name})" for name in bars] + [""]
    for cell_type, names in run.figures.items():
        lines += [
            f"### {cell_type} ({run.fig_method})",
            "",
            "Per-gene mean and variance, predicted (x) vs real (y), top-100 DEGs in red; "
            f"violins of the top-3 response genes ({control} / {run.fig_method} / real).",
            "",
            " ".join(f"![{n}](figures/{n})" for n in names[:2]),
            "",
            f"![{names[2]}](figures/{names[2]})",
            "",
        ]
    return lines


def _latent_scores(
    embeddings: dict[str, np.ndarray], obs: pd.DataFrame, condition_key: str, cell_type_key: str
) -> dict[str, float]:
    """Condition mixing and cell-type kNN accuracy of each embedding (``mixing_z``, ...)."""
    out = {}
    for space, emb in embeddings.items():
        out[f"mixing_{space}"] = mixing_score(emb, obs[condition_key])
        out[f"celltype_knn_{space}"] = knn_label_accuracy(emb, obs[cell_type_key])
    return out


def _verdicts(df: pd.DataFrame, metric: str, ref: str, others: Sequence[str]) -> list[str]:
    """One line per baseline: the cell types where ``ref`` scores higher on ``metric``, and not."""
    rows = df[df["metric"] == metric]
    wide = rows.pivot_table(index="cell_type", columns="method", values="value", sort=False)
    lines = []
    for other in others:
        if ref not in wide or other not in wide:
            continue
        both = wide[[ref, other]].dropna()
        diff = both[ref] - both[other]
        wins, ties, losses = (
            [str(t) for t in both.index[mask]] for mask in (diff > 0, diff == 0, diff < 0)
        )
        lines.append(
            f"- `{metric}`: {ref} beats {other} on {len(wins)} of {len(both)} cell types"
            + (f" ({', '.join(wins)})" if wins else "")
            + (f"; ties on {', '.join(ties)}" if ties else "")
            + (f"; loses on {', '.join(losses)}" if losses else "")
            + "."
        )
    return lines


def _specific_response_lines(run: _KangRun, df: pd.DataFrame) -> list[str]:
    """Report section of the cell-type-specific and shared response genes."""
    _, _, control, stimulated = run.keys
    methods = run.scored
    genes = pd.concat(run.gene_tables)
    de = genes[genes["de"]]
    counts = (
        de.assign(kind=np.where(de["response"] == "specific", de["reason"], "shared"))
        .groupby(["cell_type", "kind"], sort=False)
        .size()
        .unstack(fill_value=0)
    )
    counts = counts.reindex(columns=["shared", "only_here", "opposite", "weaker_elsewhere"])
    counts = counts.fillna(0).astype(int)
    baselines = [m for m in ("CVAE", "scGen", "mean_shift") if m in methods]
    lines = [
        "## Cell-type-specific responses",
        "",
        "For each held-out cell type, genes differentially expressed between its real "
        f"{stimulated} and {control} cells (Wilcoxon, Benjamini-Hochberg adjusted p < 0.05, "
        "|logFC| >= 0.25, logFC = difference of mean log1p expression) are **specific** when "
        "the pooled response of the other cell types differs: not DE there (`only_here`), DE "
        "with the opposite sign (`opposite`), or DE with under half the magnitude "
        "(`weaker_elsewhere`); the rest are **shared** (`trvae.metrics.response_genes`). For "
        "each class: the fraction of genes whose predicted logFC (prediction minus control "
        "means) has the real sign, and the R² of predicted vs real logFC. Tables with fewer "
        "than 3 genes of a class show –.",
        "",
        "Number of DE genes per class:",
        "",
        markdown(counts),
        "",
        *summary_sections(df, RESPONSE_SUMMARY, methods),
        "Where trVAE beats the baselines and where it does not:",
        "",
    ]
    for metric in ("specific_lfc_r2", "specific_direction"):
        lines += _verdicts(df, metric, "trVAE", baselines)
    lines += [""]
    return lines + [f"![{t} logFC](figures/{name})" for t, name in run.response_figs.items()] + [""]


def _latent_lines(run: _KangRun, df: pd.DataFrame) -> list[str]:
    """Report section of the latent diagnostics (none without a method with a latent space)."""
    condition_key, cell_type_key, _, _ = run.keys
    latent = [m for m in run.scored if df[(df.method == m) & (df.metric == "mixing_z")].shape[0]]
    if not latent:
        return []
    lines = [
        "## Latent diagnostics",
        "",
        f"Every cell of the data set (at most {DIAG_MAX_CELLS}, seeded) is encoded with "
        "its own condition (z = posterior mean) and decoded to the MMD layer y with it. "
        f"Condition mixing (`{condition_key}`): mean entropy of the condition labels among "
        "each cell's 30 nearest neighbours over the entropy of the overall labels (1 = as "
        f"mixed as possible, 0 = separated). Cell-type kNN accuracy (`{cell_type_key}`): "
        "leave-one-out 15-nearest-neighbour vote (1 = cell types kept apart). trVAE's MMD "
        "term should raise mixing in y compared with the CVAE (beta = 0) while keeping the "
        "cell types apart; `trVAE-paper` shows the paper's network, whose decoder sees the "
        "condition only through y, so that mixing y would erase the transfer. For "
        "reference, a "
        "50-component PCA of the same cells' expression scores condition mixing "
        f"{run.reference['mixing_pca']:.3f} and cell-type kNN accuracy "
        f"{run.reference['celltype_knn_pca']:.3f}.",
        "",
        *summary_sections(df, LATENT_SUMMARY, latent),
    ]
    for ref in ("trVAE", "trVAE-paper"):
        for metric in ("mixing_y", "celltype_knn_y"):
            lines += _verdicts(df, metric, ref, [m for m in ("CVAE",) if m in latent])
    latent_figs = [f"![{t} latent UMAP](figures/{name})" for t, name in run.latent_figs.items()]
    return [*lines, "", *latent_figs, ""]
