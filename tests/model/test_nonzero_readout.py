"""``predict(match_nonzero=True)``: the quantile read-out's non-zero match
(:mod:`trvae.module.nonzero`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trvae
from trvae import TRVAE
from trvae.module import nonzero

QUIET = {"progress_bar": False, "batch_size": 32, "accelerator": "cpu"}


@pytest.fixture(scope="module")
def fitted():
    adata = trvae.datasets.simulate_perturbation("shared", n_genes=60, cells_per_group=40)
    model = TRVAE(adata, "condition", n_hidden=(32,), n_latent=4, n_mmd=16)
    model.train(max_epochs=5, **QUIET)
    is_held = (adata.obs["cell_type"] == "type0") & (adata.obs["condition"] == "control")
    return model, adata[is_held].copy()


def test_fractions_move_half_way_to_the_cells_curve_and_the_mean_stays(fitted):
    model, control = fitted
    off = model.predict(control, "stimulated", match_nonzero=False, accelerator="cpu")
    on = model.predict(control, "stimulated", accelerator="cpu")
    assert "nonzero_matched" not in off.uns["trvae_prediction"]
    moved = on.uns["trvae_prediction"]["nonzero_matched"]
    assert 0 < moved <= control.n_vars
    assert list(on.obs_names) == list(control.obs_names)
    assert list(on.var_names) == list(off.var_names)
    a, b = np.asarray(off.X, dtype=np.float64), np.asarray(on.X, dtype=np.float64)
    n = len(a)
    # the map starts from the read-out without it (all cells fit it: fewer than 4096)
    x = control.X.toarray() if hasattr(control.X, "toarray") else np.asarray(control.X)
    curve = nonzero.nonzero_curve(torch.as_tensor(x), 0.0)
    on_curve = np.interp(a.mean(0), *curve)
    before, after = (a > 0).mean(0), (b > 0).mean(0)
    changed = np.abs(after - before) > 0
    assert changed.sum() >= moved // 2
    np.testing.assert_allclose(
        after - on_curve, (before - on_curve) / 2, atol=1.0 / n + 1e-9, rtol=0
    )
    # both means are the mean match's; without the map it is met to within one snap to the
    # floor, (detection - x_min) / n (test_quantile_readout.py)
    detection = model.module.readout.detection.numpy()
    assert (np.abs(b.mean(0) - a.mean(0)) <= detection / n + 1e-4).all()
    # each gene keeps the order of its cells above the floor (cells tied before the map may be
    # ordered either way: the tie noise ranks them, so ties are sorted by their mapped value)
    for g in np.flatnonzero(changed):
        both = (a[:, g] > 0) & (b[:, g] > 0)
        order = np.lexsort((b[both, g], a[both, g]))
        assert (np.diff(b[both, g][order]) >= -1e-5).all()
        assert (b[b[:, g] > 0, g] >= detection[g] - 1e-6).all()


def test_non_zero_match_is_seeded(fitted):
    model, control = fitted
    a = model.predict(control, "stimulated", seed=3, accelerator="cpu").X
    np.testing.assert_array_equal(
        a, model.predict(control, "stimulated", seed=3, accelerator="cpu").X
    )


def test_group_key_passes_the_option(fitted):
    model, control = fitted
    pred = model.predict(
        control, "stimulated", group_key="cell_type", match_nonzero=False, accelerator="cpu"
    )
    expected = model.predict(control, "stimulated", match_nonzero=False, accelerator="cpu")
    np.testing.assert_array_equal(pred.X, expected.X)
