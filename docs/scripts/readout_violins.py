"""Violins of the residual and the quantile read-out, NK held out of the Kang data.

Run from the repository root: ``python docs/scripts/readout_violins.py``. Trains what a user gets
(``TRVAE(train, condition_key="condition", mmd_group_key="cell_type")``, ``train(seed=0)``) on
the Kang file without the stimulated NK cells, predicts them from the control NK cells with
both read-outs (anchor 0, so that only the read-out differs) and writes
``docs/figures/nk_violin_{residual,quantile}.png``; prints the top-100 DEG scores of each
read-out.
"""

from __future__ import annotations

from pathlib import Path

import torch

import trvae
from trvae.metrics import evaluate_prediction, top_degs

GENES = ["ISG15", "IFI6", "ISG20", "IFIT3", "MX1"]
OUT = Path("docs/figures")


def main() -> None:
    torch.set_num_threads(1)
    adata = trvae.datasets.kang_pbmc()
    nk = (adata.obs["cell_type"] == "NK").to_numpy()
    stim = (adata.obs["condition"] == "stimulated").to_numpy()
    model = trvae.TRVAE(adata[~(nk & stim)].copy(), "condition", mmd_group_key="cell_type")
    model.train(seed=0, progress_bar=False, accelerator="cpu")
    control, real = adata[nk & ~stim], adata[nk & stim]
    degs = top_degs(adata[nk], "condition", "stimulated", "control")
    genes = [g for g in GENES if g in adata.var_names]
    OUT.mkdir(parents=True, exist_ok=True)
    for mode in ("residual", "quantile"):
        pred = model.predict(control, "stimulated", mode=mode, anchor=0, accelerator="cpu")
        scores = evaluate_prediction(pred.X, real.X, control.X, adata.var_names, degs, n_boot=10)
        keys = ("r2_mean_top100", "r2_var_top100", "edist_top100", "wasserstein_top100")
        print(mode, {k: round(scores[k], 3) for k in keys})
        trvae.pl.response_violin(
            control.X, pred.X, real.X, adata.var_names, genes, save=OUT / f"nk_violin_{mode}.png"
        )


if __name__ == "__main__":
    main()
