"""Screen the ``anchor`` weight by leave-one-group-out on development sets of the suite.

Usage: ``python docs/scripts/anchor_screen.py shared,specific,unequal,kang-counts out.csv``,
then ``python docs/scripts/anchor_screen.py --summary out.csv [more.csv ...]``.
One default fit per held-out group; ``predict(anchor=w)`` for each weight and for ``"auto"``,
the two mean shifts, all scored with :func:`trvae.metrics.evaluate_prediction` on the top-100
DEGs; each row also records the fit's state ratio (:func:`trvae.module.anchor.state_ratio`).
The summary counts per set the rows each weight wins on both Pearson-Δ and E-distance against
the better mean shift (ties as in the suite) and its median R². Evidence for
``docs/choosing-parameters.md``; not part of the package.
"""

import sys
import time

import pandas as pd
import torch

from trvae import TRVAE
from trvae.metrics import evaluate_prediction
from trvae_benchmarks.baselines import dense, make_method
from trvae_benchmarks.common import select_degs
from trvae_benchmarks.suite import iter_folds, load_set

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, "auto")
SHIFTS = ("mean shift", "mean shift (all)")


def main(sets: str, out: str) -> None:
    torch.set_num_threads(1)
    rows = []
    for k, ds, group, fold, t0 in iter_folds([load_set(name) for name in sets.split(",")]):
        torch.set_num_threads(1)  # scanpy's DEG test resets it
        model = TRVAE(fold.train, condition_key=ds.condition_key, mmd_group_key=ds.group_key)
        model.train(progress_bar=False)
        for p, real in fold.real.items():
            codes = [model.conditions_.index(c) for c in (ds.control, p)]
            ratio = model.module.mean_shifts.ratio(*codes)
            degs = select_degs(real, fold.ctrl_x, fold.var_names, p, ds.control)
            preds = {
                f"w={w}": dense(model.predict(fold.ctrl, target_condition=p, anchor=w).X)
                for w in WEIGHTS
            }
            for name, key in zip(SHIFTS, (ds.group_key, None), strict=True):
                method = make_method(
                    "mean_shift", condition_key=ds.condition_key, control=ds.control,
                    stimulated=p, cell_type_key=key,
                )  # fmt: skip
                preds[name] = method.fit(fold.train).predict(fold.ctrl)
            for name, x in preds.items():
                scores = evaluate_prediction(x, real, fold.ctrl_x, fold.var_names, degs, n_boot=5)
                keys = {"set": ds.name, "row": f"{group}:{p}", "method": name}
                rows.append({**keys, "state_ratio": ratio, **scores})
        print(k, ds.name, group, f"{time.perf_counter() - t0:.0f}s", flush=True)
        pd.DataFrame(rows).to_csv(out, index=False)


def summary(paths: list[str]) -> pd.DataFrame:
    """Per set and weight: rows won on both headline metrics, median R² (top-100)."""
    from trvae_benchmarks.suite_scores import compare

    df = pd.concat([pd.read_csv(path) for path in paths])
    out = []
    for (name, _), rows in df.groupby(["set", "row"], sort=False):
        rows = rows.set_index("method")
        pearson = rows.loc[list(SHIFTS), "delta_pearson_top100"].max()
        edist = rows.loc[list(SHIFTS), "edist_top100"].min()
        for method in [f"w={w}" for w in WEIGHTS]:
            won = compare(rows.loc[method, "delta_pearson_top100"], pearson, "delta_pearson_top100")
            won += compare(rows.loc[method, "edist_top100"], edist, "edist_top100")
            r2 = rows.loc[method, "r2_mean_top100"]
            out.append({"set": name, "method": method, "win": won == 2, "r2": r2})
        best = rows.loc[list(SHIFTS), "r2_mean_top100"].max()
        out.append({"set": name, "method": "mean shift", "win": False, "r2": best})
    table = pd.DataFrame(out).groupby(["set", "method"], sort=False)
    return table.agg(win=("win", "sum"), rows=("win", "size"), r2=("r2", "median")).round(3)


if __name__ == "__main__":
    if sys.argv[1] == "--summary":
        print(summary(sys.argv[2:]).to_string())
    else:
        main(*sys.argv[1:3])
