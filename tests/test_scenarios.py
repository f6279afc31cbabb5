"""Tests for trvae.datasets.simulate_perturbation's development scenarios."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from trvae._errors import TRVAEError
from trvae.datasets import expected_log_means, simulate_perturbation

SMALL = {"n_genes": 60, "cells_per_group": 200}


def test_cell_type_scenarios_have_no_donors():
    adata = simulate_perturbation("shared", **SMALL)
    assert "donor" not in adata.obs
    assert adata.uns["simulation"]["true_log_effect"].shape == (5, 2, 60)


def test_donors_hold_the_same_states_in_their_own_proportions():
    adata = simulate_perturbation("donors", **SMALL)
    obs = adata.obs
    assert adata.n_obs == 5 * 2 * 200
    assert sorted(obs["donor"].unique()) == [f"donor{d}" for d in range(5)]
    assert sorted(obs["cell_type"].unique()) == ["state0", "state1", "state2"]
    # every donor has both conditions, in equal numbers
    per_donor = pd.crosstab(obs["donor"], obs["condition"])
    assert (per_donor.to_numpy() == 200).all()
    # the proportions of the states differ between donors but not between a donor's conditions
    share = pd.crosstab([obs["donor"], obs["condition"]], obs["cell_type"], normalize="index")
    control = share.xs("control", level="condition")
    stimulated = share.xs("stimulated", level="condition")
    assert np.abs(control.to_numpy() - stimulated.to_numpy()).max() < 0.15
    assert (control.max() - control.min()).max() > 0.2


def test_donor_responses_belong_to_the_state():
    adata = simulate_perturbation("donors", **SMALL)
    effect = adata.uns["simulation"]["true_log_effect"]
    assert effect.shape == (5, 3, 2, 60)  # donors x states x conditions x genes
    assert np.all(effect[:, :, 0] == 0)  # the control has no effect
    response = effect[:, :, 1]
    # the states respond differently ...
    assert np.abs(response[0, 0] - response[0, 1]).max() > 0.1
    # ... and two donors' responses of a state differ by the same donor part in every state
    between = response[0] - response[1]
    assert np.allclose(between, between[0])
    assert 0 < np.count_nonzero(between[0]) <= 2 * round(0.1 * 60 / 2)


def test_donors_are_seeded():
    a = simulate_perturbation("donors", seed=3, **SMALL)
    b = simulate_perturbation("donors", seed=3, **SMALL)
    assert (a.X != b.X).nnz == 0
    assert a.obs.equals(b.obs)


def test_negative_number_of_states_is_refused():
    with pytest.raises(TRVAEError, match="n_states"):
        simulate_perturbation("shared", n_states=-1, **SMALL)


@pytest.mark.parametrize("scenario", ["variance", "three_conditions"])
def test_expected_log_means_match_the_data_sets_own_cells(scenario):
    adata = simulate_perturbation(scenario, n_genes=40, cells_per_group=1500)
    effect = adata.uns["simulation"]["true_log_effect"]
    x = np.asarray(adata.X.todense())
    for t, condition, c in (("type1", "stimulated1", 1), ("type2", "control", 0)):
        if condition not in set(adata.obs["condition"]):
            condition = "stimulated" if c else "control"
        cells = ((adata.obs["cell_type"] == t) & (adata.obs["condition"] == condition)).to_numpy()
        expected = expected_log_means(adata, t, effect[int(t[-1]), c], n_cells=6000)
        # within a few standard errors of the empirical means of 1500 cells
        error = x[cells].std(0) / np.sqrt(cells.sum()) + 1e-3
        assert (np.abs(expected - x[cells].mean(0)) < 5 * error).mean() > 0.95
    moved = expected_log_means(adata, "type2", effect[2, 1], n_cells=6000)
    assert np.corrcoef(moved - expected, effect[2, 1])[0, 1] > 0.5  # follows the effect


def test_expected_log_means_refuses_what_it_cannot_simulate():
    cells = simulate_perturbation("shared", n_genes=10, cells_per_group=5)
    with pytest.raises(TRVAEError, match=r"shape \(10,\)"):
        expected_log_means(cells, "type0", np.zeros(3))
    with pytest.raises(TRVAEError, match="unknown group"):
        expected_log_means(cells, "B", np.zeros(10))
    donors = simulate_perturbation("donors", n_genes=10, cells_per_group=5)
    with pytest.raises(TRVAEError, match="unknown group"):
        expected_log_means(donors, "state0", np.zeros((3, 10)))
    with pytest.raises(TRVAEError, match="states x genes"):
        expected_log_means(donors, "donor0", np.zeros(10))
    with pytest.raises(TRVAEError, match="simulate_perturbation"):
        expected_log_means(ad.AnnData(np.zeros((2, 10))), "type0", np.zeros(10))


def test_expected_log_means_of_a_donor_mix_its_states():
    adata = simulate_perturbation("donors", n_genes=40, cells_per_group=3000)
    effect = adata.uns["simulation"]["true_log_effect"]  # donors x states x conditions x genes
    x = np.asarray(adata.X.todense())
    obs = adata.obs
    for condition, c in (("stimulated", 1), ("control", 0)):
        cells = ((obs["donor"] == "donor2") & (obs["condition"] == condition)).to_numpy()
        expected = expected_log_means(adata, "donor2", effect[2, :, c], n_cells=8000)
        error = x[cells].std(0) / np.sqrt(cells.sum()) + 1e-3
        assert (np.abs(expected - x[cells].mean(0)) < 5 * error).mean() > 0.95
