"""Calibration of the ensemble's uncertainty: does the real held-out change fall in its interval?

Leave-one-group-out as in :mod:`trvae_benchmarks.suite` (same sets, same folds, via
:func:`~trvae_benchmarks.suite.load_set` and :func:`~trvae_benchmarks.suite.hold_out`): for
every held-out group a :class:`trvae.TRVAEEnsemble` of ``n_models`` trVAEs (package defaults,
``mmd_group_key`` = the group key) is trained on all other cells and predicts the group's
perturbed cells from its control cells. For each of the top-100 DEGs ``g`` of the real response
(Wilcoxon, real perturbed vs control cells of that group, as the suite does):

- predicted mean change ``d̂_g = var["trvae_mean"][g] - control mean``, its SD
  ``s_g = var["trvae_mean_sd"][g]`` (the members' disagreement);
- real mean change ``d_g = real mean - control mean`` (the control mean cancels in ``d - d̂``).

At nominal level ``L`` (:data:`LEVELS`) the interval is ``d̂_g ± z_L s_g`` with ``z_L`` the
two-sided normal quantile; coverage is the fraction of (held-out row, gene) pairs whose ``d_g``
lies inside. The real mean is itself an estimate from ``n`` cells, so a second interval widens
the SD to ``sqrt(s_g² + var_real,g / n)`` (:data:`INTERVALS`). A third pair of intervals uses
the predictions' own response interval instead of the seeds (``var["trvae_response_sd"]``: how
much the training groups' responses differ, with a Student-t quantile of ``k - 1`` degrees of
freedom, :data:`INTERVAL_DOF`), and that SD times the factor :meth:`trvae.TRVAE.assess` measures
on the fold's training data (member 0, :data:`ASSESS_GROUPS` pseudo-held-out groups; NaN where
it cannot run). A calibrated interval covers about ``L``; less means it is
overconfident. ``sd_scale`` is the factor the SD would need for coverage exactly ``L`` (the
``L`` quantile of ``|d - d̂| / (q_L SD)``, ``q_L`` the interval's quantile).

Results go to ``out_dir``: ``metrics.csv`` (coverage per interval and level, pooled, per set and
per held-out row), ``genes.csv`` (one line per row and gene) and ``report.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

import trvae
from trvae._errors import TRVAEError
from trvae._io import atomic_write_text
from trvae.cli import positive as _positive
from trvae_benchmarks.common import (
    blas_threads,
    run_lines,
    select_degs,
    software_line,
    torch_threads,
)
from trvae_benchmarks.kang import DEFAULT_METHODS
from trvae_benchmarks.suite import (
    QUICK_EPOCHS,
    SETS,
    SUITE_THREADS,
    SYNTHETIC,
    DevSet,
    Fold,
    iter_folds,
    load_set,
    row_name,
)

__all__ = [
    "INTERVALS",
    "INTERVAL_DOF",
    "LEVELS",
    "add_calibration_arguments",
    "calibration_command",
    "coverage",
    "coverage_table",
    "run_calibration",
    "sd_scale",
]

#: Nominal levels of the two-sided intervals.
LEVELS = (0.5, 0.8, 0.9, 0.95)
#: Interval name -> the column of ``genes.csv`` holding its SD.
INTERVALS = {
    "ensemble SD": "sd_ensemble",
    "ensemble SD + real-mean SE": "sd_with_real_se",
    "between-group SD (t)": "sd_groups",
    "between-group SD (t) + real-mean SE": "sd_groups_with_real_se",
    "between-group SD (t) x assess": "sd_assessed",
    "between-group SD (t) x assess + real-mean SE": "sd_assessed_with_real_se",
}
#: Interval name -> the column of ``genes.csv`` with its degrees of freedom (Student-t
#: quantiles); the others use the normal quantile.
INTERVAL_DOF = {
    "between-group SD (t)": "dof_groups",
    "between-group SD (t) + real-mean SE": "dof_groups",
    "between-group SD (t) x assess": "dof_groups",
    "between-group SD (t) x assess + real-mean SE": "dof_groups",
}
#: Pseudo-held-out groups of ``TRVAE.assess`` behind the assess-scaled interval.
ASSESS_GROUPS = 3
#: Ensemble size, held-out groups per set by default.
N_MODELS, N_GROUPS = 5, 2
#: ``quick=True``: the first two synthetic sets (small, :data:`~trvae_benchmarks.suite.QUICK_SIM`),
#: one group each, three members, :data:`~trvae_benchmarks.suite.QUICK_EPOCHS` epochs.
QUICK_SETS, QUICK_GROUPS, QUICK_N_MODELS = SYNTHETIC[:2], 1, 3
GENE_COLUMNS = (
    "set", "row", "group", "perturbation", "gene", "deg_rank", "n_real", "n_control",
    "control_mean", "real_change", "pred_change", "sd_ensemble", "se_real", "sd_with_real_se",
    "sd_groups", "sd_groups_with_real_se", "dof_groups", "assess_scale", "sd_assessed",
    "sd_assessed_with_real_se",
)  # fmt: skip
METRIC_COLUMNS = ("set", "row", "interval", "nominal", "coverage", "sd_scale", "n_pairs")


# ---------------------------------------------------------------------------------------------
# Coverage


def z_value(level: float) -> float:
    """Two-sided standard-normal quantile: ``P(|Z| <= z) = level``."""
    if not 0 < level < 1:
        raise TRVAEError(f"a nominal level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def _quantile(level: float, dof: np.ndarray | None) -> float | np.ndarray:
    """Two-sided quantile at ``level``: normal, or Student-t with ``dof`` per entry."""
    if dof is None:
        return z_value(level)
    from scipy.stats import t as student_t

    return student_t.ppf(0.5 + level / 2, dof)


def coverage(
    real_change, pred_change, sd, levels: Sequence[float] = LEVELS, dof=None
) -> dict[float, float]:
    """Fraction of entries with ``|real - pred| <= q_level * sd``, per nominal level; ``q`` the
    normal quantile, or Student-t with ``dof`` (one per entry) when given.

    NaN entries (any of them) are left out; NaN when none is left.
    """
    err, sd, dof = _errors(real_change, pred_change, sd, dof)
    if not len(err):
        return {level: float("nan") for level in levels}
    return {level: float(np.mean(err <= _quantile(level, dof) * sd)) for level in levels}


def sd_scale(
    real_change, pred_change, sd, levels: Sequence[float] = LEVELS, dof=None
) -> dict[float, float]:
    """Factor the SD needs for coverage ``level``: the smallest ``|err| / (q_level sd)`` that
    ``level`` of the pairs reach (the inverted-CDF quantile); ``q`` as in :func:`coverage`. 1:
    calibrated, > 1: the interval is too narrow; inf when covering ``level`` needs a wrong pair
    with SD 0."""
    err, sd, dof = _errors(real_change, pred_change, sd, dof)
    if not len(err):
        return {level: float("nan") for level in levels}
    out = {}
    for level in levels:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(err == 0, 0.0, err / (_quantile(level, dof) * sd))
        out[level] = float(np.quantile(ratio, level, method="inverted_cdf"))
    return out


def _errors(real_change, pred_change, sd, dof=None) -> tuple[np.ndarray, ...]:
    arrays = [np.asarray(a, dtype=np.float64).ravel() for a in (real_change, pred_change, sd)]
    if dof is not None:
        arrays.append(np.asarray(dof, dtype=np.float64).ravel())
    if len({a.shape for a in arrays}) > 1:
        raise TRVAEError(f"shapes differ: {', '.join(str(a.shape) for a in arrays)}")
    real, pred, sd = arrays[:3]
    if (sd < 0).any():
        raise TRVAEError("an SD is negative")
    ok = np.isfinite(real) & np.isfinite(pred) & np.isfinite(sd)
    if dof is not None:
        ok &= arrays[3] >= 1
    return np.abs(real - pred)[ok], sd[ok], None if dof is None else arrays[3][ok]


def coverage_table(genes: pd.DataFrame, levels: Sequence[float] = LEVELS) -> pd.DataFrame:
    """:data:`METRIC_COLUMNS` rows from ``genes.csv``-like lines: pooled over everything
    (set and row ``"all"``), per set (row ``"all"``) and per held-out row."""
    scopes: list[tuple[str, str, pd.DataFrame]] = [("all", "all", genes)]
    scopes += [(str(s), "all", sub) for s, sub in genes.groupby("set", sort=False)]
    scopes += [(str(s), str(r), sub) for (s, r), sub in genes.groupby(["set", "row"], sort=False)]
    rows = []
    for set_name, row, sub in scopes:
        for interval, column in INTERVALS.items():
            args = (sub["real_change"], sub["pred_change"], sub[column])
            dof = sub[INTERVAL_DOF[interval]] if interval in INTERVAL_DOF else None
            cov = coverage(*args, levels=levels, dof=dof)
            scale = sd_scale(*args, levels=levels, dof=dof)
            for level in levels:
                rows.append(
                    {
                        "set": set_name, "row": row, "interval": interval, "nominal": level,
                        "coverage": cov[level], "sd_scale": scale[level], "n_pairs": len(sub),
                    }
                )  # fmt: skip
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


# ---------------------------------------------------------------------------------------------
# Folds


def gene_lines(
    ds: DevSet,
    fold: Fold,
    perturbation: str,
    pred: AnnData,
    degs: Sequence[str],
    assess_scale: float = float("nan"),
) -> list[dict]:
    """One :data:`GENE_COLUMNS` line per DEG: real and predicted mean change, their SDs;
    ``assess_scale``: the factor :meth:`trvae.TRVAE.assess` put on the response interval."""
    real = fold.real[perturbation]
    index = pd.Index(fold.var_names).get_indexer(list(degs))
    ctrl_mean = fold.ctrl_x.mean(0, dtype=np.float64)[index]
    n_real = len(real)
    real_x = real[:, index].astype(np.float64)
    real_var = real_x.var(0, ddof=1) if n_real > 1 else np.zeros(len(index))
    pred_var = pred.var.loc[list(degs)]
    pred_change = pred_var["trvae_mean"].to_numpy(np.float64) - ctrl_mean
    sd = pred_var["trvae_mean_sd"].to_numpy(np.float64)
    se = np.sqrt(real_var / n_real)
    nan = np.full(len(index), np.nan)
    groups_sd = pred_var.get("trvae_response_sd", pd.Series(nan)).to_numpy(np.float64)
    dof = pred.uns.get("trvae_prediction", {}).get("response_interval", {}).get("dof", np.nan)
    keys = {
        "set": ds.name, "row": row_name(ds, fold.group, perturbation), "group": fold.group,
        "perturbation": perturbation, "n_real": n_real, "n_control": len(fold.ctrl_x),
    }  # fmt: skip
    columns = {
        "gene": list(degs),
        "deg_rank": np.arange(1, len(index) + 1),
        "control_mean": ctrl_mean,
        "real_change": real_x.mean(0) - ctrl_mean,
        "pred_change": pred_change,
        "sd_ensemble": sd,
        "se_real": se,
        "sd_with_real_se": np.hypot(sd, se),
        "sd_groups": groups_sd,
        "sd_groups_with_real_se": np.hypot(groups_sd, se),
        "dof_groups": np.full(len(index), float(dof)),
        "assess_scale": np.full(len(index), float(assess_scale)),
        "sd_assessed": groups_sd * assess_scale,
        "sd_assessed_with_real_se": np.hypot(groups_sd * assess_scale, se),
    }
    return pd.DataFrame({**keys, **columns}, columns=list(GENE_COLUMNS)).to_dict("records")


def _fold_lines(
    ds: DevSet, fold: Fold, n_models: int, seed: int, train_kw: dict, model_kwargs: dict,
    n_threads: int,
) -> tuple[list[dict], float]:  # fmt: skip
    """Train the fold's ensemble and return its gene lines and the training seconds."""
    torch.set_num_threads(n_threads)  # scanpy's DEG test resets it
    start = time.perf_counter()
    ensemble = trvae.TRVAEEnsemble(
        fold.train, condition_key=ds.condition_key, mmd_group_key=ds.group_key,
        n_models=n_models, seed=seed, **model_kwargs,
    )  # fmt: skip
    ensemble.train(**train_kw)
    fit_s = time.perf_counter() - start
    preds = {}
    for p in fold.real:
        torch.set_num_threads(n_threads)
        preds[p] = ensemble.predict(fold.ctrl, target_condition=p)
    scale = _assess_scale(ensemble.members[0], ds, seed, train_kw)
    lines: list[dict] = []
    for p, real in fold.real.items():
        degs = select_degs(real, fold.ctrl_x, fold.var_names, p, ds.control)
        lines += gene_lines(ds, fold, p, preds[p], degs, scale)
    return lines, fit_s


def _assess_scale(member: trvae.TRVAE, ds: DevSet, seed: int, train_kw: dict) -> float:
    """The response-interval factor ``member.assess(G, n_groups=3)`` measures on the fold's
    training data (at the member's anchor); NaN where it cannot run."""
    try:
        table = member.assess(
            ds.group_key, n_groups=ASSESS_GROUPS, seed=seed, control=ds.control, anchors=None,
            choose_anchor=False, calibrate=False, **train_kw,
        )  # fmt: skip
    except TRVAEError:
        return float("nan")
    return float(table.attrs.get("interval_scale", float("nan")))


# ---------------------------------------------------------------------------------------------
# The run


def run_calibration(
    sets: Sequence[str] | None = None,
    out_dir: str | os.PathLike = "results/calibration",
    n_models: int | None = None,
    n_groups: int | None = None,
    max_epochs: int | None = None,
    quick: bool = False,
    seed: int = 0,
    n_threads: int | None = None,
    levels: Sequence[float] = LEVELS,
    sim_settings: dict | None = None,
    model_kwargs: dict | None = None,
    verbose: bool = True,
    command: str | None = None,
) -> pd.DataFrame:
    """Leave-one-group-out calibration of :class:`trvae.TRVAEEnsemble`; writes ``metrics.csv``,
    ``genes.csv`` and ``report.md`` to ``out_dir`` and returns the metrics table.

    Parameters
    ----------
    sets
        Names from :data:`~trvae_benchmarks.suite.SETS` (default: the synthetic ones; quick:
        :data:`QUICK_SETS`).
    n_models, n_groups
        Ensemble size (default :data:`N_MODELS`; quick :data:`QUICK_N_MODELS`) and held-out
        groups per set, the first in sorted order (default :data:`N_GROUPS`; quick
        :data:`QUICK_GROUPS`).
    max_epochs
        Epoch budget of every member (default: the package's; quick: ``QUICK_EPOCHS``).
    quick
        The settings above and the suite's small synthetic sets.
    n_threads
        torch and BLAS threads (default: the suite's, 1).
    sim_settings
        :func:`~trvae.datasets.simulate_perturbation` settings of the synthetic sets.
    model_kwargs
        Extra :class:`trvae.TRVAE` arguments (tests: a tiny network); the benchmark gives none.
    """
    start = time.perf_counter()
    sets = list(sets) if sets else list(QUICK_SETS if quick else SYNTHETIC)
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise TRVAEError(f"unknown data set(s) {unknown}; known: {', '.join(SETS)}")
    n_models = int(n_models or (QUICK_N_MODELS if quick else N_MODELS))
    if n_models < 2:
        raise TRVAEError(f"an ensemble's uncertainty needs n_models >= 2, got {n_models}")
    n_groups = int(n_groups or (QUICK_GROUPS if quick else N_GROUPS))
    max_epochs = max_epochs or (QUICK_EPOCHS if quick else None)
    train_kw: dict = {"progress_bar": False}
    if max_epochs is not None:
        train_kw["max_epochs"] = int(max_epochs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = [load_set(s, quick, sim_settings) for s in sets]
    for ds in dev:
        ds.groups = ds.groups[:n_groups]
    n_folds = sum(len(ds.groups) for ds in dev)
    lines: list[dict] = []
    folds: list[dict] = []
    with torch_threads(n_threads or SUITE_THREADS) as threads, blas_threads(threads):
        for k, ds, group, fold, t0 in iter_folds(dev):
            new, fit_s = _fold_lines(
                ds, fold, n_models, seed, train_kw, model_kwargs or {}, threads
            )
            lines += new
            folds.append(
                {
                    "set": ds.name, "group": group, "training cells": fold.train.n_obs,
                    "fit (s)": fit_s, "fold (s)": time.perf_counter() - t0,
                }
            )  # fmt: skip
            genes = pd.DataFrame(lines, columns=list(GENE_COLUMNS))
            atomic_write_text(out / "genes.csv", genes.to_csv(index=False))
            if verbose:
                _print_fold(k, n_folds, ds, group, pd.DataFrame(new), folds[-1])
    genes = pd.DataFrame(lines, columns=list(GENE_COLUMNS))
    metrics = coverage_table(genes, levels)
    atomic_write_text(out / "metrics.csv", metrics.to_csv(index=False))
    runtime = time.perf_counter() - start
    settings = {
        "n_models": n_models, "n_groups": n_groups, "max_epochs": max_epochs, "seed": seed,
        "threads": n_threads or SUITE_THREADS, "quick": quick,
    }  # fmt: skip
    write_report(out, metrics, genes, dev, folds, runtime, settings, command)
    if verbose:
        print(summary_text(metrics), flush=True)
        print(f"wrote {out / 'report.md'}, {out / 'metrics.csv'}, {out / 'genes.csv'}")
    return metrics


def _print_fold(k: int, n: int, ds: DevSet, group: str, new: pd.DataFrame, fold: dict) -> None:
    """One line per fold: coverage at 90 % of both intervals, the times."""
    parts = []
    for interval, column in INTERVALS.items():
        cov = coverage(new["real_change"], new["pred_change"], new[column], (0.9,))[0.9]
        parts.append(f"{interval}: {cov:.2f}")
    print(
        f"[{k}/{n}] {ds.name} {group}: n_train={fold['training cells']} pairs={len(new)} "
        f"coverage@90% {'; '.join(parts)} (fit {fold['fit (s)']:.0f}s, "
        f"fold {fold['fold (s)']:.0f}s)",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------
# Report


def _pooled(metrics: pd.DataFrame, set_name: str = "all", row: str = "all") -> pd.DataFrame:
    sub = metrics[(metrics["set"] == set_name) & (metrics["row"] == row)]
    return sub


def _level_table(metrics: pd.DataFrame, value: str, set_name: str = "all") -> pd.DataFrame:
    """Nominal levels x intervals of ``value`` (pooled over ``set_name``)."""
    sub = _pooled(metrics, set_name)
    table = sub.pivot(index="nominal", columns="interval", values=value)
    return table.reindex(columns=[i for i in INTERVALS if i in table.columns])


def summary_text(metrics: pd.DataFrame) -> str:
    """The pooled coverage table as printed: nominal level, coverage of each interval."""
    table = _level_table(metrics, "coverage")
    n = int(_pooled(metrics)["n_pairs"].iloc[0]) if len(_pooled(metrics)) else 0
    names = list(table.columns)
    width = max(len(c) for c in names) + 2
    head = f"{'nominal':>8}" + "".join(f"{c:>{width}}" for c in names)
    out = [f"Coverage of the real held-out mean change, {n} (row, gene) pairs", head]
    for level, values in table.iterrows():
        out.append(f"{level:>8.2f}" + "".join(f"{v:>{width}.3f}" for v in values))
    return "\n".join(out)


def _md(table: pd.DataFrame, first: str, digits: int = 3) -> list[str]:
    lines = [
        "| " + " | ".join([first, *map(str, table.columns)]) + " |",
        "|" + "|".join(["---"] + ["---:"] * table.shape[1]) + "|",
    ]
    for index, values in table.iterrows():
        name = f"{index:.2f}" if isinstance(index, float) else str(index)
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in values]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return lines


def _verdict(metrics: pd.DataFrame) -> str:
    cov = _level_table(metrics, "coverage")
    scale = _level_table(metrics, "sd_scale")
    if 0.9 not in cov.index:
        return ""
    parts = []
    for interval in cov.columns:
        c, s = cov.at[0.9, interval], scale.at[0.9, interval]
        kind = "overconfident" if c < 0.85 else ("conservative" if c > 0.95 else "about right")
        parts.append(
            f"the {interval} interval covers {100 * c:.0f} % ({kind}; its SD would need "
            f"× {s:.2f} to cover 90 %)"
        )
    return "At nominal 90 %, " + "; ".join(parts) + "."


def write_report(
    out: Path,
    metrics: pd.DataFrame,
    genes: pd.DataFrame,
    dev: Sequence[DevSet],
    folds: Sequence[dict],
    runtime: float,
    settings: dict,
    command: str | None,
) -> None:
    """``report.md``: settings, pooled coverage and SD scale, per set and per held-out row."""
    epochs = settings["max_epochs"] or "package default (epoch_budget)"
    lines = [
        "# Calibration of trVAE's uncertainty intervals (leave-one-group-out)",
        "",
        *run_lines(command or "run_calibration(...)", runtime),
        software_line(),
        f"- **Ensemble**: `trvae.TRVAEEnsemble(train, condition_key=K, mmd_group_key=G, "
        f"n_models={settings['n_models']}, seed={settings['seed']})`, package defaults; "
        f"max_epochs: {epochs}; {settings['threads']} thread(s)"
        + ("; **quick run**" if settings["quick"] else ""),
        f"- **Folds**: the first {settings['n_groups']} eligible group(s) of each set, held out "
        "as in `trvae benchmark suite`",
        "",
        "For each held-out row and each of its top-100 DEGs (real perturbed vs control cells of "
        "the group, Wilcoxon), the predicted mean change is `var['trvae_mean'] - control mean` "
        "with SD `var['trvae_mean_sd']` (the SD over the members of their mean prediction); the "
        "real mean change is `real mean - control mean`. The interval at nominal level L is "
        "`predicted ± z_L × SD` (two-sided normal quantile). **ensemble SD** uses the members' "
        "SD alone; **ensemble SD + real-mean SE** uses `sqrt(SD² + var_real / n_real)`, since "
        "the real mean is itself estimated from n_real cells. **between-group SD (t)** is the "
        "prediction's own response interval instead (`var['trvae_response_sd']`: the SD over "
        "the training groups of their responses times sqrt(1 + 1/k), with the Student-t "
        "quantile of k - 1 degrees of freedom), alone and with the real mean's SE; "
        "**x assess** multiplies that SD by the factor `TRVAE.assess(G, n_groups=3)` measures "
        "on the fold's training data alone (member 0, its pseudo-held-out groups' real mean "
        "changes of their top-100 DEGs covered at 90 %; what `assess` stores in a model). "
        "Coverage is the fraction of "
        "(row, gene) pairs whose real change lies inside; a calibrated interval covers about L. "
        "`SD scale` is the factor the SD would need for coverage exactly L.",
        "",
        "## Coverage, pooled over all held-out rows and genes",
        "",
        f"{int(_pooled(metrics)['n_pairs'].iloc[0])} (row, gene) pairs. {_verdict(metrics)}",
        "",
        *_md(_level_table(metrics, "coverage"), "nominal"),
        "",
        "### SD scale needed for nominal coverage",
        "",
        *_md(_level_table(metrics, "sd_scale"), "nominal", 2),
        "",
        "## Coverage per set",
        "",
    ]
    per_set = metrics[(metrics["set"] != "all") & (metrics["row"] == "all")]
    for interval in INTERVALS:
        sub = per_set[per_set["interval"] == interval]
        table = sub.pivot(index="set", columns="nominal", values="coverage")
        table = table.reindex(index=list(dict.fromkeys(sub["set"])))
        table.columns = [f"{c:g}" for c in table.columns]
        lines += [f"### {interval}", "", *_md(table, "set"), ""]
    genes = genes.assign(abs_error=(genes["real_change"] - genes["pred_change"]).abs())
    rows = metrics[(metrics["row"] != "all") & (metrics["nominal"] == 0.9)]
    table = rows.pivot_table(
        index=["set", "row"], columns="interval", values="coverage", sort=False
    ).reindex(columns=list(INTERVALS))
    spread = genes.groupby(["set", "row"], sort=False).agg(
        **{
            "median abs(real - predicted)": ("abs_error", "median"),
            "median ensemble SD": ("sd_ensemble", "median"),
            "median between-group SD": ("sd_groups", "median"),
            "assess factor": ("assess_scale", "first"),
            "median real-mean SE": ("se_real", "median"),
        }
    )
    table = table.join(spread)
    table.index = [f"{s} / {r}" for s, r in table.index]
    lines += [
        "## Coverage at nominal 90 % per held-out row",
        "",
        "With the median absolute error of the predicted mean change and the median SDs: an "
        "error much larger than both SDs is a bias the members share, which no spread over "
        "seeds can cover.",
        "",
        *_md(table, "set / row"),
        "",
    ]
    fold_table = pd.DataFrame(folds).set_index("set")
    lines += [
        "## Folds",
        "",
        "| set | group | training cells | fit (s) | fold (s) |",
        "|---|---|---:|---:|---:|",
        *(
            f"| {s} | {f['group']} | {f['training cells']} | {f['fit (s)']:.0f} | "
            f"{f['fold (s)']:.0f} |"
            for s, f in fold_table.iterrows()
        ),
        "",
        "## Data sets",
        "",
        *(f"- **{ds.name}**: {ds.description}" for ds in dev),
        "",
        "Files: `metrics.csv` (set, row, interval, nominal, coverage, sd_scale, n_pairs; set and "
        "row `all` = pooled), `genes.csv` (one line per held-out row and DEG).",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Command line


def add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    """The option of ``trvae benchmark calibration`` that no other benchmark has."""
    g = p.add_argument_group("calibration")
    g.add_argument(
        "--n-models",
        type=_positive,
        help=f"calibration: ensemble members (default {N_MODELS}; quick {QUICK_N_MODELS})",
    )


def calibration_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``trvae benchmark calibration``: leave-one-group-out coverage of the ensemble's interval."""
    given = [
        f"--{k.replace('_', '-')}"
        for k in ("n_latent", "n_hidden", "alpha", "beta", "cell_types", "data", "n_boot")
        if getattr(args, k, None) is not None
    ]
    if args.assess:
        given.append("--assess")
    if list(args.methods) != list(DEFAULT_METHODS):
        given.append("--methods")
    if given:
        raise TRVAEError(
            f"calibration trains trVAE ensembles with the package defaults on the suite's sets: "
            f"{', '.join(given)} do(es) not apply"
        )
    run_calibration(
        sets=args.sets,
        out_dir=args.out or Path("results") / "calibration",
        n_models=getattr(args, "n_models", None),
        n_groups=args.n_groups,
        max_epochs=args.max_epochs,
        quick=args.quick,
        seed=args.seed,
        n_threads=args.threads,
        command=" ".join(["trvae", *map(shlex.quote, argv)]),
    )
    return 0
