"""The anchor's local mean shift: its ratio fitted after training, and predictions that take it."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from trvae import TRVAE

TINY = {"n_hidden": (32,), "n_latent": 4}
QUIET = {"max_epochs": 30, "progress_bar": False, "accelerator": "cpu"}


def mixed_donors(n_donors: int = 5, n: int = 120, g: int = 20, seed: int = 0) -> ad.AnnData:
    """Donors holding two cell states in their own proportions (0.1 .. 0.9 of state A); each
    state has its own response, so a donor's mean response is its own mix of the two."""
    rng = np.random.default_rng(seed)
    centre = {"A": rng.normal(0, 2, g), "B": rng.normal(0, 2, g)}
    response = {"A": rng.normal(0, 2, g), "B": rng.normal(0, 2, g)}
    blocks, obs = [], []
    for k, share in enumerate(np.linspace(0.1, 0.9, n_donors)):
        for condition in ("control", "stimulated"):
            states = np.where(rng.random(n) < share, "A", "B")
            x = np.stack([centre[s] for s in states]) + rng.normal(0, 0.5, (n, g))
            if condition == "stimulated":
                x += np.stack([response[s] for s in states])
            blocks.append(x)
            obs += [(condition, f"d{k}", s) for s in states]
    frame = pd.DataFrame(obs, columns=["condition", "donor", "state"])
    frame.index = frame.index.astype(str)
    return ad.AnnData(np.vstack(blocks).astype(np.float32), obs=frame)


@pytest.fixture(scope="module")
def fitted():
    adata = mixed_donors()
    held = (adata.obs["donor"] == "d0").to_numpy()
    stimulated = (adata.obs["condition"] == "stimulated").to_numpy()
    model = TRVAE(adata[~(held & stimulated)].copy(), "condition", mmd_group_key="donor", **TINY)
    model.train(**QUIET)
    return model, adata[held & ~stimulated].copy(), adata[held & stimulated].copy()


def test_local_shift_follows_the_held_out_donors_mix(fitted):
    model, control, real = fitted
    table = model.anchor_weights().set_index(["source", "target"])
    ratio = table.loc[("control", "stimulated"), "local_ratio"]
    assert 0 <= ratio < 1  # the donors' responses are their mixes of the states' responses
    local = model.predict(control, "stimulated", anchor=1.0)
    pooled = model.predict(control, "stimulated", anchor=1.0, local_shift=False)
    info = local.uns["trvae_prediction"]
    assert info["local_shift"] == ["control"]
    assert pooled.uns["trvae_prediction"]["local_shift"] == []
    assert info["local_ratio"] == {"control": pytest.approx(ratio)}
    truth = real.X.mean(0) - control.X.mean(0)
    error = {
        name: float(((pred.X.mean(0) - control.X.mean(0) - truth) ** 2).sum())
        for name, pred in (("local", local), ("pooled", pooled))
    }
    assert error["local"] < 0.5 * error["pooled"]
    # obs and genes kept, seeded
    assert list(local.obs_names) == list(control.obs_names) and local.shape == control.shape
    again = model.predict(control, "stimulated", anchor=1.0)
    np.testing.assert_array_equal(local.X, again.X)
    # without an anchor nothing is anchored, locally or not
    free = model.predict(control, "stimulated", anchor=0.0)
    assert "local_shift" not in free.uns["trvae_prediction"]
    np.testing.assert_array_equal(
        free.X, model.predict(control, "stimulated", anchor=0.0, local_shift=False).X
    )


def test_local_shift_needs_the_training_data(fitted, tmp_path):
    model, control, _ = fitted
    model.save(tmp_path / "model")
    alone = TRVAE.load(tmp_path / "model")
    assert alone.anchor_weights()["local_ratio"].tolist() == pytest.approx(
        model.anchor_weights()["local_ratio"].tolist()
    )
    with pytest.warns(UserWarning, match="local mean shift"):
        pred = alone.predict(control, "stimulated", anchor=1.0, match_state=False)
    assert pred.uns["trvae_prediction"]["local_shift"] == []
    pooled = model.predict(control, "stimulated", anchor=1.0, match_state=False, local_shift=False)
    np.testing.assert_array_equal(pred.X, pooled.X)
    with_data = TRVAE.load(tmp_path / "model", adata=model.adata)
    np.testing.assert_array_equal(
        with_data.predict(control, "stimulated", anchor=1.0).X,
        model.predict(control, "stimulated", anchor=1.0).X,
    )


def test_no_local_ratio_without_three_paired_groups():
    adata = mixed_donors(n_donors=2, n=40)
    model = TRVAE(adata, "condition", mmd_group_key="donor", **TINY).train(**QUIET)
    assert model.anchor_weights()["local_ratio"].isna().all()
    ungrouped = TRVAE(adata, "condition", **TINY).train(**QUIET)
    assert math.isnan(ungrouped.module.mean_shifts.local(0, 1))
    control = adata[adata.obs["condition"] == "control"]
    assert (
        ungrouped.predict(control, "stimulated", anchor=1.0).uns["trvae_prediction"]["local_shift"]
        == []
    )


def test_group_key_reuses_the_training_data_and_forgets_it(fitted):
    """predict(group_key=...) makes the training data's parts once (local pool, CellData) and
    gives what predicting each group alone gives; nothing is kept after the call."""
    model, control, real = fitted
    both = ad.concat([control, real[:40]])  # two groups: held-out donor d0 and a second, "x"
    both.obs["batch"] = np.repeat(["d0", "x"], [control.n_obs, 40])
    both.obs["condition"] = "control"
    made = []
    pool = model._local_pool
    model._local_pool = lambda *args: made.append(1) or pool(*args)
    try:
        grouped = model.predict(both, "stimulated", anchor=1.0, group_key="batch")
    finally:
        del model._local_pool
    assert grouped.uns["trvae_prediction"]["local_shift"] == ["control"]
    assert len(made) == 1  # once for both groups
    assert getattr(model, "_reuse", None) is None
    for name in ("d0", "x"):
        rows = (both.obs["batch"] == name).to_numpy()
        alone = model.predict(both[rows], "stimulated", anchor=1.0)
        np.testing.assert_array_equal(grouped.X[rows], alone.X)
    with pytest.raises(ValueError, match="nope"):  # a failing call leaves nothing behind either
        with model._reusing_training_data():
            model._reused("training", lambda: 1)
            raise ValueError("nope")
    assert getattr(model, "_reuse", None) is None
