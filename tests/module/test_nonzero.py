import numpy as np
import torch

from trvae.module import nonzero as N


def test_curve_is_the_isotonic_fit_from_the_floor():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.poisson(rng.uniform(0.05, 3.0, 40), (200, 40)), dtype=torch.float32)
    means, fractions = N.nonzero_curve(x, 0.0)
    assert means[0] == 0.0 and fractions[0] == 0.0
    assert (np.diff(means) >= 0).all() and (np.diff(fractions) >= -1e-12).all()
    # Poisson: the fraction above 0 of a gene with mean m is 1 - exp(-m)
    expected = 1 - np.exp(-means[1:])
    assert np.abs(fractions[1:] - expected).max() < 0.15


def test_target_fractions_move_half_way_to_the_curve():
    curve = (np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.5, 1.0]))
    goal = N.target_fractions(torch.tensor([1.0, 0.2]), torch.tensor([1.0, 2.0]), curve)
    # the curve gives 0.5 and 1.0: half-way from 1.0 and from 0.2
    np.testing.assert_allclose(goal.numpy(), [0.75, 0.6])


def test_offset_moves_the_values_above_the_floor_only():
    values = torch.tensor([[0.0, 2.0], [1.0, 0.0], [3.0, 4.0]])
    moved = N.add_offset(values, 0.0, torch.tensor([0.5, 1.0]), torch.tensor([-0.8, 1.0]))
    # gene 0: 1 - 0.8 = 0.2 is below detection 0.5; the floor stays
    np.testing.assert_allclose(moved.numpy(), [[0.0, 3.0], [0.5, 0.0], [2.2, 5.0]])
    offset = N.match_offset(values, 0.0, torch.tensor([0.5, 1.0]), torch.tensor([2.0, 2.0]))
    means = N.add_offset(values, 0.0, torch.tensor([0.5, 1.0]), offset).mean(0)
    np.testing.assert_allclose(means.numpy(), [2.0, 2.0], atol=1e-5)


def _map_case(n: int = 200):
    rng = np.random.default_rng(1)
    every = rng.uniform(2.0, 4.0, n)  # gene 0: every cell above the floor
    half = np.where(np.arange(n) % 2 == 0, 0.0, rng.uniform(1.0, 3.0, n))  # gene 1: half
    few = np.where(np.arange(n) % 4 == 0, rng.uniform(1.0, 3.0, n), 0.0)  # gene 2: a quarter
    values = torch.tensor(np.c_[every, half, few], dtype=torch.float32)
    noise = N.tie_noise(0, 0, tuple(values.shape))
    # the curve reads 0.6 at gene 0's mean (3), 1.0 at gene 1's (~1), 0.25 at gene 2's
    curve = (np.array([0.0, 0.5, 0.9, 2.0]), np.array([0.0, 0.25, 1.0, 0.6]))
    return values, noise, curve


def test_map_sets_the_fraction_keeps_the_mean_and_the_order():
    values, noise, _ = _map_case()
    means = values.mean(0)
    # genes 0 and 2 lie on this curve already, gene 1 (half above the floor) below it
    curve = (np.array([0.0, 0.5, 1.0, 3.0]), np.array([0.0, 0.25, 1.0, 1.0]))
    goal_curve = np.interp(means.numpy(), *curve)
    detection = torch.tensor([0.5, 0.5, 0.5])
    mapped_by = N.NonzeroMap(values, noise, 0.0, detection, means, curve)
    mapped = mapped_by(values, noise)
    assert torch.equal(mapped_by.mapped, mapped)  # kept from the fit: the same numbers
    current = (values > 0).float().mean(0).numpy()
    goal = current + N.NONZERO_WEIGHT * (goal_curve - current)
    n = len(values)
    for g in range(3):
        if abs(goal[g] - current[g]) * n < 1:  # left alone
            np.testing.assert_array_equal(mapped[:, g].numpy(), values[:, g].numpy())
            continue
        assert abs(float((mapped[:, g] > 0).float().mean()) - goal[g]) <= 1.5 / n
    np.testing.assert_allclose(mapped.mean(0).numpy(), means.numpy(), atol=1e-3)
    above = mapped > 0
    assert (mapped[above] >= 0.5).all()
    # monotone: of two cells above the floor before and after, the larger stays larger
    for g in range(3):
        keep = (above[:, g] & (values[:, g] > 0)).numpy()
        v, m = values[keep, g].numpy(), mapped[keep, g].numpy()
        order = np.argsort(v, kind="stable")
        assert (np.diff(m[order]) >= -1e-5).all()
    assert mapped_by.moves.tolist() == [abs(goal[g] - current[g]) * n >= 1 for g in range(3)]


def test_map_raises_and_lowers_the_fraction():
    values, noise, curve = _map_case()
    detection = torch.full((3,), 0.5)
    means = values.mean(0)
    mapped = N.NonzeroMap(values, noise, 0.0, detection, means, curve)(values, noise)
    before = (values > 0).float().mean(0).numpy()
    after = (mapped > 0).float().mean(0).numpy()
    on_curve = np.interp(means.numpy(), *curve)
    assert after[0] < before[0] and after[1] > before[1]
    # half-way: the distance to the curve halves
    np.testing.assert_allclose(after - on_curve, (before - on_curve) / 2, atol=1.5 / len(values))
    # a cell promoted from the floor gets at least the detection level
    promoted = (values[:, 1] == 0) & (mapped[:, 1] > 0)
    assert promoted.any() and (mapped[promoted, 1] >= 0.5).all()


def test_tie_noise_is_seeded():
    a = N.tie_noise(3, 10, (4, 5))
    np.testing.assert_array_equal(a.numpy(), N.tie_noise(3, 10, (4, 5)).numpy())
    assert not torch.equal(a, N.tie_noise(3, 11, (4, 5)))
    assert ((a >= 0) & (a < 1)).all()


def test_map_in_blocks_of_genes_is_the_map_of_all_genes(monkeypatch):
    rng = np.random.default_rng(4)
    values = torch.from_numpy(
        np.where(rng.random((60, 7)) < 0.4, 0.0, rng.gamma(2.0, 1.0, (60, 7))).astype(np.float32)
    )
    noise = N.tie_noise(0, 0, tuple(values.shape))
    curve = (np.array([0.0, 1.0, 3.0]), np.array([0.0, 0.9, 1.0]))
    detection, means = torch.full((7,), 0.5), values.mean(0)
    whole = N.NonzeroMap(values, noise, 0.0, detection, means, curve)
    monkeypatch.setattr(N, "GENE_BLOCK", 3)  # blocks of 3, 3 and 1 genes
    blocked = N.NonzeroMap(values, noise, 0.0, detection, means, curve)
    assert whole.moves.any()
    assert torch.equal(whole.table, blocked.table) and torch.equal(whole.cut, blocked.cut)
    # the offset's bisection takes column means, which torch may round differently in the
    # last place for a block narrower than its vector width: equal up to that
    torch.testing.assert_close(blocked.offset, whole.offset, rtol=0, atol=1e-6)
    torch.testing.assert_close(blocked.mapped, whole.mapped, rtol=0, atol=1e-6)
    again = blocked(values[:20], noise[:20])
    torch.testing.assert_close(again, whole(values[:20], noise[:20]), rtol=0, atol=1e-6)
    assert torch.equal(again, blocked.mapped[:20])
