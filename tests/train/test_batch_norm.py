"""Batch norm's statistics recomputed after training (trvae.train.batch_norm)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trvae.data.cell_data import CellData
from trvae.module import TRVAEModule
from trvae.train import TrainingPlan
from trvae.train.batch_norm import recompute_statistics


def _sorted_data(n=2048, n_genes=6, offset=8.0):
    """Cells sorted by condition, the second condition shifted by ``offset`` in every gene."""
    rng = np.random.default_rng(0)
    cond = np.repeat([0, 1], n // 2)
    x = (rng.normal(size=(n, n_genes)) + offset * cond[:, None]).astype(np.float32)
    return CellData(x, cond), x, cond


def _first_layer(module, x, cond):
    """The first encoder layer's output (batch norm's input) for every cell."""
    onehot = F.one_hot(torch.as_tensor(cond), module.n_conditions).float()
    with torch.no_grad():
        return module.encoder[0][0](torch.cat([torch.as_tensor(x), onehot], dim=1))


def test_statistics_are_those_of_all_cells_in_shuffled_batches():
    data, x, cond = _sorted_data()
    torch.manual_seed(0)
    module = TRVAEModule(6, 2, n_latent=2, n_hidden=(4,), dropout=0.0)
    bn = module.encoder[0][1]
    rng = np.random.default_rng(0)
    assert recompute_statistics(module, data, np.arange(len(x)), 64, "cpu", rng)
    h = _first_layer(module, x, cond)
    # equal batches: the average of the batch means is the mean of all cells
    torch.testing.assert_close(bn.running_mean, h.mean(0), rtol=1e-4, atol=1e-4)
    # the variance between the conditions counts although the data keep them apart
    population = h.var(0)
    assert torch.all((bn.running_var / population - 1).abs() < 0.1), (bn.running_var, population)
    within = torch.stack([h[cond == c].var(0) for c in (0, 1)]).mean(0)
    assert torch.all(bn.running_var > 2 * within)
    assert int(bn.num_batches_tracked) == len(x) // 64
    assert bn.momentum == 0.1 and not module.training


def test_nothing_to_do_without_batch_norm():
    data = _sorted_data(n=64)[0]
    module = TRVAEModule(6, 2, n_latent=2, n_hidden=(4,), batch_norm=False)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rng = np.random.default_rng(0)
    assert not recompute_statistics(module, data, np.arange(64), 32, "cpu", rng)
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize("recompute", [False, True])
def test_plan_recomputes_after_training_and_stays_deterministic(recompute):
    data = _sorted_data(n=256)[0]
    train_idx, val_idx = np.arange(0, 256, 2), np.arange(1, 256, 2)

    def fit():
        torch.manual_seed(0)
        module = TRVAEModule(6, 2, n_latent=2, n_hidden=(4,))
        plan = TrainingPlan(max_epochs=2, batch_size=32, recompute_batch_norm=recompute)
        plan.fit(module, data, train_idx, val_idx, seed=3, progress_bar=False)
        return module

    first, second = fit(), fit()
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    tracked = int(first.encoder[0][1].num_batches_tracked)
    # recomputed: one cumulative pass over the 128 training cells; else 2 epochs of steps
    assert tracked == (128 // 32 if recompute else 2 * 128 // 32)
    assert not first.training
