"""Generalisation suite: leave-one-group-out on every development set, trVAE vs mean shifts.

For every data set and every group (cell type) that has both conditions (at least
:data:`MIN_CELLS` cells per condition on real data), the group's perturbed cells are held out,
the methods are trained on all other cells, predict the held-out cells from the group's control
cells and are scored against the real held-out cells with
:func:`trvae.metrics.evaluate_prediction` on the top-100 DEGs of the real response (Wilcoxon,
real perturbed vs control cells of that group, as in :mod:`trvae_benchmarks.kang`). With more
than one perturbation (``three_conditions``) all perturbed cells of the group are held out and
each perturbation is predicted from the control cells: one scored row per (group,
perturbation), named ``"group:perturbation"``.

Methods (:data:`METHODS`):

- ``trVAE``: exactly what a user gets, ``trvae.TRVAE(train, condition_key=K,
  mmd_group_key=G).train(seed=0, progress_bar=False)`` with the package defaults (``quick``
  lowers ``max_epochs`` only), ``predict(control, target_condition=...)`` default read-out;
- ``CVAE``: the same with ``beta=0``;
- ``mean shift (other groups)``: control + mean(target) - mean(control) over the training
  groups that have both conditions; ``mean shift (all cells)``: the same over all training
  cells; ``best mean shift``: the better of the two *per metric* and held-out row;
- ``control``: the control cells unchanged;
- ``identifiable ceiling`` (synthetic sets only, :func:`identifiable_ceiling`): the
  control cells moved by the expected change under the other groups' mean *true* response, the
  best mean response a method can be expected to predict when the held-out group's own
  response is not in the training data. Rows where it does not beat the best mean shift on
  Pearson-Δ are out of reach (:func:`~trvae_benchmarks.suite_scores.within_reach`).

Data sets (:data:`SETS`): ``kang`` (:func:`trvae.datasets.kang_pbmc`, log1p), ``kang-counts``
(:func:`trvae.datasets.kang_counts` log-normalised with :func:`trvae.pp.log_normalize` over
:data:`N_HVG` highly variable genes chosen on the training cells of each split), the synthetic
scenarios of :data:`trvae.datasets.SCENARIOS`, and any user file (:func:`file_set`).
Check sets (:data:`CHECKS`, run only when named): real tasks no default was chosen on,
``kang-reverse`` (the Kang scGen file predicted the other way, control cells from stimulated
ones), ``kang-fine`` (the Kang counts file held out by its finer Seurat labels,
``cell_type_fine``, cells without one left out) and ``kang-allgenes`` (the Kang counts file
log-normalised over every gene, no gene selection).

Results go to ``out_dir``: ``metrics.csv`` (long format: set, row, group, perturbation, method,
metric, value), ``report.md`` and ``figures/``. The report's text helpers are in
:mod:`trvae_benchmarks.suite_report`.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from trvae import TRVAE, datasets
from trvae._errors import TRVAEError
from trvae._io import read_h5ad
from trvae.data import validation as V
from trvae.datasets import SCENARIOS, simulate_perturbation
from trvae.metrics import evaluate_prediction
from trvae.pp import log_normalize
from trvae_benchmarks.baselines import dense, make_method
from trvae_benchmarks.common import (
    N_BOOT,
    blas_threads,
    select_degs,
    timed_fit,
    torch_threads,
    warm_up,
    write_metrics,
)
from trvae_benchmarks.suite_scores import (
    ASSESSED_NAME,
    BEST,
    CEILING,
    CHECKS,
    COLUMNS,
    CVAE_NAME,
    DEFAULTS_PARAGRAPH,
    METHODS,
    MS_ALL,
    MS_GROUPS,
    TRVAE_NAME,
    add_best_mean_shift,
    compare,
    headline,
    win_tie_lose,
)

__all__ = [
    "ASSESSED_NAME",
    "BEST",
    "CHECKS",
    "DEFAULTS_PARAGRAPH",
    "METHODS",
    "SETS",
    "DevSet",
    "Fold",
    "add_best_mean_shift",
    "compare",
    "counts_set",
    "eligible_groups",
    "file_set",
    "headline",
    "hold_out",
    "load_set",
    "run_suite",
    "win_tie_lose",
]

#: Data sets of a full run, in report order.
SYNTHETIC = tuple(SCENARIOS)
SETS = ("kang", "kang-counts", *SYNTHETIC)
#: Cells per condition a group of a real data set needs to be held out (synthetic: 2).
MIN_CELLS = 30
#: Highly variable genes of ``kang-counts``, chosen on each split's training cells.
N_HVG = 2000
#: ``quick=True``: held-out groups per set, the epoch budget (the only training setting the
#: suite ever changes), bootstrap replicates and the synthetic sets' size.
QUICK_GROUPS, QUICK_EPOCHS, QUICK_N_BOOT = 2, 20, 10
QUICK_SIM = {"n_genes": 200, "cells_per_group": 100}
#: torch and BLAS threads unless told: on a 2-core machine shared with other jobs one thread is
#: several times faster than two for these small networks (the quick run's 10-epoch fits took
#: 3-50 s with two threads under load, against ~2 s with one).
SUITE_THREADS = 1


# ---------------------------------------------------------------------------------------------
# Data sets


@dataclass
class DevSet:
    """One data set of the suite: labels, the groups to hold out, how a fold's data is made.

    ``fold_data(train_mask)`` returns the fold's AnnData (log-normalised ``X``, the same cells
    as ``adata``) given the cells training may look at; ``None``: ``adata`` itself.
    """

    name: str
    adata: AnnData
    condition_key: str
    group_key: str
    control: str
    perturbations: list[str]
    groups: list[str]
    min_cells: int
    description: str
    fold_data: Callable[[np.ndarray], AnnData] | None = None
    truth: AnnData | None = None  # a synthetic set as simulated (its uns["simulation"])

    @property
    def conds(self) -> np.ndarray:
        return self.adata.obs[self.condition_key].astype(str).to_numpy()

    @property
    def group_labels(self) -> np.ndarray:
        return self.adata.obs[self.group_key].astype(str).to_numpy()


def _minimal(adata: AnnData, condition_key: str, group_key: str) -> AnnData:
    """``adata`` with only the condition and group columns in ``obs`` (string categories)."""
    conds = V.check_obs_key(adata, condition_key).astype(str)
    groups = V.check_obs_key(adata, group_key, "group_key").astype(str)
    obs = pd.DataFrame(
        {condition_key: pd.Categorical(conds), group_key: pd.Categorical(groups)},
        index=adata.obs_names.astype(str),
    )
    out = AnnData(adata.X, obs=obs, var=pd.DataFrame(index=adata.var_names.astype(str)))
    out.layers.update({k: v for k, v in adata.layers.items()})
    return out


def eligible_groups(
    conds: np.ndarray,
    groups: np.ndarray,
    control: str,
    perturbations: Sequence[str],
    min_cells: int,
) -> list[str]:
    """Groups with ``min_cells`` control cells and ``min_cells`` cells of a perturbation, sorted."""
    table = pd.crosstab(groups, conds)
    ok = table.get(control, 0) >= min_cells
    ok &= np.logical_or.reduce([table.get(p, 0) >= min_cells for p in perturbations])
    return sorted(str(g) for g in table.index[ok])


def _make_set(
    name, adata, condition_key, group_key, control, min_cells, description, fold_data=None,
    groups=None,
) -> DevSet:  # fmt: skip
    """Check the labels and pick the perturbations (every non-control condition) and groups."""
    V.check_adata(adata)
    control = str(control)
    conds = V.check_obs_key(adata, condition_key).astype(str)
    labels = V.check_obs_key(adata, group_key, "group_key").astype(str)
    if not (conds == control).any():
        raise TRVAEError(
            f"{name}: no cells with {condition_key} == {control!r} (conditions: "
            f"{', '.join(map(repr, sorted(conds.unique())))})"
        )
    perturbations = sorted(set(conds) - {control})
    if not perturbations:
        raise TRVAEError(f"{name}: no condition other than the control {control!r}")
    found = eligible_groups(conds.to_numpy(), labels.to_numpy(), control, perturbations, min_cells)
    if groups is not None:
        unknown = sorted(set(map(str, groups)) - set(found))
        if unknown:
            raise TRVAEError(f"{name}: groups {unknown} cannot be held out (eligible: {found})")
        found = [str(g) for g in groups]
    if not found:
        raise TRVAEError(
            f"{name}: no {group_key} group has {min_cells} cells of {control!r} and of a "
            "perturbation"
        )
    return DevSet(
        name, adata, condition_key, group_key, control, perturbations, found, min_cells,
        description, fold_data,
    )  # fmt: skip


def counts_set(
    name: str,
    counts: AnnData,
    condition_key: str = "condition",
    group_key: str = "cell_type",
    control: str = "control",
    n_top_genes: int | None = N_HVG,
    min_cells: int = MIN_CELLS,
    description: str = "",
) -> DevSet:
    """A raw-count data set: each fold selects ``n_top_genes`` HVGs on its training cells only
    (:func:`trvae_benchmarks.kang_counts.training_hvgs`), then log-normalises their counts;
    ``n_top_genes=None`` keeps every gene (log-normalised once, as a user without a gene
    selection would)."""
    from scipy import sparse

    from trvae_benchmarks.kang_counts import hvg_flavor, training_hvgs

    counts = _minimal(counts, condition_key, group_key)
    x_all = counts.X
    x_all = sparse.csr_matrix(x_all) if sparse.issparse(x_all) else np.asarray(x_all)
    text = description or f"{counts.n_obs} cells × {counts.n_vars} genes of raw counts"
    if n_top_genes is None:
        logged = AnnData(log_normalize(x_all), obs=counts.obs.copy(), var=counts.var.copy())
        text += "; every gene, log-normalised"
        return _make_set(name, logged, condition_key, group_key, control, min_cells, text)
    flavor = hvg_flavor()
    index = pd.Index(counts.var_names)

    def fold_data(train_mask: np.ndarray) -> AnnData:
        genes = training_hvgs(counts, train_mask, n_top_genes, flavor)
        sub = x_all[:, index.get_indexer(genes)]
        return AnnData(log_normalize(sub), obs=counts.obs.copy(), var=pd.DataFrame(index=genes))

    text += f"; {n_top_genes} HVGs ({flavor}) chosen on each split's training cells, log-normalised"
    return _make_set(name, counts, condition_key, group_key, control, min_cells, text, fold_data)


def file_set(
    path: str | os.PathLike | AnnData,
    condition_key: str = "condition",
    group_key: str = "cell_type",
    control: str = "control",
    min_cells: int = MIN_CELLS,
    name: str | None = None,
) -> DevSet:
    """A user's data set (``X`` log-normalised); every non-control condition is a perturbation."""
    adata = path if isinstance(path, AnnData) else read_h5ad(path)
    name = name or (Path(path).stem if not isinstance(path, AnnData) else "data")
    adata = _minimal(adata, condition_key, group_key)
    text = f"{adata.n_obs} cells × {adata.n_vars} genes, X as given (log-normalised expected)"
    return _make_set(name, adata, condition_key, group_key, control, min_cells, text)


def load_set(name: str, quick: bool = False, sim_settings: dict | None = None) -> DevSet:
    """The development set or check ``name`` of :data:`SETS` or :data:`CHECKS` (``quick``:
    smaller synthetic sets)."""
    if name == "kang-reverse":
        adata = _minimal(datasets.kang_pbmc(), "condition", "cell_type")
        text = (
            f"Kang et al. PBMCs, scGen preprocessing, predicted the other way (control cells "
            f"from stimulated ones): {adata.n_obs} cells × {adata.n_vars} genes, log1p"
        )
        return _make_set(name, adata, "condition", "cell_type", "stimulated", MIN_CELLS, text)
    if name == "kang-fine":
        counts = datasets.kang_counts()
        fine = counts.obs["cell_type_fine"].astype(str)
        counts = counts[~fine.isin(["nan", "None", ""]).to_numpy()].copy()
        text = (
            f"Kang et al. raw UMI counts, held out by the finer Seurat labels "
            f"(`cell_type_fine`; cells without one left out): {counts.n_obs} cells × "
            f"{counts.n_vars} genes"
        )
        return counts_set(name, counts, group_key="cell_type_fine", description=text)
    if name == "kang-allgenes":
        counts = datasets.kang_counts()
        text = (
            f"Kang et al. raw UMI counts as a user without a gene selection hands them over: "
            f"{counts.n_obs} cells × {counts.n_vars} genes"
        )
        return counts_set(name, counts, n_top_genes=None, description=text)

    if name == "kang":
        adata = _minimal(datasets.kang_pbmc(), "condition", "cell_type")
        text = (
            f"Kang et al. PBMCs, scGen preprocessing: {adata.n_obs} cells × {adata.n_vars} "
            "genes, log1p"
        )
        return _make_set(name, adata, "condition", "cell_type", "control", MIN_CELLS, text)
    if name == "kang-counts":
        counts = datasets.kang_counts()
        text = f"Kang et al. raw UMI counts: {counts.n_obs} cells × {counts.n_vars} genes"
        return counts_set(name, counts, description=text)
    if name not in SCENARIOS:
        raise TRVAEError(f"unknown data set {name!r}; known: {', '.join(SETS + CHECKS)}")
    settings = dict(QUICK_SIM) if quick else {}
    sizes = SCENARIOS[name].group_sizes
    if quick and sizes is not None:  # scale the unequal groups down with the others
        settings.pop("cells_per_group")
        settings["group_sizes"] = tuple(max(10, s // 3) for s in sizes)
    settings.update(sim_settings or {})
    group_key = "donor" if SCENARIOS[name].n_states else "cell_type"
    simulated = simulate_perturbation(name, **settings)
    adata = _minimal(simulated, "condition", group_key)
    extra = ", ".join(f"{k}={v}" for k, v in settings.items())
    text = (
        f"simulate_perturbation({name!r}{', ' + extra if extra else ''}): {adata.n_obs} cells × "
        f"{adata.n_vars} genes, log-normalised"
    )
    ds = _make_set(name, adata, "condition", group_key, "control", 2, text)
    ds.truth = simulated
    return ds


def identifiable_ceiling(ds: DevSet, fold: Fold, perturbation: str) -> np.ndarray | None:
    """:data:`~trvae_benchmarks.suite_scores.CEILING` of a fold (``None`` without a known
    truth): the held-out group's source cells plus the expected change of its mean
    log-expression (:func:`trvae.datasets.expected_log_means`, the same cells drawn with and
    without the effect) under the mean of the other groups' true responses (with donors: per
    state, in the held-out donor's own state proportions)."""
    if ds.truth is None:
        return None
    conditions = list(ds.truth.obs["condition"].cat.categories)
    # groups (x states with donors) x conditions x genes
    effects = np.asarray(ds.truth.uns["simulation"]["true_log_effect"], dtype=np.float64)
    to, source = conditions.index(perturbation), conditions.index(ds.control)
    response = np.take(effects, to, axis=-2) - np.take(effects, source, axis=-2)
    held = list(ds.truth.obs[ds.group_key].cat.categories).index(fold.group)
    others = np.delete(response, held, axis=0).mean(0)
    moved = datasets.expected_log_means(ds.truth, fold.group, others)
    still = datasets.expected_log_means(ds.truth, fold.group, np.zeros_like(others))
    genes = ds.truth.var_names.get_indexer(fold.var_names)
    return fold.ctrl_x + (moved - still)[genes][None].astype(fold.ctrl_x.dtype)


# ---------------------------------------------------------------------------------------------
# Folds


@dataclass
class Fold:
    """One held-out group: training and source cells, and per perturbation the real cells."""

    group: str
    held: np.ndarray  # mask of the held-out cells (the group's perturbed cells)
    train: AnnData
    ctrl: AnnData
    ctrl_x: np.ndarray
    var_names: list[str]
    real: dict[str, np.ndarray]  # perturbation -> real held-out cells
    skipped: list[str] = field(default_factory=list)  # perturbations not in training


def hold_out(ds: DevSet, group: str) -> Fold:
    """Hold out ``group``'s perturbed cells (all perturbations) of ``ds``."""
    conds, labels = ds.conds, ds.group_labels
    in_group = labels == group
    held = in_group & (conds != ds.control)
    data = ds.fold_data(~held) if ds.fold_data is not None else ds.adata
    train = data[~held].copy()
    ctrl_mask = in_group & (conds == ds.control)
    ctrl = data[ctrl_mask].copy()
    x = data.X
    var_names = [str(g) for g in data.var_names]
    trained = set(conds[~held])
    real, skipped = {}, []
    for p in ds.perturbations:
        cells = in_group & (conds == p)
        if cells.sum() < ds.min_cells:
            continue
        if p not in trained:
            skipped.append(p)
            continue
        real[p] = dense(x[np.flatnonzero(cells)])
    return Fold(
        group, held, train, ctrl, dense(x[np.flatnonzero(ctrl_mask)]), var_names, real, skipped
    )


def iter_folds(dev: Sequence[DevSet]) -> Iterator[tuple[int, DevSet, str, Fold, float]]:
    """(number, set, group, fold, start time) of every held-out group of ``dev``, in order; the
    start time is taken before the fold's data are made (for timing the split)."""
    k = 0
    for ds in dev:
        for group in ds.groups:
            k += 1
            gc.collect()
            t0 = time.perf_counter()
            yield k, ds, group, hold_out(ds, group), t0


def row_name(ds: DevSet, group: str, perturbation: str) -> str:
    """``group`` with one perturbation, else ``group:perturbation``."""
    return group if len(ds.perturbations) == 1 else f"{group}:{perturbation}"


@dataclass
class _Config:
    train_kw: dict
    seed: int
    n_boot: int
    n_threads: int
    assess: bool
    max_epochs: int | None


def _fit_networks(ds: DevSet, fold: Fold, cfg: _Config) -> dict[str, tuple[TRVAE, float]]:
    """trVAE and CVAE as a user builds them (package defaults; CVAE: beta=0); (model, seconds)."""
    out = {}
    for name, extra in ((TRVAE_NAME, {}), (CVAE_NAME, {"beta": 0.0})):
        torch.set_num_threads(cfg.n_threads)  # scanpy's DEG test resets it
        kw = {"seed": cfg.seed} if cfg.seed != 0 else {}
        model = TRVAE(
            fold.train, condition_key=ds.condition_key, mmd_group_key=ds.group_key, **kw, **extra
        )
        seconds, _ = timed_fit(model.train, rss=False, **cfg.train_kw)
        out[name] = (model, seconds)
    return out


def _assess(model: TRVAE, ds: DevSet, cfg: _Config) -> tuple[pd.DataFrame, float]:
    """``model.assess(group_key=G, n_groups=3, seed=0)`` and its run time; its refits get the
    suite's ``max_epochs`` when one is set. When it cannot run (e.g. fewer than two groups with
    both conditions are left in training) an empty table whose verdict says why."""
    torch.set_num_threads(cfg.n_threads)
    start = time.perf_counter()
    extra = {} if cfg.max_epochs is None else {"max_epochs": cfg.max_epochs}
    try:
        result = model.assess(
            group_key=ds.group_key, n_groups=3, control=ds.control, seed=cfg.seed, **extra
        )
    except TRVAEError as err:
        result = pd.DataFrame({"delta_pearson": []})
        result.attrs["verdict"] = f"assess failed: {err}"
    return result, time.perf_counter() - start


def _assess_median(result: pd.DataFrame, perturbation: str) -> float:
    """Median pseudo-held-out Pearson-Δ, of ``perturbation``'s rows when the table says which
    (and of the rows at the model's own anchor, ``own``, when it says which)."""
    if "own" in result.columns:
        result = result[result["own"].astype(bool)]
    for col in ("perturbation", "target_condition", "target", "condition"):
        if col in result.columns and (result[col].astype(str) == perturbation).any():
            result = result[result[col].astype(str) == perturbation]
            break
    values = pd.to_numeric(result["delta_pearson"], errors="coerce")
    return float(values.median()) if values.notna().any() else float("nan")


def _score_fold(ds: DevSet, fold: Fold, cfg: _Config, rows: list, assessed: list) -> dict:
    """Fit, predict and score every method on one fold; returns the fold's timings."""
    start = time.perf_counter()
    nets = _fit_networks(ds, fold, cfg)
    timing = {
        "set": ds.name,
        "group": fold.group,
        "training cells": fold.train.n_obs,
        "source cells": fold.ctrl.n_obs,
        "held-out cells": int(fold.held.sum()),
        **{f"{name} fit (s)": s for name, (_, s) in nets.items()},
    }
    assess_result, chosen = None, None
    if cfg.assess:  # the default row keeps the default anchor; the assessed row takes the choice
        model = nets[TRVAE_NAME][0]
        default = model.init_params["anchor"]
        assess_result, timing["assess (s)"] = _assess(model, ds, cfg)
        chosen, model.init_params["anchor"] = model.init_params["anchor"], default
    score_start = time.perf_counter()
    for p, real in fold.real.items():
        row = row_name(ds, fold.group, p)
        keys = {"set": ds.name, "row": row, "group": fold.group, "perturbation": p}
        degs = select_degs(real, fold.ctrl_x, fold.var_names, p, ds.control)
        preds: dict[str, tuple[np.ndarray, float]] = {}
        for name, (model, seconds) in nets.items():
            preds[name] = (dense(model.predict(fold.ctrl, target_condition=p).X), seconds)
        if chosen is not None:
            model, seconds = nets[TRVAE_NAME]
            pred = model.predict(fold.ctrl, target_condition=p, anchor=chosen)
            preds[ASSESSED_NAME] = (dense(pred.X), seconds + timing["assess (s)"])
        for name, group_key in ((MS_GROUPS, ds.group_key), (MS_ALL, None), ("control", None)):
            kind = "control" if name == "control" else "mean_shift"
            method = make_method(
                kind, condition_key=ds.condition_key, control=ds.control, stimulated=p,
                cell_type_key=group_key,
            )  # fmt: skip
            seconds, _ = timed_fit(method.fit, fold.train, rss=False)
            preds[name] = (method.predict(fold.ctrl), seconds)
        ceiling = identifiable_ceiling(ds, fold, p)
        if ceiling is not None:
            preds[CEILING] = (ceiling, 0.0)
        for name, (pred, seconds) in preds.items():
            scores = evaluate_prediction(
                pred, real, fold.ctrl_x, fold.var_names, degs, n_boot=cfg.n_boot, seed=cfg.seed
            )
            scores["fit_seconds"] = seconds
            if name == ASSESSED_NAME:
                scores["assess_anchor"] = chosen
            if name == TRVAE_NAME and assess_result is not None:
                scores["assess_delta_pearson"] = _assess_median(assess_result, p)
                verdict = assess_result.attrs.get("verdict", "")
                assessed.append(
                    {**keys, "assess": scores["assess_delta_pearson"], "verdict": verdict}
                )
            rows += [
                {**keys, "method": name, "metric": k, "value": float(v)} for k, v in scores.items()
            ]
    timing["scoring (s)"] = time.perf_counter() - score_start
    timing["fold (s)"] = time.perf_counter() - start
    return timing


# ---------------------------------------------------------------------------------------------
# Comparisons


def run_suite(
    sets: Sequence[str] | None = None,
    data: str | os.PathLike | AnnData | None = None,
    condition_key: str = "condition",
    group_key: str = "cell_type",
    control: str = "control",
    out_dir: str | os.PathLike = "results/suite",
    quick: bool = False,
    assess: bool = False,
    max_epochs: int | None = None,
    n_boot: int | None = None,
    seed: int = 0,
    min_cells: int = MIN_CELLS,
    n_groups: int | None = None,
    n_threads: int | None = None,
    sim_settings: dict | None = None,
    progress_bar: bool = False,
    command: str | None = None,
) -> pd.DataFrame:
    """Leave-one-group-out on every set; write ``metrics.csv``, ``report.md`` and figures.

    Parameters
    ----------
    sets
        Names from :data:`SETS` or :data:`CHECKS`; default: all of :data:`SETS`, or none when
        ``data`` is given (the synthetic ones with ``quick``).
    data, condition_key, group_key, control
        A user's ``.h5ad`` file (or AnnData) with log-normalised ``X``; every condition other
        than ``control`` is a perturbation; groups with ``min_cells`` cells per condition.
    quick
        :data:`QUICK_GROUPS` held-out groups per set, ``max_epochs`` :data:`QUICK_EPOCHS`,
        :data:`QUICK_N_BOOT` bootstrap replicates, smaller synthetic sets (:data:`QUICK_SIM`).
    assess
        After training each held-out row's trVAE, call ``model.assess(group_key=G, n_groups=3,
        seed=0)`` and report the rank correlation of its median Pearson-Δ with the true one.
    max_epochs
        Override the package default epoch budget (default: the package's; :data:`QUICK_EPOCHS`
        with ``quick``).
    n_groups
        Hold out only the first ``n_groups`` groups of each set (default: all; 2 with quick).
    n_threads
        torch and BLAS CPU threads (default :data:`SUITE_THREADS`).
    sim_settings
        :func:`~trvae.datasets.simulate_perturbation` settings of the synthetic sets.

    Returns
    -------
    pandas.DataFrame
        Long format (:data:`COLUMNS`), including the :data:`BEST` rows.
    """
    from trvae_benchmarks.suite_report import write_report

    start = time.perf_counter()
    if assess and not callable(getattr(TRVAE, "assess", None)):
        raise TRVAEError(
            "--assess needs trvae.TRVAE.assess(group_key=..., n_groups=..., seed=...), which "
            "this version of trvae does not have"
        )
    if sets is None:
        sets = [] if data is not None else (list(SYNTHETIC) if quick else list(SETS))
    unknown = [s for s in sets if s not in SETS + CHECKS]
    if unknown:
        raise TRVAEError(f"unknown data set(s) {unknown}; known: {', '.join(SETS + CHECKS)}")
    if not sets and data is None:
        raise TRVAEError("nothing to run: give data sets or a data file")
    n_groups = n_groups or (QUICK_GROUPS if quick else None)
    max_epochs = max_epochs or (QUICK_EPOCHS if quick else None)
    train_kw = {"seed": seed, "progress_bar": progress_bar}
    if max_epochs is not None:
        train_kw["max_epochs"] = int(max_epochs)
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    dev = [load_set(s, quick, sim_settings) for s in sets]
    if data is not None:
        dev.append(file_set(data, condition_key, group_key, control, min_cells))
    for ds in dev:
        ds.groups = ds.groups[:n_groups]
    rows: list[dict] = []
    assessed: list[dict] = []
    timings: list[dict] = []
    n_folds = sum(len(ds.groups) for ds in dev)
    with torch_threads(n_threads or SUITE_THREADS) as threads, blas_threads(threads):
        cfg = _Config(
            train_kw, seed, n_boot or (QUICK_N_BOOT if quick else N_BOOT), threads, assess,
            max_epochs,
        )  # fmt: skip
        warm_up(min(ds.adata.n_vars for ds in dev), {})
        for k, ds, _group, fold, t0 in iter_folds(dev):
            split_s = time.perf_counter() - t0
            timing = _score_fold(ds, fold, cfg, rows, assessed)
            timing["fold (s)"] += split_s  # with the split (kang-counts: its HVGs)
            timing = {**dict(list(timing.items())[:5]), "split (s)": split_s, **timing}
            timings.append(timing)
            write_metrics(out / "metrics.csv", rows, COLUMNS)
            _print_fold(k, n_folds, ds, fold, rows, timing)
    df = add_best_mean_shift(pd.DataFrame(rows, columns=list(COLUMNS)))
    write_metrics(out / "metrics.csv", df.to_dict("records"), COLUMNS)
    runtime = time.perf_counter() - start
    write_report(
        out, df, dev, timings, runtime, cfg, quick=quick, command=command, assessed=assessed
    )
    return df


def _print_fold(k: int, n: int, ds: DevSet, fold: Fold, rows: list, timing: dict) -> None:
    """One line per fold: the rows' Pearson-Δ of trVAE and the mean shifts, and the time."""
    done = pd.DataFrame(rows[-2000:])
    done = done[(done["set"] == ds.name) & (done["group"] == fold.group)]
    done = done[done["metric"] == "delta_pearson_top100"]
    parts = []
    for row, sub in done.groupby("row", sort=False):
        v = dict(zip(sub["method"], sub["value"], strict=True))
        parts.append(
            f"{row} Δr trVAE={v.get(TRVAE_NAME, np.nan):.3f} "
            f"ms={np.nanmax([v.get(MS_GROUPS, np.nan), v.get(MS_ALL, np.nan)]):.3f}"
        )
    fits = " ".join(f"{m}={timing.get(f'{m} fit (s)', 0):.0f}s" for m in (TRVAE_NAME, CVAE_NAME))
    print(
        f"[{k}/{n}] {ds.name} {fold.group}: n_train={fold.train.n_obs} {'; '.join(parts)} "
        f"(fit {fits}, fold {timing['fold (s)']:.0f}s)",
        flush=True,
    )
