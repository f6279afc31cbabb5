"""TRVAEEnsemble: members across seeds, combined predictions, per-gene uncertainty, save/load."""

from __future__ import annotations

import numpy as np
import pytest

import trvae
from trvae import TRVAEEnsemble, TRVAEError

TINY = {"n_hidden": (16,), "n_latent": 4}
TRAIN = {"max_epochs": 3, "progress_bar": False, "accelerator": "cpu"}


@pytest.fixture(scope="module")
def adata():
    return trvae.datasets.simulate_perturbation("shared", n_genes=30, cells_per_group=20)


@pytest.fixture(scope="module")
def ensemble(adata):
    return TRVAEEnsemble(adata, "condition", n_models=3, **TINY).train(**TRAIN)


def test_members_differ_only_in_seed(ensemble):
    seeds = [m.init_params["seed"] for m in ensemble.members]
    assert seeds == [0, 1, 2]
    rest = [{k: v for k, v in m.init_params.items() if k != "seed"} for m in ensemble.members]
    assert rest[0] == rest[1] == rest[2]


def test_prediction_is_the_member_mean_with_its_spread(ensemble, adata):
    control = adata[adata.obs["condition"] == "control"]
    pred = ensemble.predict(control, "stimulated", combine="average", accelerator="cpu")
    members = np.stack(
        [m.predict(control, "stimulated", accelerator="cpu").X for m in ensemble.members]
    )
    np.testing.assert_allclose(pred.X, members.mean(0), rtol=1e-5, atol=1e-6)
    assert pred.uns["trvae_ensemble"]["combine"] == "average"
    assert pred.layers["trvae_sd"].shape == control.shape
    np.testing.assert_allclose(pred.layers["trvae_sd"], members.std(0, ddof=1), atol=1e-5)
    means = members.mean(1)  # members x genes
    np.testing.assert_allclose(pred.var["trvae_mean_sd"], means.std(0, ddof=1), atol=1e-5)
    assert (pred.var["trvae_mean_sd"] > 0).all()  # the seeds disagree somewhat
    assert list(pred.obs_names) == list(control.obs_names)
    assert pred.uns["trvae_ensemble"]["n_models"] == 3
    source_mean = np.asarray(control.X.mean(0)).ravel()
    np.testing.assert_allclose(
        pred.var["trvae_response"], pred.var["trvae_mean"] - source_mean, atol=1e-5
    )
    # no mmd_group_key: one group, so no spread between groups to make an interval from
    assert pred.var["trvae_response_sd"].isna().all() and pred.var["trvae_response_hi"].isna().all()


def test_group_key_centres_each_groups_response_on_the_members(adata):
    ensemble = TRVAEEnsemble(adata, "condition", n_models=2, mmd_group_key="cell_type", **TINY)
    ensemble.train(**TRAIN)
    control = adata[adata.obs["condition"] == "control"]
    pred = ensemble.predict(control, "stimulated", group_key="cell_type", accelerator="cpu")
    labels = control.obs["cell_type"].astype(str).to_numpy()
    response = pred.varm["trvae_response"]
    assert sorted(response.columns) == sorted(set(labels))
    for group in response.columns:
        cells = control[labels == group]
        members = [
            m.predict(cells, "stimulated", accelerator="cpu").X.mean(0) for m in ensemble.members
        ]
        source = np.asarray(cells.X.mean(0)).ravel()
        np.testing.assert_allclose(response[group], np.mean(members, 0) - source, atol=1e-5)
        width = pred.varm["trvae_response_hi"][group] - pred.varm["trvae_response_lo"][group]
        assert (width > 0).all()
        first = ensemble.members[0].predict(cells, "stimulated", accelerator="cpu").var
        np.testing.assert_allclose(  # moved, not widened
            width, first["trvae_response_hi"] - first["trvae_response_lo"], atol=1e-5
        )


def test_distribution_read_outs_are_pooled_as_a_mixture(ensemble, adata):
    """The default read-out (quantile) takes cell i from member i mod 3, keeping the members'
    spread; expected values (residual read-out) are averaged; the SD layer is the same."""
    control = adata[adata.obs["condition"] == "control"]
    members = np.stack(
        [m.predict(control, "stimulated", accelerator="cpu").X for m in ensemble.members]
    )
    pred = ensemble.predict(control, "stimulated", accelerator="cpu")
    assert pred.uns["trvae_ensemble"]["combine"] == "mixture"
    rows = np.arange(control.n_obs)
    np.testing.assert_array_equal(pred.X, members[rows % 3, rows])
    assert pred.X.var(0).mean() > members.mean(0).var(0).mean()  # averaging narrows
    np.testing.assert_allclose(pred.layers["trvae_sd"], members.std(0, ddof=1), atol=1e-5)
    residual = ensemble.predict(control, "stimulated", mode="residual", accelerator="cpu")
    assert residual.uns["trvae_ensemble"]["combine"] == "average"
    with pytest.raises(TRVAEError, match="combine"):
        ensemble.predict(control, "stimulated", combine="median", accelerator="cpu")


def test_deterministic_and_save_load(ensemble, adata, tmp_path):
    again = TRVAEEnsemble(adata, "condition", n_models=3, **TINY).train(**TRAIN)
    cells = adata[:10]
    first = ensemble.predict(cells, "stimulated", accelerator="cpu")
    np.testing.assert_array_equal(first.X, again.predict(cells, "stimulated", accelerator="cpu").X)
    ensemble.save(tmp_path / "ens")
    with pytest.raises(TRVAEError, match="exists"):
        ensemble.save(tmp_path / "ens")
    loaded = TRVAEEnsemble.load(tmp_path / "ens")
    np.testing.assert_array_equal(loaded.predict(cells, "stimulated", accelerator="cpu").X, first.X)
    with pytest.raises(trvae.ModelLoadError):
        TRVAEEnsemble.load(tmp_path / "missing")
    with pytest.raises(TRVAEError, match="n_models"):
        TRVAEEnsemble(adata, "condition", n_models=0)
    with pytest.raises(TRVAEError, match=r"n_models must be an integer >= 1, got 2\.5"):
        TRVAEEnsemble(adata, "condition", n_models=2.5)
