"""The local mean shift's pieces: neighbour weights and the local ratio, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trvae.module import local_shift
from trvae.module.anchor import UNKNOWN_RATIO, MeanShifts
from trvae.module.local_shift import local_ratio, neighbour_weights, sample_pool


def test_neighbour_weights_average_each_cells_nearest():
    pool = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [6.0, 5.0], [20.0, 20.0]])
    query = torch.tensor([[0.1, 0.0], [5.9, 5.0], [5.2, 5.0]])
    weights = neighbour_weights(query, pool, k=2)
    # cell 0: rows 0, 1; cells 1 and 2: rows 2, 3 -> each row's share of 3 cells x 2 neighbours
    np.testing.assert_allclose(weights.numpy(), [1 / 6, 1 / 6, 2 / 6, 2 / 6, 0.0])
    values = torch.tensor([[1.0], [3.0], [10.0], [14.0], [100.0]], dtype=torch.float64)
    by_hand = np.mean([(1 + 3) / 2, (10 + 14) / 2, (10 + 14) / 2])
    assert float(weights @ values) == pytest.approx(by_hand)
    # more neighbours asked than rows: every row, equally; no cells: no weight
    np.testing.assert_allclose(neighbour_weights(query, pool[:2], k=10).numpy(), [0.5, 0.5])
    assert float(neighbour_weights(query[:0], pool).sum()) == 0.0


def test_neighbour_weights_do_not_depend_on_the_query_blocks(monkeypatch):
    rng = np.random.default_rng(0)
    pool, query = (torch.from_numpy(rng.normal(size=(n, 3))) for n in (50, 23))
    whole = neighbour_weights(query, pool, k=5)
    monkeypatch.setattr(local_shift, "QUERY_BLOCK", 4)
    np.testing.assert_allclose(neighbour_weights(query, pool, k=5).numpy(), whole.numpy())
    assert float(whole.sum()) == pytest.approx(1.0)


def test_local_ratio_sums_over_the_top_genes(monkeypatch):
    truth = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, -2.0]])
    shift = torch.tensor([2.0, 0.1, -3.0])  # genes 2 and 0 respond most
    local = truth + torch.tensor([[0.5, 9.0, 0.0], [0.0, 9.0, 1.0]])
    pooled = truth + torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    assert local_ratio(local, pooled, truth, shift) == pytest.approx((1.25 + 2 * 81) / 4)
    monkeypatch.setattr(local_shift, "TOP_GENES", 2)  # gene 1's large local error left out
    assert local_ratio(local, pooled, truth, shift) == pytest.approx(1.25 / 4)
    assert math.isnan(local_ratio(local, truth, truth, shift))  # the pooled shift is exact


def test_sample_pool_caps_the_cells(monkeypatch):
    monkeypatch.setattr(local_shift, "LOCAL_CELLS", 5)
    cells = np.arange(100, 120)
    first = sample_pool(cells, np.random.default_rng(1))
    assert len(first) == 5 and np.all(np.diff(first) > 0) and np.isin(first, cells).all()
    np.testing.assert_array_equal(first, sample_pool(cells, np.random.default_rng(1)))
    np.testing.assert_array_equal(sample_pool(cells[[3, 1]], np.random.default_rng(1)), [101, 103])


def test_mean_shifts_store_the_local_ratio():
    shifts = MeanShifts()
    assert math.isnan(shifts.local(0, 1))  # not fitted
    shifts.set(torch.tensor([[0.0], [2.0], [4.0], [10.0]]), torch.ones(4), n_conditions=2)
    shifts.set_local(torch.tensor([[float("nan"), 0.4], [1.3, float("nan")]]))
    assert shifts.local_ratio[0, 0].item() == UNKNOWN_RATIO and math.isnan(shifts.local(0, 0))
    assert shifts.local(0, 1) == pytest.approx(0.4) and shifts.local(1, 0) == pytest.approx(1.3)
    loaded = MeanShifts()
    loaded.load_state_dict(shifts.state_dict())
    assert loaded.local(0, 1) == pytest.approx(0.4)
    older = MeanShifts()  # saved before the local ratio existed: unknown, the pooled shift
    older.load_state_dict({k: v for k, v in shifts.state_dict().items() if k != "local_ratio"})
    assert older.local_ratio is None and math.isnan(older.local(0, 1))
