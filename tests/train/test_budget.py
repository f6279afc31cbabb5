"""The default epoch budget (:func:`trvae.train.budget.epoch_budget`) and its use by ``train``."""

from __future__ import annotations

import pytest

import trvae
from trvae.train.budget import MAX_EPOCHS, MIN_EPOCHS, epoch_budget


def test_budget_in_cells_with_bounds():
    assert epoch_budget(4000) == 38  # ceil(150000 / 4000)
    assert epoch_budget(100) == MAX_EPOCHS and epoch_budget(10**7) == MIN_EPOCHS


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_count_likelihoods_train_twice_the_epochs_within_the_cap(likelihood):
    assert epoch_budget(4000, likelihood) == 2 * epoch_budget(4000)
    assert epoch_budget(10**7, likelihood) == 2 * MIN_EPOCHS
    assert epoch_budget(1000, likelihood) == MAX_EPOCHS  # 2 x 150, capped


def test_train_without_max_epochs_runs_the_likelihoods_budget(monkeypatch):
    from trvae.train import budget

    monkeypatch.setattr(budget, "CELL_BUDGET", 500)  # 100 cells: 5 epochs, 10 for counts
    monkeypatch.setattr(budget, "MIN_EPOCHS", 1)
    adata = trvae.datasets.simulate_perturbation("shared", n_genes=20, cells_per_group=10)
    for likelihood, layer, epochs in (("mse", None, 5), ("nb", "counts", 10)):
        model = trvae.TRVAE(adata, "condition", likelihood=likelihood, layer=layer, n_hidden=(8,))
        model.train(progress_bar=False, accelerator="cpu", early_stopping=False)
        assert len(model.history) == epochs, likelihood
