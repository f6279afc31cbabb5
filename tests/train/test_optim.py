"""Learning-rate schedules (trvae.train.optim) and their use by the training plan."""

import numpy as np
import pytest
import torch

from trvae import TRVAEError
from trvae.data.cell_data import CellData
from trvae.module import TRVAEModule
from trvae.train import TrainingPlan
from trvae.train.optim import COSINE_FLOOR, make_schedule, step


def _fit(lr_schedule, max_epochs=6, **kwargs):
    x = np.random.default_rng(0).random((96, 8), dtype=np.float32)
    data = CellData(x, np.arange(96) % 2)
    torch.manual_seed(0)
    module = TRVAEModule(8, 2, n_latent=2, n_hidden=(8,))
    plan = TrainingPlan(
        max_epochs=max_epochs, batch_size=16, early_stopping=False, lr_schedule=lr_schedule
    )
    return plan.fit(module, data, np.arange(80), np.arange(80, 96), progress_bar=False, **kwargs)


def test_cosine_lowers_the_rate_every_epoch_towards_the_floor():
    history = _fit("cosine", max_epochs=6)
    lr = history["lr"].to_numpy()
    assert lr[0] == pytest.approx(1e-3)
    assert np.all(np.diff(lr) < 0)
    half = 1e-3 * (COSINE_FLOOR + (1 - COSINE_FLOOR) * (1 + np.cos(np.pi * 3 / 6)) / 2)
    assert lr[3] == pytest.approx(half)
    assert 1e-3 * COSINE_FLOOR < lr[-1] < 0.1 * 1e-3


def test_plateau_waits_for_the_loss_to_stall():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    plateau = make_schedule("plateau", opt, max_epochs=10, factor=0.5, patience=1)
    for loss in (3.0, 2.0, 1.0):  # improving: the rate stays
        step(plateau, loss)
    assert opt.param_groups[0]["lr"] == 1.0
    for loss in (1.0, 1.0):  # two epochs without improvement, patience 1: halved
        step(plateau, loss)
    assert opt.param_groups[0]["lr"] == 0.5


def test_unknown_schedule_is_named():
    with pytest.raises(TRVAEError, match=r"lr_schedule must be one of \('plateau', 'cosine'\)"):
        TrainingPlan(lr_schedule="linear")


def test_resume_under_another_schedule_is_refused():
    states = []
    _fit("cosine", max_epochs=2, on_epoch_end=states.append)
    assert states[-1]["lr_schedule"] == "cosine"
    with pytest.raises(TRVAEError, match=r"written with lr_schedule='cosine'.*got 'plateau'"):
        _fit("plateau", max_epochs=3, resume_state=states[-1])
    resumed = _fit("cosine", max_epochs=3, resume_state=states[-1])
    assert list(resumed["epoch"]) == [0, 1, 2]
