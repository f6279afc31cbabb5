"""The quantile read-out (:mod:`trvae.module.readout`): its functions and its tables' look-ups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trvae.module import readout as R


def _holder(n_cells: int = 400, n_genes: int = 6, seed: int = 0) -> R.QuantileTables:
    """:func:`_tables` in a :class:`~trvae.module.readout.QuantileTables`."""
    holder = R.QuantileTables()
    holder.set(*_tables(n_cells, n_genes, seed))
    return holder


def _tables(n_cells: int = 400, n_genes: int = 6, seed: int = 0):
    """Edges and tables (C = 2 conditions) from random reconstructions and residuals."""
    rng = np.random.default_rng(seed)
    edges, tables = [], []
    for c in range(2):
        recon = torch.from_numpy(rng.normal(2.0 + c, 1.0, (n_cells, n_genes)).astype(np.float32))
        resid = torch.from_numpy(rng.normal(0.0, 0.5 + c, (n_cells, n_genes)).astype(np.float32))
        e, t = R.condition_tables(recon, resid)
        edges.append(e)
        tables.append(t)
    return torch.stack(edges), torch.stack(tables)


def test_condition_tables_on_a_hand_made_case():
    """Gene 0: 8 bins of 20 cells each. Gene 1: 150 cells at one level and 10 above it, so one
    bin holds 150 cells (its own quantiles) and the others too few (the all-cell quantiles)."""
    n = 160
    levels = np.linspace(0, 1, R.N_QUANTILES)
    recon = np.zeros((n, 2), np.float32)
    recon[:, 0] = np.arange(n)
    recon[150:, 1] = np.arange(1, 11)
    resid = np.random.default_rng(1).normal(size=(n, 2)).astype(np.float32)
    edges, tables = R.condition_tables(torch.from_numpy(recon), torch.from_numpy(resid))
    assert edges.shape == (R.N_BINS - 1, 2) and tables.shape == (R.N_BINS, R.N_QUANTILES, 2)
    cuts = np.arange(1, R.N_BINS) / R.N_BINS
    np.testing.assert_allclose(edges.numpy(), np.quantile(recon, cuts, axis=0), rtol=1e-6)
    for k in range(R.N_BINS):  # gene 0: the residuals of cells 20k .. 20k + 19
        want = np.quantile(resid[20 * k : 20 * (k + 1), 0], levels)
        np.testing.assert_allclose(tables[k, :, 0].numpy(), want, atol=1e-6)
    np.testing.assert_allclose(
        tables[0, :, 1].numpy(), np.quantile(resid[:150, 1], levels), atol=1e-6
    )
    pooled = np.quantile(resid[:, 1], levels)
    for k in range(1, R.N_BINS):  # empty, or the 10 cells above the level: too few
        np.testing.assert_allclose(tables[k, :, 1].numpy(), pooled, atol=1e-6)


def test_condition_tables_do_not_depend_on_the_block_size(monkeypatch):
    rng = np.random.default_rng(3)
    recon = torch.from_numpy(rng.normal(2.0, 1.0, (300, 11)).astype(np.float32))
    resid = torch.from_numpy(rng.normal(0.0, 0.5, (300, 11)).astype(np.float32))
    resid[:, 4] = 0.0  # a gene of ties
    whole = R.condition_tables(recon, resid)
    for entries in (1, 300 * 3, 300 * 4 + 1):  # one gene per block, 3 genes, 4 genes
        monkeypatch.setattr(R, "TABLE_BLOCK_ENTRIES", entries)
        blocked = R.condition_tables(recon, resid)
        assert all(torch.equal(a, b) for a, b in zip(whole, blocked, strict=True))


def test_assign_bins_per_condition():
    edges = torch.tensor([[[0.0], [1.0]], [[10.0], [20.0]]])  # C=2, B-1=2, G=1
    mean = torch.tensor([[-1.0], [0.5], [5.0], [5.0], [15.0], [25.0]])
    cond = torch.tensor([0, 0, 0, 1, 1, 1])
    assert R.assign_bins(mean, edges, cond)[:, 0].tolist() == [0, 1, 2, 0, 1, 2]


def test_cdf_inverts_the_quantile_function():
    edges, tables = _tables()
    rng = np.random.default_rng(2)
    n, g = 300, tables.shape[-1]
    cond = torch.from_numpy(rng.integers(0, 2, n))
    mean = torch.from_numpy(rng.normal(2.5, 1.0, (n, g)).astype(np.float32))
    rows = R._rows(tables, cond, R.assign_bins(mean, edges, cond))
    r = torch.from_numpy(rng.normal(0.0, 1.5, (n, g)).astype(np.float32))
    u = R.cdf_at(tables, rows, r)
    assert (u >= 0).all() and (u <= 1).all()
    lowest = R.quantile_at(tables, rows, torch.zeros_like(u))
    highest = R.quantile_at(tables, rows, torch.ones_like(u))
    inside = (r >= lowest) & (r <= highest)
    assert inside.float().mean() > 0.5 and (~inside).any()
    back = R.quantile_at(tables, rows, u)
    torch.testing.assert_close(back[inside], r[inside], atol=1e-5, rtol=0)
    assert (u[r < lowest] == 0).all() and (u[r > highest] == 1).all()
    # and the other way round, where the tables are strictly increasing
    levels = torch.from_numpy(rng.random((n, g)).astype(np.float32))
    torch.testing.assert_close(
        R.cdf_at(tables, rows, R.quantile_at(tables, rows, levels)), levels, atol=1e-4, rtol=0
    )


def test_source_levels_spread_the_floor_with_the_noise():
    holder = _holder()
    tables = holder.tables
    rng = np.random.default_rng(3)
    n, g = 200, tables.shape[-1]
    cond = torch.zeros(n, dtype=torch.long)
    mean = torch.from_numpy(rng.normal(2.0, 1.0, (n, g)).astype(np.float32))
    x = torch.from_numpy(np.clip(rng.normal(2.0, 1.5, (n, g)), 0, None).astype(np.float32))
    floored = x <= 0
    assert floored.any() and (~floored).any()
    a = holder.source_levels(x, mean, cond, 0.0, R.floor_noise(0, 0, (n, g)))
    b = holder.source_levels(x, mean, cond, 0.0, R.floor_noise(0, 0, (n, g)))
    c = holder.source_levels(x, mean, cond, 0.0, R.floor_noise(1, 0, (n, g)))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert torch.equal(a[~floored], c[~floored]) and not torch.equal(a[floored], c[floored])
    rows = holder.rows(mean, cond)
    ceiling = R.cdf_at(tables, rows, -mean)  # F_s(x_min - m_s)
    assert (a[floored] <= ceiling[floored]).all() and (a[floored] >= 0).all()
    torch.testing.assert_close(a[~floored], R.cdf_at(tables, rows, x - mean)[~floored])
    assert not torch.equal(R.floor_noise(0, 0, (4, 3)), R.floor_noise(0, 4, (4, 3)))


def test_match_shift_gives_the_reference_mean():
    holder = _holder(n_genes=5)
    tables = holder.tables
    rng = np.random.default_rng(4)
    n, g = 500, tables.shape[-1]
    cond = torch.ones(n, dtype=torch.long)
    mean = torch.from_numpy(rng.normal(3.0, 1.0, (n, g)).astype(np.float32))
    u = torch.from_numpy(rng.random((n, g)).astype(np.float32))
    true_shift = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
    reference = holder.target_values(u, mean, cond, 0.0, true_shift).mean(0)
    shift = holder.match_shift(u, mean, cond, 0.0, reference)
    assert shift.shape == (g,) and (shift.abs() < R.SHIFT_BOUND).all()
    got = holder.target_values(u, mean, cond, 0.0, shift).mean(0)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)
    # out of reach: the shift stops at the end of its range
    far = holder.match_shift(u, mean, cond, 0.0, reference + 100.0)
    assert torch.allclose(far, torch.full((g,), R.SHIFT_BOUND), atol=1e-5)


def test_shift_levels_keeps_ranks_and_ends():
    """A logit shift keeps the order of the levels, leaves 0 as the identity, moves the middle
    more than the ends, and never reaches 0 or 1 (no pile at the table's ends)."""
    u = torch.tensor([0.0, 0.05, 0.3, 0.5, 0.7, 0.95, 1.0])
    torch.testing.assert_close(R.shift_levels(u, 0.0)[1:-1], u[1:-1])
    for eta in (-3.0, -0.5, 0.5, 3.0):
        moved = R.shift_levels(u, eta)
        assert (moved.diff() > 0).all() and (moved > 0).all() and (moved < 1).all()
    step = R.shift_levels(u, 0.5) - u
    assert step[3] > step[1] > 0 and step[3] > step[5] > 0
    # by hand: logit(0.5) = 0, sigmoid(1) = 0.7311
    torch.testing.assert_close(
        R.shift_levels(torch.tensor([0.5]), 1.0), torch.tensor([0.7311]), atol=1e-4, rtol=0
    )


def test_quantile_tables_state_dict():
    edges, tables = _tables(n_genes=3)
    holder = R.QuantileTables()
    assert not holder.built and holder.state_dict() == {}
    holder.set(edges, tables)
    state = holder.state_dict()
    assert set(state) == {"edges", "tables"}
    loaded = R.QuantileTables()
    loaded.load_state_dict(state)
    assert loaded.built and torch.equal(loaded.tables, tables) and torch.equal(loaded.edges, edges)
    loaded.load_state_dict({})  # a state dict without tables (an older model) leaves them unset
    assert not loaded.built
    with pytest.raises(RuntimeError, match="both"):
        R.QuantileTables().load_state_dict({"edges": edges})
    with pytest.raises(ValueError, match="do not fit"):
        holder.set(edges[:, :2], tables)


def test_snap_to_detection_moves_values_to_the_nearer_of_floor_and_detection():
    values = torch.tensor([[0.0, 0.2, 0.3, 0.55, 1.0], [0.0, 0.01, 0.02, 0.6, 0.6]])
    detection = torch.tensor([0.0, 0.5, 0.5, 0.5, 0.5])  # gene 0: nothing above the floor
    out = R.snap_to_detection(values, 0.0, detection)
    expected = torch.tensor([[0.0, 0.0, 0.5, 0.55, 1.0], [0.0, 0.0, 0.0, 0.6, 0.6]])
    assert torch.equal(out, expected)
    assert R.snap_to_detection(values, 0.0, None) is values
    shifted = R.snap_to_detection(values + 1, 1.0, detection + 1)  # a floor other than 0
    torch.testing.assert_close(shifted, out + 1)


def test_detection_levels_are_the_smallest_values_above_the_floor():
    x = torch.tensor([[0.0, 0.0, 2.0], [1.5, 0.0, 0.7], [0.9, 0.0, 0.7]])
    levels = R.detection_levels(x, 0.0)
    assert levels[0].item() == pytest.approx(0.9) and levels[2].item() == pytest.approx(0.7)
    assert levels[1].item() == float("inf")
    assert R.detection_levels(torch.zeros(0, 2), 0.0).tolist() == [float("inf")] * 2


def test_target_values_snap_and_the_state_dict_keeps_detection():
    edges, tables = _tables(n_genes=3)
    holder = R.QuantileTables()
    detection = torch.tensor([0.0, 5.0, 100.0])
    holder.set(edges, tables, detection)
    u = torch.rand(50, 3, generator=torch.Generator().manual_seed(0))
    mean = torch.zeros(50, 3)
    cond = torch.zeros(50, dtype=torch.long)
    values = holder.target_values(u, mean, cond, 0.0)
    inside = (values > 0) & (values < detection)
    assert not inside.any()
    loaded = R.QuantileTables()
    loaded.load_state_dict(holder.state_dict())
    assert torch.equal(loaded.detection, detection)
    older = R.QuantileTables()  # saved before the snap: no detection, values as they were
    older.load_state_dict({"edges": edges, "tables": tables})
    assert older.detection is None
    raw = older.target_values(u, mean, cond, 0.0)
    assert torch.equal(R.snap_to_detection(raw, 0.0, detection), values)
    with pytest.raises(ValueError, match="detection"):
        holder.set(edges, tables, torch.zeros(2))


def test_cdf_counts_the_stored_quantiles_at_or_below_for_any_table_length():
    rng = np.random.default_rng(7)
    for n_q in (2, 3, 16, 33, 257):
        tables = torch.from_numpy(rng.normal(size=(2, 3, n_q, 20)).astype(np.float32))
        tables[..., : n_q // 2, :5] = 0.0  # ties
        tables = tables.sort(dim=2).values
        cond = torch.from_numpy(rng.integers(0, 2, 40))
        bins = torch.from_numpy(rng.integers(0, 3, (40, 20)))
        v = torch.from_numpy(rng.normal(size=(40, 20)).astype(np.float32))
        v[:, ::4] = 0.0
        v[0, 1], v[1, 1] = -np.inf, np.inf
        column = tables[cond[:, None], bins, :, torch.arange(20)]  # 40 x 20 x Q
        count = (column <= v[..., None]).sum(-1)
        inner = count.clamp(1, n_q - 1)
        lower = column.gather(-1, (inner - 1)[..., None])[..., 0]
        upper = column.gather(-1, inner[..., None])[..., 0]
        frac = ((v - lower) / (upper - lower).clamp_min(1e-30)).clamp(0.0, 1.0)
        want = torch.where(
            count == 0, 0.0, torch.where(count == n_q, 1.0, (inner - 1 + frac) / (n_q - 1))
        )
        assert torch.equal(R.cdf_at(tables, R._rows(tables, cond, bins), v), want), n_q
