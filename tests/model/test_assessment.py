"""TRVAE.assess: pseudo-held-out groups of the training data, scored next to the mean shift."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from trvae import TRVAE, TRVAEError
from trvae.metrics import r2_var

TINY = {"n_hidden": (32,), "n_latent": 4}
BUDGET = {"max_epochs": 40, "accelerator": "cpu"}


def continuum(response_slope: float, n_groups: int = 6, n: int = 40, g: int = 20) -> ad.AnnData:
    """Groups along a line in gene space; the response is ``d + position * slope * w``.

    With slope 0 every group has the same additive response, which the mean shift of the other
    groups estimates without bias: nothing can beat it. With a slope the response depends on
    the group's position, which trVAE learns from the other groups and the mean shift misses.
    """
    rng = np.random.default_rng(0)
    v, d, w = rng.normal(0, 1, g), rng.normal(0, 1, g), rng.normal(0, 1.5, g)
    blocks, groups, conditions = [], [], []
    for k in range(n_groups):
        position = 2 * k / (n_groups - 1) - 1
        for condition in ("control", "stimulated"):
            x = 2 * position * v + rng.normal(0, 0.5, (n, g))
            if condition == "stimulated":
                x = x + d + position * response_slope * w
            blocks.append(x)
            groups += [f"g{k}"] * n
            conditions += [condition] * n
    obs = pd.DataFrame(
        {"condition": conditions, "group": groups}, index=[str(i) for i in range(len(groups))]
    )
    return ad.AnnData(np.vstack(blocks).astype(np.float32), obs=obs)


def test_trvae_wins_where_the_response_depends_on_the_group():
    model = TRVAE(continuum(1.0), condition_key="condition", mmd_group_key="group", **TINY)
    table = model.assess("group", groups=["g1"], **BUDGET)
    assert table[["group", "target"]].drop_duplicates().values.tolist() == [["g1", "stimulated"]]
    assert table["anchor"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    row = table.iloc[0]
    assert row["beats_mean_shift"]
    assert row["delta_pearson"] > row["delta_pearson_mean_shift"] + 0.2
    # the shape: the mean shift keeps the control cells' variances (all 20 genes are scored)
    adata = model.adata
    cells = adata.obs["group"] == "g1"
    stim, ctrl = (adata.X[cells & (adata.obs["condition"] == c)] for c in ("stimulated", "control"))
    assert row["r2_var_mean_shift"] == pytest.approx(r2_var(ctrl, stim))
    assert 0 <= row["r2_var"] <= 1
    # anchor="auto" (the refit's state ratio) keeps trVAE's own response, but the local mean
    # shift (the refit's local ratio is below 1: anchor 1 takes it) follows the position too
    # and is closer still: assess chooses it
    assert table.loc[table["own"], "anchor"].tolist() == [0.0]
    assert table.attrs["anchor_ranks"][1.0] < table.attrs["anchor_ranks"][0.0]
    assert table.attrs["anchor"] == 1.0 == model.init_params["anchor"]
    ranked = table.set_index("anchor")["edist"]
    assert ranked[1.0] < ranked[0.0] < row["edist_mean_shift"]
    assert table.attrs["verdict"].startswith("beat the mean shift in 1 of 1")
    assert "anchor 1 (chosen here" in table.attrs["verdict"]
    assert model.assessment_ is table


def test_mean_shift_wins_where_the_response_is_one_additive_shift():
    adata = continuum(0.0)
    model = TRVAE(adata, condition_key="condition", mmd_group_key="group", anchor=0.0, **TINY)
    table = model.assess("group", groups=["g1"], **BUDGET)
    row = table.iloc[0]  # trVAE's own response
    assert not row["beats_mean_shift"]
    assert row["edist_mean_shift"] < row["edist"]
    # moving the response toward the mean shift scores better: the choice is kept in the model
    assert table.attrs["anchor"] >= 0.5 and model.init_params["anchor"] == table.attrs["anchor"]
    assert "(chosen here" in table.attrs["verdict"]
    # anchor="auto" reads the same off the training groups: their states say nothing of their
    # responses (one shared shift), so each refit anchors at least half-way
    auto = TRVAE(adata, condition_key="condition", mmd_group_key="group", **TINY)
    assert auto.init_params["anchor"] == "auto"
    assert (auto.assess("group", groups=["g1"], **BUDGET).query("own")["anchor"] >= 0.5).all()
    kept = TRVAE(continuum(0.0), "condition", mmd_group_key="group", anchor=0.25, **TINY)
    kept.assess("group", groups=["g1"], choose_anchor=False, anchors=None, **BUDGET)
    assert kept.init_params["anchor"] == 0.25 and len(kept.assessment_) == 1
    assert "anchor 0.25 (the model's" in kept.assessment_.attrs["verdict"]


def test_assess_choices_and_errors():
    adata = continuum(1.0)
    model = TRVAE(adata, condition_key="condition", **TINY)
    with pytest.raises(TRVAEError, match="lack"):
        model.assess("group", groups=["nope"], **BUDGET)
    with pytest.raises(TRVAEError, match="control condition"):
        model.assess("group", control="nope", **BUDGET)
    for n_groups in (0, 2.5):
        with pytest.raises(TRVAEError, match=f"n_groups must be an integer >= 1, got {n_groups}"):
            model.assess("group", n_groups=n_groups, **BUDGET)
    adata.obs["lonely"] = "one"
    with pytest.raises(TRVAEError, match="two groups"):
        TRVAE(adata, condition_key="condition", **TINY).assess("lonely", **BUDGET)


def test_assess_calibrates_the_response_interval():
    adata = continuum(1.0)
    model = TRVAE(adata, condition_key="condition", mmd_group_key="group", **TINY)
    model.train(max_epochs=40, accelerator="cpu", progress_bar=False)
    source = adata[(adata.obs["group"] == "g1").to_numpy() & (adata.obs["condition"] == "control")]
    before = model.predict(source, "stimulated", accelerator="cpu")
    table = model.assess("group", groups=["g1", "g4"], anchors=None, **BUDGET)
    scale = table.attrs["interval_scale"]
    assert np.isfinite(scale) and scale > 0 and scale != 1.0
    assert table["interval_coverage"].between(0, 1).all()
    assert f"x{scale:.2f}" in table.attrs["verdict"]
    after = model.predict(source, "stimulated", accelerator="cpu")
    np.testing.assert_allclose(
        after.var["trvae_response_sd"], scale * before.var["trvae_response_sd"], rtol=1e-5
    )
    np.testing.assert_allclose(after.var["trvae_response"], before.var["trvae_response"])
    assert after.uns["trvae_prediction"]["response_interval"]["scale"] == pytest.approx(scale)
    kept = TRVAE(adata, condition_key="condition", mmd_group_key="group", **TINY)
    kept.train(max_epochs=40, accelerator="cpu", progress_bar=False)
    again = kept.assess("group", groups=["g1", "g4"], anchors=None, calibrate=False, **BUDGET)
    measured = again.attrs["interval_scale"]
    assert np.isfinite(measured) and measured > 0 and "would need" in again.attrs["verdict"]
    assert kept.module.mean_shifts.scale.item() == 1.0


def test_interval_scale_covers_the_nominal_level():
    from trvae.model._assessment import _interval_scale

    ratios = [np.linspace(0.1, 2.0, 20), np.array([np.nan, 0.5, 3.0])]
    scale = _interval_scale(ratios)
    pooled = np.concatenate(ratios)
    pooled = pooled[np.isfinite(pooled)]
    assert np.mean(pooled / scale <= 1) >= 0.9 > np.mean(pooled / (0.99 * scale) <= 1)
    assert np.isnan(_interval_scale([np.array([np.nan])]))
