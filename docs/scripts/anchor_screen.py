"""Screen the ``anchor`` weight by leave-one-group-out on development sets of the suite.

Usage: ``python docs/scripts/anchor_screen.py shared,specific,unequal,kang-counts out.csv``.
One default fit per held-out group; ``predict(anchor=w)`` for each weight, the two mean shifts,
all scored with :func:`trvae.metrics.evaluate_prediction` on the top-100 DEGs. Evidence for
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

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def main(sets: str, out: str) -> None:
    torch.set_num_threads(1)
    rows = []
    for k, ds, group, fold, t0 in iter_folds([load_set(name) for name in sets.split(",")]):
        torch.set_num_threads(1)  # scanpy's DEG test resets it
        model = TRVAE(fold.train, condition_key=ds.condition_key, mmd_group_key=ds.group_key)
        model.train(progress_bar=False)
        for p, real in fold.real.items():
            degs = select_degs(real, fold.ctrl_x, fold.var_names, p, ds.control)
            preds = {
                f"w={w}": dense(model.predict(fold.ctrl, target_condition=p, anchor=w).X)
                for w in WEIGHTS
            }
            for name, key in (("mean shift", ds.group_key), ("mean shift (all)", None)):
                method = make_method(
                    "mean_shift", condition_key=ds.condition_key, control=ds.control,
                    stimulated=p, cell_type_key=key,
                )  # fmt: skip
                preds[name] = method.fit(fold.train).predict(fold.ctrl)
            for name, x in preds.items():
                scores = evaluate_prediction(x, real, fold.ctrl_x, fold.var_names, degs, n_boot=5)
                rows.append({"set": ds.name, "row": f"{group}:{p}", "method": name, **scores})
        print(k, ds.name, group, f"{time.perf_counter() - t0:.0f}s", flush=True)
        pd.DataFrame(rows).to_csv(out, index=False)


if __name__ == "__main__":
    main(*sys.argv[1:3])
