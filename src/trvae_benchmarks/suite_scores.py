"""Scores of the generalisation suite: the best mean shift per row, wins, ties and the headline.

Shared by :mod:`trvae_benchmarks.suite` (the run) and :mod:`trvae_benchmarks.suite_report`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ("set", "row", "group", "perturbation", "method", "metric", "value")
TRVAE_NAME, CVAE_NAME = "trVAE", "CVAE"
#: trVAE predicting with the anchor weight its ``assess`` chose on the fold's training data.
ASSESSED_NAME = "trVAE + assess"
MS_GROUPS, MS_ALL = "mean shift (other groups)", "mean shift (all cells)"
BEST = "best mean shift"
#: Synthetic sets: the held-out group's source cells moved by the expected change under the
#: other groups' mean true response (what no method can be expected to beat).
CEILING = "identifiable ceiling"
METHODS = (TRVAE_NAME, ASSESSED_NAME, CVAE_NAME, BEST, MS_GROUPS, MS_ALL, "control", CEILING)
#: Check sets of :mod:`trvae_benchmarks.suite`, real tasks no default was chosen on: run when
#: named (``sets=``), never in a full run.
CHECKS = ("kang-reverse", "kang-fine", "kang-allgenes")
#: Metrics where lower is better (all others: higher is better).
LOWER_BETTER = frozenset(
    {"edist_top100", "edist_pca", "mmd_top100", "mmd_pca", "wasserstein_top100", "fit_seconds"}
)
#: Metrics "best mean shift" picks per held-out row (bootstrap SDs and timings are not scores).
SCORE_METRICS = (
    "r2_mean_top100", "r2_mean_all", "r2_var_top100", "r2_var_all", "delta_pearson_top100",
    "delta_pearson_all", "edist_top100", "edist_pca", "mmd_top100", "mmd_pca",
    "wasserstein_top100", "r2_nonzero_top100",
)  # fmt: skip
#: The headline: trVAE beats the better mean shift on both of these.
HEADLINE_METRICS = ("delta_pearson_top100", "edist_top100")
#: Tie tolerance per metric: ("abs", t) ties when |a - b| < t; ("rel", t) when
#: |a - b| < t * max(|a|, |b|) (E-distances and Wasserstein differ in scale between sets).
TIES: dict[str, tuple[str, float]] = {
    "delta_pearson_top100": ("abs", 0.005),
    "r2_mean_top100": ("abs", 0.005),
    "r2_var_top100": ("abs", 0.005),
    "r2_nonzero_top100": ("abs", 0.005),
    "edist_top100": ("rel", 0.02),
    "edist_pca": ("rel", 0.02),
    "wasserstein_top100": ("rel", 0.02),
}
#: The report's "Which data informed the defaults" paragraph: edit the wording here.
DEFAULTS_PARAGRAPH = (
    "The defaults were not all chosen on independent data. The MMD settings (grouped MMD, beta "
    "1000, the condition in every decoder layer, KL weight 10) were chosen in earlier sessions "
    "on the Kang scGen file's own held-out cell types, so the `kang` rows are no independent "
    "test of them. The network size (128-128) and the epoch budget (about 150,000 cells) were "
    "screened by leave-one-group-out on the Kang counts file and three synthetic sets like "
    "`shared`, `specific` and `unequal` (from a screening simulator of their own), and the "
    "quantile read-out on two synthetic cell types and four Kang-counts cell types, with the "
    "Kang scGen file scored once afterwards as a check; so the `kang-counts` rows are no "
    "independent test of those. The anchor weight (how far the predicted mean response is "
    'moved toward the mean shift) is read off each fit\'s training groups (`anchor="auto"`: '
    "0 where groups that look alike in the control condition respond alike, 1 where they do "
    "not); the rule's two thresholds were chosen on the `shared`, `specific`, `unequal`, "
    "`variance` and `kang-counts` sets of this suite (wins on both headline metrics, then "
    "median R²), so their rows are no independent test of it; the `kang` and "
    "`three_conditions` rows were not used for the choice. The quiet-gene rule "
    "(genes in which no training group responds take the mean shift's change; a 5 % "
    "chi-square test, fixed thresholds screened around it) was screened on the same sets, and "
    "so "
    "was the level-aware mean shift of the anchor (a fold change on the linear scale mixed "
    "into the additive shift, the mix chosen in each fit by leave-one-training-group-out) and "
    "the quantile read-out's snap of values between the floor and one count; its mean match "
    "(the decoder's change averaged before the floor) on `kang-counts` and the synthetic sets "
    "alone; the target condition's read-out table matched to the predicted cells' state "
    "(training groups weighted by how close their control means lie), the mean match's "
    "shift of the levels on the logit scale and the non-zero match (each gene's fraction of "
    "cells above the floor moved half-way toward the predicted cells' own curve from mean to "
    "non-zero fraction) on `kang-counts` and all five synthetic sets, `three_conditions` "
    "included (these three are its only part in any choice). The `kang` rows were not used "
    "for them. Batch norm's statistics re-estimated over all training cells after training "
    "were screened on `kang-counts` and the five synthetic sets at seeds 0 and 1, but the "
    "diagnosis that led to them came from the `kang` FCGR3A+Mono fold, so the `kang` rows are "
    "no independent test of that either. The `donors` set (groups are donors holding the "
    "same cell states in their own proportions, as in a drug screen across patients) was "
    "added on 2026-12-07, after every default above; the local mean shift of the anchor "
    "(each predicted cell's nearest training cells in z, taken where leave-one-training-group-"
    "out says it predicts better; its 100 neighbours and its top-100-gene error) was chosen "
    "the same day on `kang-counts`, `donors` and the synthetic sets, so their rows are no "
    "independent test of it; the `kang` rows were not used for it. Only a data set outside "
    "the project (`--data`) is a clean test."
)


def add_best_mean_shift(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` plus rows of :data:`BEST`: per (set, row, metric) of :data:`SCORE_METRICS`, the
    better of the two mean shifts (lower for :data:`LOWER_BETTER`, else higher; NaN loses)."""
    df = df[df["method"] != BEST]
    shifts = df[df["method"].isin([MS_GROUPS, MS_ALL]) & df["metric"].isin(SCORE_METRICS)]
    if shifts.empty:
        return df.reset_index(drop=True)
    keys = ["set", "row", "group", "perturbation", "metric"]
    wide = shifts.set_index([*keys, "method"])["value"].unstack("method")
    wide = wide.reindex(columns=[MS_GROUPS, MS_ALL])
    lower = wide.index.get_level_values("metric").isin(sorted(LOWER_BETTER))
    best = np.where(lower, wide.min(axis=1, skipna=True), wide.max(axis=1, skipna=True))
    extra = wide.index.to_frame(index=False).assign(method=BEST, value=best)
    return pd.concat([df, extra[list(COLUMNS)]], ignore_index=True)


def compare(a: float, b: float, metric: str) -> int:
    """+1 when ``a`` beats ``b`` on ``metric`` by more than its :data:`TIES` tolerance, 0 for a
    tie, -1 when it loses; a NaN ``a`` loses, a NaN ``b`` (with ``a`` finite) is beaten."""
    if not np.isfinite(a):
        return 0 if not np.isfinite(b) else -1
    if not np.isfinite(b):
        return 1
    kind, tol = TIES.get(metric, ("abs", 0.0))
    if kind == "rel":
        tol *= max(abs(a), abs(b))
    diff = (b - a) if metric in LOWER_BETTER else (a - b)
    if abs(diff) < tol:
        return 0
    return 1 if diff > 0 else -1


def _paired(df: pd.DataFrame, metric: str, a: str, b: str) -> pd.DataFrame:
    """Rows (set, row) with columns ``a`` and ``b``: the two methods' ``metric``."""
    sub = df[(df["metric"] == metric) & df["method"].isin([a, b])]
    return wide_rows(sub, "method").reindex(columns=[a, b])


def wide_rows(sub: pd.DataFrame, columns: str) -> pd.DataFrame:
    """``sub``'s values as (set, row) x ``columns``, rows in ``sub``'s order; no rows dropped."""
    wide = sub.set_index(["set", "row", columns])["value"].unstack(columns)
    return wide.reindex(pd.MultiIndex.from_frame(sub[["set", "row"]].drop_duplicates()))


def compared(df: pd.DataFrame, metric: str, a: str, b: str) -> pd.Series:
    """Per held-out row (index set, row): :func:`compare` of ``a`` with ``b`` on ``metric``."""
    wide = _paired(df, metric, a, b)
    result = [compare(x, y, metric) for x, y in zip(wide[a], wide[b], strict=True)]
    return pd.Series(result, index=wide.index, dtype=int)


def win_tie_lose(df: pd.DataFrame, metric: str, a: str = TRVAE_NAME, b: str = BEST) -> pd.DataFrame:
    """Per set, how often ``a`` wins, ties and loses against ``b`` on ``metric``."""
    result = compared(df, metric, a, b)
    return result.groupby(level="set", sort=False).agg(
        win=lambda r: int((r == 1).sum()),
        tie=lambda r: int((r == 0).sum()),
        lose=lambda r: int((r == -1).sum()),
    )


def wins_both(df: pd.DataFrame, a: str = TRVAE_NAME, b: str = BEST) -> pd.Series:
    """Per held-out row (index set, row): whether ``a`` beats ``b`` on both
    :data:`HEADLINE_METRICS` (a row without a score of ``a`` is not won)."""
    beats = None
    for metric in HEADLINE_METRICS:
        won = compared(df, metric, a, b) == 1
        beats = won if beats is None else (beats & won.reindex(beats.index, fill_value=False))
    assert beats is not None
    return beats


def within_reach(df: pd.DataFrame) -> dict:
    """The headline over the rows some method can be expected to win: where the
    :data:`CEILING` beats the best mean shift on Pearson-Δ (the mean response, for which it is
    a ceiling; its additive shape is none for the E-distance), and every row without a
    ceiling (no known truth). Returns ``wins`` (of trVAE there), ``rows``, ``outside`` (trVAE's
    wins on the other rows) and ``per_set`` (set -> (rows with a ceiling, rows the ceiling
    wins, trVAE's wins among those))."""
    df = add_best_mean_shift(df)
    trvae = wins_both(df)
    metric = HEADLINE_METRICS[0]
    scored = df[(df["method"] == CEILING) & (df["metric"] == metric)]
    with_ceiling = pd.MultiIndex.from_frame(scored[["set", "row"]].drop_duplicates())
    ceiling = compared(df, metric, CEILING, BEST).reindex(with_ceiling) == 1
    reach = pd.Series(True, index=trvae.index)
    reach.loc[ceiling.index] = ceiling.to_numpy()
    per_set = {}
    for s, won in ceiling.groupby(level="set", sort=False):
        rows = won.index[won.to_numpy()]
        per_set[s] = (len(won), int(won.sum()), int(trvae.reindex(rows).sum()))
    return {
        "wins": int(trvae[reach].sum()),
        "rows": int(reach.sum()),
        "outside": int(trvae[~reach].sum()),
        "per_set": per_set,
    }


def headline(df: pd.DataFrame, a: str = TRVAE_NAME, b: str = BEST) -> dict:
    """The suite's headline numbers from a long metrics table (with :data:`BEST` rows).

    Returns ``fraction`` (of held-out rows where ``a`` beats ``b`` on *both*
    :data:`HEADLINE_METRICS`, each by more than its tie tolerance), ``wins``, ``rows``,
    ``per_set`` (set -> (wins, rows)) and ``median_r2`` (set -> {method: median R² of the mean,
    top-100 DEGs}).
    """
    df = add_best_mean_shift(df)
    beats = wins_both(df, a, b)
    per_set = {s: (int(v.sum()), len(v)) for s, v in beats.groupby(level="set", sort=False)}
    r2 = df[df["metric"] == "r2_mean_top100"]
    median_r2 = {
        s: sub.groupby("method")["value"].median().to_dict()
        for s, sub in r2.groupby("set", sort=False)
    }
    n = len(beats)
    return {
        "wins": int(beats.sum()),
        "rows": n,
        "fraction": float(beats.mean()) if n else float("nan"),
        "per_set": per_set,
        "median_r2": median_r2,
    }


def assess_correlation(df: pd.DataFrame) -> dict[str, tuple[float, int]]:
    """Spearman r between trVAE's median pseudo-held-out Pearson-Δ (``assess``) and its true
    held-out Pearson-Δ (top-100): overall (key ``"all"``) and per set; (r, rows)."""
    from scipy.stats import spearmanr

    sub = df[df["method"] == TRVAE_NAME]
    wide = wide_rows(sub, "metric")
    if "assess_delta_pearson" not in wide:
        return {}
    wide = wide[["assess_delta_pearson", "delta_pearson_top100"]].dropna()
    out = {}
    parts = [("all", wide), *wide.groupby(level="set", sort=False)]
    for name, part in parts:
        ok = len(part) >= 3 and part.nunique().min() > 1
        r = spearmanr(part.iloc[:, 0], part.iloc[:, 1])[0] if ok else float("nan")
        out[str(name)] = (float(r), len(part))
    return out


# ---------------------------------------------------------------------------------------------
# The run
