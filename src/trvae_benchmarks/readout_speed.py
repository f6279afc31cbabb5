"""``trvae bench readout``: the seconds of one ``predict`` call, per read-out option and gene count.

The quantile read-out (the default ``mode`` of an MSE model) costs mostly per call, not per
cell: with ``mmd_group_key`` each call rebuilds the target condition's table from training
cells (``match_state``), fits the non-zero map (``match_nonzero``) and matches the mean. For
each gene count, ``simulate_perturbation("shared")`` data (``cells_per_group`` cells per cell
type and condition) with type0's perturbed cells held out train a model with
``mmd_group_key="cell_type"`` for a few epochs (the cost does not depend on how well it fits);
type0's control cells are then predicted into the perturbed condition with the defaults, each
option switched off in turn, and ``mode="residual"``; the variants take turns, and the table
gives the fastest of ``repeats`` calls of each and the largest rise of the process's resident
memory during one (:class:`~trvae_benchmarks.memory.PeakRSS`, sampled every 20 ms). With
``groups`` two more rows time the control cells of every type predicted in one call with
``group_key="cell_type"`` and in one call per type (the same values; the one call makes what
it derives from the training data alone once).

Nothing here is a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from trvae_benchmarks.common import add_bench_subparser, quick_or_default, torch_threads
from trvae_benchmarks.memory import PeakRSS

__all__ = ["VARIANTS", "run_readout_bench"]

GENES, CELLS_PER_GROUP, MAX_EPOCHS, REPEATS = (2000, 7000, 20000), 1000, 2, 3
QUICK = {"genes": (300,), "cells_per_group": 60, "max_epochs": 1, "repeats": 1}
#: The ``predict`` calls timed: name and keyword arguments.
VARIANTS: dict[str, dict] = {
    "defaults": {},
    "match_nonzero=False": {"match_nonzero": False},
    "match_state=False": {"match_state": False},
    'mode="residual"': {"mode": "residual"},
}


def run_readout_bench(
    genes: Sequence[int] = GENES,
    cells_per_group: int = CELLS_PER_GROUP,
    max_epochs: int = MAX_EPOCHS,
    repeats: int = REPEATS,
    seed: int = 0,
    n_threads: int | None = None,
    verbose: bool = True,
    groups: bool = False,
) -> pd.DataFrame:
    """Time ``predict`` per :data:`VARIANTS` entry and gene count; returns and prints the table
    (columns ``genes``, ``cells``, ``predict``, ``seconds``: the fastest of ``repeats``, and
    ``peak_mb``: the largest rise of resident memory during a call, MiB,
    :attr:`~trvae_benchmarks.memory.PeakRSS.increase_mb`).

    Examples
    --------
    >>> from trvae_benchmarks.readout_speed import run_readout_bench
    >>> table = run_readout_bench(genes=(50,), cells_per_group=20, max_epochs=1, repeats=1,
    ...                           verbose=False)
    >>> table["predict"].tolist()[:2]
    ['defaults', 'match_nonzero=False']
    """
    from trvae.datasets import simulate_perturbation
    from trvae.model import TRVAE

    rows = []
    with torch_threads(n_threads) as n_threads:
        for n_genes in genes:
            adata = simulate_perturbation(
                "shared", n_genes=n_genes, seed=seed, cells_per_group=cells_per_group
            )
            own = adata.obs["cell_type"] == "type0"
            control = adata.obs["condition"] == "control"
            cells = adata[own & control].copy()
            model = TRVAE(
                adata[~(own & ~control)].copy(),
                condition_key="condition",
                mmd_group_key="cell_type",
                seed=seed,
            )
            model.train(max_epochs=max_epochs, progress_bar=False, seed=seed)
            seconds = {name: [] for name in VARIANTS}
            peaks = {name: [] for name in VARIANTS}
            for _ in range(repeats):
                for name, kwargs in VARIANTS.items():
                    with PeakRSS() as rss:
                        start = time.perf_counter()
                        model.predict(cells, target_condition="stimulated", seed=seed, **kwargs)
                        seconds[name].append(time.perf_counter() - start)
                    peaks[name].append(rss.increase_mb)
            for name, times in seconds.items():
                row = {"genes": n_genes, "cells": len(cells), "predict": name}
                rows.append(row | {"seconds": min(times), "peak_mb": max(peaks[name])})
            if groups:
                rows += _group_rows(model, adata[control.to_numpy()].copy(), repeats, seed)
    table = pd.DataFrame(rows)
    if verbose:
        print(f"predict seconds (fastest of {repeats}, {n_threads} CPU threads)", flush=True)
        formats = {"seconds": "{:.4f}".format, "peak_mb": "{:.0f}".format}
        print(table.to_string(index=False, formatters=formats), flush=True)
    return table


def _group_rows(model, cells, repeats: int, seed: int) -> list[dict]:
    """The rows of ``groups``: ``cells`` (every type) predicted with ``group_key`` and per type."""
    labels = cells.obs["cell_type"].to_numpy()

    def one_call():
        return model.predict(cells, "stimulated", seed=seed, group_key="cell_type").X

    def per_group():
        out = np.empty(cells.shape, dtype=np.float32)
        for group in pd.unique(labels):
            rows = labels == group
            out[rows] = model.predict(cells[rows], "stimulated", seed=seed).X
        return out

    found, values = [], {}
    for _ in range(repeats):
        for name, call in (('group_key="cell_type"', one_call), ("each group alone", per_group)):
            with PeakRSS() as rss:
                start = time.perf_counter()
                values[name] = call()
                seconds = time.perf_counter() - start
            found.append((name, seconds, rss.increase_mb))
    if not np.array_equal(*values.values()):
        raise RuntimeError("group_key and per-group calls predicted different values")
    table = pd.DataFrame(found, columns=["predict", "seconds", "peak_mb"])
    best = table.groupby("predict", sort=False).agg({"seconds": "min", "peak_mb": "max"})
    return [
        {"genes": cells.n_vars, "cells": cells.n_obs, "predict": name, **best.loc[name]}
        for name in best.index
    ]


def add_readout_parser(bench_parser: argparse.ArgumentParser) -> None:
    """Register ``trvae bench readout`` beside ``trvae bench speed``."""
    s = add_bench_subparser(
        bench_parser,
        "readout",
        help="seconds of one predict call per read-out option and gene count",
        description=__doc__.split("\n\n")[0],
    )
    s.add_argument("--quick", action="store_true", help="300 genes, 60 cells per group, once")
    s.add_argument("--genes", type=int, nargs="+", metavar="N", help="default: 2000 7000 20000")
    s.add_argument("--cells-per-group", type=int, help=f"default {CELLS_PER_GROUP}")
    s.add_argument("--max-epochs", type=int, help=f"default {MAX_EPOCHS}")
    s.add_argument("--repeats", type=int, help=f"default {REPEATS}")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    s.add_argument(
        "--groups",
        action="store_true",
        help="also time every type's control cells: one call with group_key, one call per type",
    )


def readout_command(args: argparse.Namespace) -> int:
    """Run ``trvae bench readout`` from parsed arguments."""
    pick = quick_or_default(args, QUICK)

    run_readout_bench(
        genes=tuple(pick("genes", GENES)),
        cells_per_group=pick("cells_per_group", CELLS_PER_GROUP),
        max_epochs=pick("max_epochs", MAX_EPOCHS),
        repeats=pick("repeats", REPEATS),
        seed=args.seed,
        n_threads=args.threads,
        groups=args.groups,
    )
    return 0
