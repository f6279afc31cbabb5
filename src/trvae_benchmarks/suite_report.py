"""The generalisation suite's report: headline, win / tie / lose tables, per-set tables, figures."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd

from trvae import TRVAE
from trvae._io import atomic_write_text
from trvae_benchmarks.common import fmt, markdown, run_lines, save_fig, software_line, table
from trvae_benchmarks.suite_scores import (
    ASSESSED_NAME,
    BEST,
    CEILING,
    CHECKS,
    CVAE_NAME,
    DEFAULTS_PARAGRAPH,
    HEADLINE_METRICS,
    LOWER_BETTER,
    METHODS,
    TIES,
    TRVAE_NAME,
    add_best_mean_shift,
    assess_correlation,
    headline,
    wide_rows,
    win_tie_lose,
    within_reach,
)

__all__ = ["headline_lines", "write_report"]

#: Metrics of the win / tie / lose table and the per-set tables, with short titles.
REPORT_METRICS = {
    "delta_pearson_top100": "Pearson-Δ top-100",
    "edist_top100": "E-distance top-100 ↓",
    "r2_mean_top100": "R² mean top-100",
    "r2_var_top100": "R² variance top-100",
    "edist_pca": "E-distance PCA ↓",
    "wasserstein_top100": "Wasserstein top-100 ↓",
    "r2_nonzero_top100": "R² non-zero fraction top-100",
}


def _tolerance_text() -> str:
    parts = []
    for metric, (kind, tol) in TIES.items():
        title = REPORT_METRICS.get(metric, metric).replace(" ↓", "")
        parts.append(f"{title} |Δ| < {tol:g}" if kind == "abs" else f"{title} |Δ| < {tol:.0%}")
    return "; ".join(parts)


def headline_lines(df: pd.DataFrame) -> list[str]:
    """The headline: the fraction of rows won on both metrics, median R² and win/tie/lose."""
    h = headline(df)
    titles = " and ".join(REPORT_METRICS[m].replace(" ↓", "") for m in HEADLINE_METRICS)
    lines = [
        f"**trVAE beats the better mean shift on both {titles} in {h['wins']} of {h['rows']} "
        f"held-out rows ({100 * h['fraction']:.0f} %).** "
        "A win is a difference beyond the tie tolerance; the better mean shift is chosen per "
        "metric and row.",
        "",
        "| set | rows | trVAE wins both | median R² mean top-100: trVAE | best mean shift | CVAE "
        "| control |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s, (wins, n) in h["per_set"].items():
        med = h["median_r2"].get(s, {})
        cells = [fmt(med.get(m, np.nan)) for m in (TRVAE_NAME, BEST, CVAE_NAME, "control")]
        lines.append(f"| {s} | {n} | {wins} | " + " | ".join(cells) + " |")
    lines += ["", "Win / tie / lose of trVAE against the best mean shift, per set:", ""]
    wtl = {m: win_tie_lose(df, m) for m in REPORT_METRICS if (df["metric"] == m).any()}
    lines += [
        "| set | " + " | ".join(REPORT_METRICS[m] for m in wtl) + " |",
        "|---|" + "---:|" * len(wtl),
    ]
    for s in h["per_set"]:
        cells = []
        for t in wtl.values():
            cells.append(
                "/".join(str(t.at[s, c]) for c in ("win", "tie", "lose")) if s in t.index else "–"
            )
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", f"Ties: {_tolerance_text()}.", ""]
    return lines + _assessed_headline_lines(df)


def _assessed_headline_lines(df: pd.DataFrame) -> list[str]:
    """The second row: trVAE predicting with the anchor its ``assess`` chose (``--assess``)."""
    if ASSESSED_NAME not in set(df["method"]):
        return []
    h = headline(df, a=ASSESSED_NAME)
    anchors = df[(df["method"] == ASSESSED_NAME) & (df["metric"] == "assess_anchor")]
    lines = [
        f"**{ASSESSED_NAME}** (a second configuration, not the default: after each fold's fit, "
        "`model.assess(group_key=G, n_groups=3)` on the fold's training data chooses the anchor "
        f"weight it then predicts with): beats the better mean shift on both in {h['wins']} of "
        f"{h['rows']} held-out rows ({100 * h['fraction']:.0f} %).",
        "",
        f"| set | rows | {ASSESSED_NAME} wins both | median R² mean top-100: {ASSESSED_NAME} "
        "| trVAE | best mean shift | anchors chosen |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for s, (wins, n) in h["per_set"].items():
        med = h["median_r2"].get(s, {})
        cells = [fmt(med.get(m, np.nan)) for m in (ASSESSED_NAME, TRVAE_NAME, BEST)]
        chosen = anchors.loc[anchors["set"] == s, "value"].round(2).tolist()
        text = ", ".join(f"{w:g}" for w in chosen)
        lines.append(f"| {s} | {n} | {wins} | " + " | ".join(cells) + f" | {text} |")
    return [*lines, ""]


def _defaults_text(max_epochs) -> str:
    """The package defaults trVAE runs with, read from the signatures (never restated here)."""
    init = {
        k: p.default
        for k, p in inspect.signature(TRVAE.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty and k not in ("condition_key", "layer")
    }
    train = {
        k: p.default
        for k, p in inspect.signature(TRVAE.train).parameters.items()
        if p.default is not inspect.Parameter.empty and k not in ("checkpoint_dir", "resume")
    }
    text = (
        "`TRVAE(train, condition_key=K, mmd_group_key=G)` with the package defaults ("
        + ", ".join(f"{k}={v}" for k, v in init.items())
        + "; `None` resolves per likelihood and grouping), `.train(seed=0, progress_bar=False)` ("
        + ", ".join(f"{k}={v}" for k, v in train.items())
        + ")"
    )
    if max_epochs is not None:
        text += f", **except max_epochs={max_epochs}** (not the package default)"
    return text + "; CVAE: the same with `beta=0`."


def _assess_lines(df: pd.DataFrame, assessed: list[dict]) -> list[str]:
    corr = assess_correlation(df)
    if not corr:
        return []
    lines = [
        "## Can `model.assess` tell? Pseudo-held-out vs true held-out Pearson-Δ",
        "",
        "After training each fold's trVAE, `model.assess(group_key=G, n_groups=3, seed=0)`; its "
        "median pseudo-held-out Pearson-Δ per row against trVAE's true held-out Pearson-Δ "
        "(top-100). Spearman r:",
        "",
        "| rows | Spearman r | n |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {fmt(r)} | {n} |" for k, (r, n) in corr.items()]
    true = df[(df["method"] == TRVAE_NAME) & (df["metric"] == "delta_pearson_top100")]
    true = true.set_index(["set", "row"])["value"]
    lines += ["", "| set | row | assess median Pearson-Δ | true Pearson-Δ | verdict |"]
    lines += ["|---|---|---:|---:|---|"]
    for a in assessed:
        t = true.get((a["set"], a["row"]), np.nan)
        lines.append(
            f"| {a['set']} | {a['row']} | {fmt(a['assess'])} | {fmt(t)} | {a['verdict']} |"
        )
    return [*lines, ""]


def _per_set_lines(df: pd.DataFrame, dev) -> list[str]:
    lines = ["## Every held-out row", ""]
    methods = [m for m in METHODS if m in set(df["method"])]
    for ds in dev:
        sub = df[df["set"] == ds.name].rename(columns={"row": "cell_type"})
        if sub.empty:
            continue
        lines += [f"### {ds.name}", ""]
        for metric, title in REPORT_METRICS.items():
            if not (sub["metric"] == metric).any():
                continue
            text = markdown(table(sub, metric, methods, metric in LOWER_BETTER))
            lines += [f"**{title}**", "", text.replace("| cell type |", "| held out |", 1), ""]
    return lines


def _timing_lines(timings: list[dict], runtime: float) -> list[str]:
    t = pd.DataFrame(timings)
    lines = ["## Fold timings", ""]
    head = list(t.columns)
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for _, r in t.iterrows():
        cells = [str(r[c]) if c in ("set", "group") else _num(r[c]) for c in head]
        lines.append("| " + " | ".join(cells) + " |")
    per_set = t.groupby("set", sort=False)["fold (s)"].agg(["count", "mean", "sum"])
    lines += ["", "Per set: " + "; ".join(
        f"{s} {int(r['count'])} folds, {r['mean']:.0f} s each, {r['sum']:.0f} s"
        for s, r in per_set.iterrows()
    ) + f". Total {runtime:.0f} s.", ""]  # fmt: skip
    return lines


def _num(v) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if np.isfinite(v) else "–"
    return str(v)


def headline_figure(df: pd.DataFrame, path: Path) -> str:
    """trVAE vs best mean shift per held-out row: Pearson-Δ, E-distance and R², coloured by set."""
    from matplotlib.figure import Figure

    metrics = ("delta_pearson_top100", "edist_top100", "r2_mean_top100")
    fig = Figure(figsize=(13, 4.2))
    axes = fig.subplots(1, len(metrics))
    sets = list(dict.fromkeys(df["set"]))
    for ax, metric in zip(axes, metrics, strict=True):
        sub = df[(df["metric"] == metric) & df["method"].isin([TRVAE_NAME, BEST])]
        wide = wide_rows(sub, "method")
        if wide.empty or TRVAE_NAME not in wide or BEST not in wide:
            continue
        for s in sets:
            if s in wide.index.get_level_values("set"):
                part = wide.xs(s, level="set")
                ax.scatter(part[BEST], part[TRVAE_NAME], s=18, label=s, alpha=0.8)
        vals = wide[[BEST, TRVAE_NAME]].to_numpy().ravel()
        vals = vals[np.isfinite(vals)]
        if vals.size:
            lo, hi = vals.min(), vals.max()
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=0.8, ls="--")
        better = "below" if metric in LOWER_BETTER else "above"
        ax.set_title(f"{REPORT_METRICS[metric]} (trVAE better {better} the line)", fontsize=9)
        ax.set_xlabel(BEST)
        ax.set_ylabel(TRVAE_NAME)
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_fig(fig, path)


def _ceiling_lines(df: pd.DataFrame) -> list[str]:
    """How many rows are within reach: the identifiable ceiling's wins and trVAE's among them."""
    if CEILING not in set(df["method"]):
        return []
    df = add_best_mean_shift(df)
    reach = within_reach(df)
    pearson = df[df["metric"] == HEADLINE_METRICS[0]]
    outside = reach["outside"]
    lines = [
        f"**Within reach: trVAE wins {reach['wins']} of the {reach['rows']} rows that a method "
        f"can be expected to win ({100 * reach['wins'] / max(1, reach['rows']):.0f} %).** The "
        f"{CEILING} (synthetic sets, whose truth is known) moves the held-out group's control "
        "cells by the expected change of their mean under the mean of the *other* groups' true "
        "responses (per state with donors; `trvae.datasets.expected_log_means`): the mean "
        "response a method that knew every response but the held-out group's own would predict. "
        "Where even it does not beat the better mean shift on Pearson-Δ, the group's own "
        "response is not in the training data and no method can be expected to win; rows "
        "without a known truth (real sets) count as within reach. (The ceiling is one for the "
        "mean response only: its additive shape says nothing about the E-distance."
        + (f" trVAE won {outside} row(s) outside the reach as well.)" if outside else ")"),
        "",
        f"| set | rows with a ceiling | ceiling wins Pearson-Δ | trVAE wins both there | "
        f"Pearson-Δ: {CEILING} | trVAE | best mean shift |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s, (rows, ceiling_wins, trvae_wins) in reach["per_set"].items():
        sub = pearson[pearson["set"] == s].groupby("method")["value"].mean()
        cells = [fmt(sub.get(m, np.nan)) for m in (CEILING, TRVAE_NAME, BEST)]
        lines.append(
            f"| {s} | {rows} | {ceiling_wins} | {trvae_wins} | " + " | ".join(cells) + " |"
        )
    return [*lines, ""]


def _checks_lines(dev) -> list[str]:
    """A paragraph naming the check sets of this run
    (:data:`~trvae_benchmarks.suite_scores.CHECKS`)."""
    checks = [ds.name for ds in dev if ds.name in CHECKS]
    if not checks:
        return []
    names = ", ".join(f"`{name}`" for name in checks)
    return [
        f"Check sets ({names}): real tasks that informed no default (the same study, a task "
        "no screen looked at: the other direction, finer labels, or every gene). They were run "
        "after the defaults were fixed, and no setting was changed on their scores.",
        "",
    ]


def write_report(out: Path, df, dev, timings, runtime, cfg, *, quick, command, assessed) -> None:
    """Write ``report.md`` and the figure; print the headline."""
    fig = headline_figure(df, out / "figures" / "trvae_vs_best_mean_shift.png")
    head = headline_lines(df)
    settings = (
        f"- **Settings**: seed={cfg.seed}, n_boot={cfg.n_boot}, quick={quick}, "
        f"torch_threads={cfg.n_threads}, assess={cfg.assess}"
    )
    lines = [
        "# Generalisation suite: leave one group out, trVAE vs the mean shift",
        "",
        *head,
        *_ceiling_lines(df),
        "## Which data informed the defaults",
        "",
        DEFAULTS_PARAGRAPH,
        "",
        *_checks_lines(dev),
        "## Run",
        "",
        *run_lines(command or "trvae_benchmarks.suite.run_suite()", runtime),
        software_line(),
        f"- **trVAE**: {_defaults_text(cfg.max_epochs)}",
        settings,
        "",
        "## Protocol",
        "",
        "Every group (cell type) with both conditions is held out once (real sets: at least "
        "30 cells per condition): its perturbed cells are removed, each method is trained on "
        "the remaining cells and predicts them from the group's control cells. With more "
        "than one perturbation all of the group's perturbed cells are removed and each "
        "perturbation is predicted and scored as a row of its own (`group:perturbation`). "
        "Scores (`trvae.metrics.evaluate_prediction`) are on the top-100 DEGs of the real "
        "response (Wilcoxon, the group's real perturbed vs control cells) unless named "
        "otherwise. Mean shift (other groups): control + mean(target) − mean(control) over the "
        "training groups that have both; (all cells): over all training cells; best mean "
        "shift: the better of the two per metric and row.",
        "",
        "## Data sets",
        "",
        *[
            f"- **{ds.name}**: {ds.description}; `{ds.condition_key}`: {ds.control} → "
            f"{', '.join(ds.perturbations)}; `{ds.group_key}` held out: {', '.join(ds.groups)}"
            for ds in dev
        ],
        "",
        *_assess_lines(df, assessed),
        "## Figures",
        "",
        f"![trVAE vs best mean shift](figures/{fig})",
        "",
        *_per_set_lines(df, dev),
        *_timing_lines(timings, runtime),
        "## Files",
        "",
        "- `metrics.csv`: every metric, long format (set, row, group, perturbation, method, "
        "metric, value); `best mean shift` rows included.",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
    print("\n" + "\n".join(head[:-2]))
    print(f"wrote {out / 'metrics.csv'}, {out / 'report.md'} and {out / 'figures'}/")
