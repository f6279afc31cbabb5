"""What the benchmarks share: input checks, DEG selection, tables, report headers and run helpers.

:mod:`trvae_benchmarks.kang` and :mod:`trvae_benchmarks.kang_counts` hold out one cell type's
stimulated cells at a time: :class:`HeldOutRun` is the state of such a run (its keys, the cell
types to hold out and the long-format rows scored so far) and :class:`Split` one held-out cell
type. :mod:`trvae_benchmarks.mnist` uses the report header, the row, thread and timing helpers.
Files are written atomically with :mod:`trvae._io`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from trvae._errors import TRVAEError
from trvae._io import atomic_write_text, save_figure
from trvae.data import validation as V
from trvae.metrics import evaluate_prediction, top_degs
from trvae_benchmarks.baselines import Method, dense, make_method
from trvae_benchmarks.memory import PeakRSS

__all__ = [
    "BENCHMARK_MODEL",
    "BENCHMARK_TRAIN",
    "METRIC_TITLES",
    "N_BOOT",
    "N_DEGS",
    "QUICK_CELL_TYPE",
    "QUICK_N_BOOT",
    "HeldOutRun",
    "Split",
    "blas_threads",
    "check_inputs",
    "fmt",
    "long_rows",
    "markdown",
    "n_boots",
    "run_lines",
    "save_fig",
    "select_degs",
    "software_line",
    "summary_sections",
    "summary_spec",
    "table",
    "timed_fit",
    "torch_threads",
    "train_arguments",
    "warm_up",
    "write_metrics",
]

#: The held-out-cell-type benchmarks' network and training arguments beyond the package
#: defaults: none. The benchmarks run what ``TRVAE(adata, condition_key=...)`` and ``train()``
#: give a user (plus the group key); a caller's arguments make a second, labelled configuration.
BENCHMARK_MODEL: dict = {}
BENCHMARK_TRAIN: dict = {}
#: Bootstrap replicates of the R² SDs, and with ``quick=True``.
N_BOOT, QUICK_N_BOOT = 100, 20
#: The cell type ``quick=True`` holds out (when the data have it).
QUICK_CELL_TYPE = "NK"
#: DEGs of the real response that the scores look at.
N_DEGS = 100
#: Title and direction (lower is better) of the metrics in the reports' summary tables.
METRIC_TITLES: dict[str, tuple[str, bool]] = {
    "r2_mean_top100": ("R² of mean expression, top-100 DEGs (± bootstrap SD)", False),
    "r2_mean_all": ("R² of mean expression, all genes", False),
    "r2_var_top100": ("R² of variance, top-100 DEGs (± bootstrap SD)", False),
    "delta_pearson_top100": ("Pearson r of the mean response, top-100 DEGs", False),
    "edist_pca": ("E-distance to the real cells, PCA space (lower is better)", True),
    "edist_top100": ("E-distance to the real cells, top-100 DEGs (lower is better)", True),
    "wasserstein_top100": (
        "Per-gene 1-D Wasserstein distance, top-100 DEGs (lower is better)",
        True,
    ),
    "r2_nonzero_top100": ("R² of the fraction of non-zero cells per gene, top-100 DEGs", False),
    "fit_seconds": ("Fit time (s)", True),
    "fit_peak_rss_mb": ("Peak memory increase during the fit (MB)", True),
    "specific_direction": ("Specific genes: fraction predicted in the right direction", False),
    "specific_lfc_r2": ("Specific genes: R² of predicted vs real logFC", False),
    "shared_direction": ("Shared genes: fraction predicted in the right direction", False),
    "shared_lfc_r2": ("Shared genes: R² of predicted vs real logFC", False),
    "mixing_y": ("Condition mixing in the MMD layer y (1 = mixed as well as globally)", False),
    "mixing_z": ("Condition mixing in z", False),
    "celltype_knn_y": ("Cell-type kNN accuracy in y (1 = cell types kept apart)", False),
    "celltype_knn_z": ("Cell-type kNN accuracy in z", False),
}
#: Columns of the long metrics table of a held-out-cell-type benchmark.
COLUMNS = ("method", "cell_type", "metric", "value")


# ---------------------------------------------------------------------------------------------
# Inputs, DEGs, the warm-up fit


def check_inputs(adata, condition_key, cell_type_key, control, stimulated, cell_types, quick):
    """Validated condition and cell-type labels and the cell types to hold out."""
    V.check_adata(adata)
    conds = V.check_obs_key(adata, condition_key, "condition_key")
    types = V.check_obs_key(adata, cell_type_key, "cell_type_key")
    for value in (control, stimulated):
        if not (conds == str(value)).any():
            raise TRVAEError(
                f"no cells with {condition_key} == {value!r} (conditions: "
                f"{', '.join(map(repr, sorted(conds.unique())))})"
            )
    known = sorted(types.unique())
    if cell_types is None:
        cell_types = [QUICK_CELL_TYPE] if quick and QUICK_CELL_TYPE in known else known
    cell_types = [str(t) for t in cell_types][: 1 if quick else None]
    if not cell_types:
        raise TRVAEError("no cell types to hold out")
    unknown = [t for t in cell_types if t not in known]
    if unknown:
        raise TRVAEError(
            f"unknown cell type(s) {unknown} in obs[{cell_type_key!r}] (known: {known})"
        )
    for t in cell_types:
        for value in (control, stimulated):
            if not ((types == t) & (conds == str(value))).any():
                raise TRVAEError(f"cell type {t!r} has no {value!r} cells to hold out/predict")
    return conds.to_numpy(), types.to_numpy(), cell_types


def select_degs(real, ctrl_x, var_names, stimulated: str, control: str) -> list[str]:
    """Top DEGs of the real response (real stimulated vs control cells of one type)."""
    labels = [stimulated] * len(real) + [control] * len(ctrl_x)
    sub = AnnData(
        np.vstack([real, ctrl_x]),
        obs=pd.DataFrame({"c": labels}, index=[str(k) for k in range(len(labels))]),
        var=pd.DataFrame(index=var_names),
    )
    return top_degs(sub, "c", stimulated, control, n_genes=min(N_DEGS, len(var_names)))


def n_boots(n_boot: int | None, quick: bool) -> int:
    """Bootstrap replicates: ``n_boot``, else :data:`N_BOOT` (:data:`QUICK_N_BOOT` if quick)."""
    return n_boot or (QUICK_N_BOOT if quick else N_BOOT)


def train_arguments(
    train_kwargs: dict | None, max_epochs: int | None, seed: int, progress_bar: bool
) -> dict:
    """Training arguments of every network: :data:`BENCHMARK_TRAIN`, the caller's, the budget."""
    return {
        **BENCHMARK_TRAIN,
        **(train_kwargs or {}),
        "max_epochs": max_epochs,
        "seed": seed,
        "progress_bar": progress_bar,
    }


def warm_up(n_genes: int, model_kwargs: dict) -> None:
    """Train a throwaway network for one step, so torch's one-time set-up is not timed."""
    from trvae.module import TRVAEModule

    model_only = ("layer", "seed", "mmd_group_key")  # None: the module's own default
    kw = {k: v for k, v in model_kwargs.items() if k not in model_only and v is not None}
    with torch.random.fork_rng(devices=[]):
        module = TRVAEModule(n_genes, 2, **kw).train()
        x = torch.rand(32, n_genes).round()
        loss = module.loss(x, torch.arange(32) % 2, x.sum(1))["loss"]
        loss.backward()
        torch.optim.Adam(module.parameters()).step()


# ---------------------------------------------------------------------------------------------
# Threads, timing, files


@contextmanager
def torch_threads(n_threads: int | None, apply: bool = True) -> Iterator[int]:
    """torch's CPU threads set to ``n_threads`` in the block, restored after it; yields the count.

    ``n_threads=None`` keeps torch's setting when called. With ``apply=False`` the count is not
    set on entry (the block sets it where it matters) but is still restored on exit.
    """
    before = torch.get_num_threads()
    n_threads = int(n_threads or before)
    try:
        if apply:
            torch.set_num_threads(n_threads)
        yield n_threads
    finally:
        torch.set_num_threads(before)


def timed_fit(fit: Callable, *args, rss: bool = True, **kwargs) -> tuple[float, float]:
    """Call ``fit(*args, **kwargs)``; (wall seconds, peak resident-memory increase in MB).

    With ``rss=False`` the memory is not sampled (NaN).
    """
    start = time.perf_counter()
    if not rss:
        fit(*args, **kwargs)
        return time.perf_counter() - start, float("nan")
    with PeakRSS() as peak:
        fit(*args, **kwargs)
    return time.perf_counter() - start, peak.increase_mb


def add_bench_subparser(
    bench_parser: argparse.ArgumentParser, name: str, help: str, description: str
) -> argparse.ArgumentParser:
    """A ``trvae bench NAME`` sub-parser beside those already registered (listed in the
    usage line)."""
    action = next(a for a in bench_parser._actions if isinstance(a, argparse._SubParsersAction))
    action.metavar = "{" + ",".join([*action.choices, name]) + "}"
    return action.add_parser(name, help=help, description=description)


def quick_or_default(args: argparse.Namespace, quick: dict | None):
    """``pick(name, default)``: the option ``name`` as given, else its ``--quick`` value (from
    ``quick`` when ``args.quick``), else ``default``."""
    quick = quick if args.quick else {}

    def pick(name: str, default):
        value = getattr(args, name)
        return value if value is not None else quick.get(name, default)

    return pick


def slug(text: str) -> str:
    """``text`` as a file-name part: runs of other characters than letters, digits, ``_.-``
    become one ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def save_fig(fig, path: Path, **savefig_kwargs) -> str:
    """Save a matplotlib figure as PNG atomically (150 dpi, tight box unless told); file name."""
    savefig_kwargs = {"dpi": 150, "bbox_inches": "tight", **savefig_kwargs}
    return save_figure(fig, path, **savefig_kwargs)


def long_rows(scores: dict, **keys) -> list[dict]:
    """Rows of a long metrics table: ``keys`` (method, cell type, ...), metric and value."""
    return [{**keys, "metric": k, "value": float(v)} for k, v in scores.items()]


def write_metrics(path: Path, rows: list[dict], columns: Sequence[str] = COLUMNS) -> pd.DataFrame:
    """The long metrics table of ``rows``, written to ``path`` as CSV (atomically)."""
    df = pd.DataFrame(rows, columns=list(columns))
    atomic_write_text(path, df.to_csv(index=False))
    return df


# ---------------------------------------------------------------------------------------------
# Tables and report text


def fmt(value: float, sd: float | None = None) -> str:
    """``value`` with 3 decimals (3 significant digits from 1000), ``± sd`` when given."""
    if value is None or not np.isfinite(value):
        return "–"
    text = f"{value:.3g}" if abs(value) >= 1000 else f"{value:.3f}"
    return text + (f" ± {sd:.3f}" if sd is not None and np.isfinite(sd) else "")


def table(df: pd.DataFrame, metric: str, methods: Sequence[str], lower: bool) -> pd.DataFrame:
    """Cell types (+ 'mean') x methods, as strings; the best value of each row in bold."""

    def wide(name: str) -> pd.DataFrame:
        rows = df[df["metric"] == name]
        table = rows.groupby(["cell_type", "method"], sort=False)["value"].mean().unstack()
        return table.reindex(index=rows["cell_type"].unique())

    sub, sds = wide(metric), wide(f"{metric}_sd")
    sub = sub.reindex(columns=[m for m in methods if m in sub.columns])
    sub.loc["mean"] = sub.mean(0)
    out = pd.DataFrame(index=sub.index, columns=sub.columns, dtype=object)
    for row, values in sub.iterrows():
        best = values.min() if lower else values.max()
        for method, value in values.items():
            sd = sds.at[row, method] if row in sds.index and method in sds.columns else None
            text = fmt(value, sd)
            out.at[row, method] = f"**{text}**" if value == best and len(values) > 1 else text
    return out


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table of cell types x columns; the ``mean`` row in bold."""
    head = ["cell type", *map(str, table.columns)]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * table.shape[1]) + "|",
    ]
    for row, values in table.iterrows():
        name = f"**{row}**" if row == "mean" else str(row)
        lines.append("| " + " | ".join([name, *map(str, values)]) + " |")
    return "\n".join(lines)


def summary_spec(*metrics: str, **titles: str) -> tuple[tuple[str, str, bool], ...]:
    """(metric, title, lower is better) of ``metrics``: :data:`METRIC_TITLES` unless ``titles``
    names another title."""
    return tuple((m, titles.get(m, METRIC_TITLES[m][0]), METRIC_TITLES[m][1]) for m in metrics)


def summary_sections(df: pd.DataFrame, spec, methods: Sequence[str]) -> list[str]:
    """A titled :func:`table` for each (metric, title, lower is better) of ``spec`` in ``df``."""
    lines: list[str] = []
    for metric, title, lower in spec:
        if (df["metric"] == metric).any():
            lines += [f"### {title}", "", markdown(table(df, metric, methods, lower)), ""]
    return lines


def run_lines(command: str, runtime: float, note: str = "") -> list[str]:
    """Report header lines: the command, the date and the total runtime (then ``note``)."""
    return [
        f"- **Command**: `{command}`",
        f"- **Date**: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- **Total runtime**: {runtime:.0f} s ({runtime / 60:.1f} min){note}",
    ]


def software_line() -> str:
    """Report header line: the versions of trvae, torch and python, and the CPU count."""
    from trvae import __version__

    return (
        f"- **Software**: trvae {__version__}, torch {torch.__version__}, python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs"
    )


# ---------------------------------------------------------------------------------------------
# Held-out-cell-type runs


@dataclass
class Split:
    """One held-out cell type: training and source cells, the real and control values, DEGs."""

    cell_type: str
    is_type: np.ndarray
    train: AnnData
    ctrl: AnnData
    real: np.ndarray
    ctrl_x: np.ndarray
    var_names: list[str]
    degs: list[str]


@dataclass
class HeldOutRun:
    """A held-out-cell-type benchmark run: keys, labels, budgets and the rows scored so far."""

    adata: AnnData
    keys: tuple[str, str, str, str]  # condition_key, cell_type_key, control, stimulated
    conds: np.ndarray
    types: np.ndarray
    cell_types: list[str]
    out: Path
    n_boot: int
    seed: int
    n_threads: int = 1
    rows: list[dict] = field(default_factory=list)
    scored: list[str] = field(default_factory=list)  # methods and their read-outs, in order

    def split(self, cell_type: str, data: AnnData, x, var_names: list[str]) -> Split:
        """Hold out ``cell_type``'s stimulated cells of ``data`` (values ``x``); pick the DEGs."""
        _, _, control, stimulated = self.keys
        is_type = self.types == cell_type
        held, ctrl_mask = is_type & (self.conds == stimulated), is_type & (self.conds == control)
        train, ctrl = data[~held].copy(), data[ctrl_mask].copy()
        real, ctrl_x = dense(x[np.flatnonzero(held)]), dense(x[np.flatnonzero(ctrl_mask)])
        degs = select_degs(real, ctrl_x, var_names, stimulated, control)
        return Split(cell_type, is_type, train, ctrl, real, ctrl_x, var_names, degs)

    def held(self, cell_type: str) -> np.ndarray:
        """Mask of the held-out cells: ``cell_type``'s stimulated cells."""
        return (self.types == cell_type) & (self.conds == self.keys[3])

    def make(self, name: str, **kwargs) -> Method:
        """The method ``name`` of :mod:`trvae_benchmarks.baselines`, with this run's keys."""
        condition_key, cell_type_key, control, stimulated = self.keys
        return make_method(
            name, condition_key=condition_key, control=control, stimulated=stimulated,
            cell_type_key=cell_type_key, **kwargs,
        )  # fmt: skip

    def evaluate(self, pred: np.ndarray, split: Split) -> dict[str, float]:
        """:func:`~trvae.metrics.evaluate_prediction` of ``pred`` against the held-out cells."""
        return evaluate_prediction(
            pred, split.real, split.ctrl_x, split.var_names, split.degs,
            n_boot=self.n_boot, seed=self.seed,
        )  # fmt: skip

    def add(self, label: str, cell_type: str, scores: dict) -> None:
        """Record the scores of one method (or read-out) on one held-out cell type."""
        self.rows += long_rows(scores, method=label, cell_type=cell_type)
        if label not in self.scored:
            self.scored.append(label)

    def frame(self) -> pd.DataFrame:
        """The rows so far, long format."""
        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    def run_all(self, score: Callable[[str], Split]) -> pd.DataFrame:
        """``score`` each cell type in turn; after each, write ``metrics.csv`` and print a line."""
        df = self.frame()
        for i, cell_type in enumerate(self.cell_types, 1):
            t0 = time.perf_counter()
            gc.collect()
            split = score(cell_type)
            df = write_metrics(self.out / "metrics.csv", self.rows)
            r2 = df[(df.cell_type == cell_type) & (df.metric == "r2_mean_top100")]
            line = " ".join(f"{m}={v:.3f}" for m, v in zip(r2.method, r2.value, strict=True))
            print(
                f"[{i}/{len(self.cell_types)}] {cell_type}: n_train={split.train.n_obs} "
                f"n_ctrl={split.ctrl.n_obs} n_real={len(split.real)} "
                f"r2_mean_top100 {line} ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
        return df

    def dataset_line(self, name: str, what: str = "") -> str:
        """Report header line: the data set, its size, the conditions and held-out cell types."""
        condition_key, cell_type_key, control, stimulated = self.keys
        return (
            f"- **Dataset**: {name} — {self.adata.n_obs} cells × {self.adata.n_vars} genes"
            f"{what}; `{condition_key}`: {control} → {stimulated}; `{cell_type_key}` held out: "
            + ", ".join(self.cell_types)
        )


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """numpy's BLAS / OpenMP pools limited to ``n`` threads in the block (with threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn (a scanpy dependency) brings it
        yield
        return
    with threadpool_limits(n):
        yield
