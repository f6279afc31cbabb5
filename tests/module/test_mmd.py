"""Tests of trvae.module.mmd: the biased (V-statistic) and unbiased (U-statistic) squared MMD."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from trvae.module.mmd import (
    DEFAULT_BANDWIDTHS,
    mmd,
    mmd_all_pairs,
    mmd_pair_matrix,
    pairwise_sq_dists,
    rbf_kernel,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _kernel_by_hand(a: np.ndarray, b: np.ndarray, bandwidths) -> float:
    d2 = float(((a - b) ** 2).sum())
    return float(np.mean([np.exp(-d2 / (2.0 * s)) for s in bandwidths]))


def _mmd_by_hand(xs: np.ndarray, ys: np.ndarray, bandwidths) -> float:
    """V-statistic from explicit double loops: mean k(x, x') + mean k(y, y') - 2 mean k(x, y)."""
    kxx = np.mean([_kernel_by_hand(a, b, bandwidths) for a in xs for b in xs])
    kyy = np.mean([_kernel_by_hand(a, b, bandwidths) for a in ys for b in ys])
    kxy = np.mean([_kernel_by_hand(a, b, bandwidths) for a in xs for b in ys])
    return kxx + kyy - 2.0 * kxy


def test_same_distribution_is_near_zero_and_shift_is_positive():
    g = _gen(0)
    x = torch.randn(2000, 2, generator=g)
    y = torch.randn(2000, 2, generator=g)
    same = float(mmd(x, y))
    assert 0.0 <= same < 1e-3
    shifted = float(mmd(x[:500], y[:500] + 1.0))
    assert shifted > 0.05
    assert shifted > 20 * same


def test_grows_with_the_shift():
    g = _gen(1)
    x, y = torch.randn(200, 3, generator=g), torch.randn(200, 3, generator=g)
    values = [float(mmd(x, y + shift)) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values)
    assert values[-1] > 5 * values[1]


def test_symmetric():
    g = _gen(2)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randn(17, 4, generator=g, dtype=torch.float64) + 0.7
    torch.testing.assert_close(mmd(x, y), mmd(y, x), rtol=1e-12, atol=1e-12)


def test_zero_for_identical_samples():
    x = torch.randn(25, 3, generator=_gen(3), dtype=torch.float64)
    assert float(mmd(x, x)) == pytest.approx(0.0, abs=1e-12)
    assert float(mmd(x.float(), x.float())) == pytest.approx(0.0, abs=1e-6)


def test_never_negative():
    g = _gen(4)
    for _ in range(5):
        x, y = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
        assert float(mmd(x, y)) >= 0.0


def test_matches_hand_computed_v_statistic():
    g = _gen(5)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64) * 2.0 + 0.5
    expected = _mmd_by_hand(x.numpy(), y.numpy(), DEFAULT_BANDWIDTHS)
    assert float(mmd(x, y)) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    bandwidths = (0.5, 3.0)
    expected = _mmd_by_hand(x.numpy(), y.numpy(), bandwidths)
    assert float(mmd(x, y, bandwidths)) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_kernel_and_distances_match_explicit_formulas():
    g = _gen(6)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64)
    d2 = pairwise_sq_dists(x, y)
    torch.testing.assert_close(d2, torch.cdist(x, y) ** 2)
    k = rbf_kernel(x, y, (0.1, 1.0, 10.0))
    for i, j in itertools.product(range(5), range(4)):
        expected = _kernel_by_hand(x[i].numpy(), y[j].numpy(), (0.1, 1.0, 10.0))
        assert float(k[i, j]) == pytest.approx(expected, rel=1e-12)


def test_pair_matrix_equals_brute_force_double_loop():
    g = _gen(7)
    n_conditions = 4
    y = torch.randn(14, 3, generator=g, dtype=torch.float64)
    condition = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 0, 2, 1, 3, 3])
    y = y + condition[:, None].to(y.dtype) * 0.4  # make the conditions differ
    pairs, present = mmd_pair_matrix(y, condition, n_conditions)
    assert pairs.shape == (n_conditions, n_conditions)
    assert present.tolist() == [True] * n_conditions
    groups = [y[condition == c].numpy() for c in range(n_conditions)]
    for c, d in itertools.product(range(n_conditions), repeat=2):
        expected = _mmd_by_hand(groups[c], groups[d], DEFAULT_BANDWIDTHS)
        assert float(pairs[c, d]) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    torch.testing.assert_close(pairs, pairs.T)
    assert torch.all(pairs.diagonal() == 0)
    expected_total = sum(
        _mmd_by_hand(groups[c], groups[d], DEFAULT_BANDWIDTHS)
        for c, d in itertools.combinations(range(n_conditions), 2)
    )
    assert float(mmd_all_pairs(y, condition, n_conditions)) == pytest.approx(
        expected_total, rel=1e-9
    )


def test_all_pairs_equals_loop_over_pairs_of_mmd():
    """Three conditions; 0 and 1 are the same sample, 2 is shifted: every pair is counted."""
    g = _gen(8)
    a = torch.randn(20, 2, generator=g, dtype=torch.float64)
    b = torch.randn(20, 2, generator=g, dtype=torch.float64) + 1.5
    y = torch.cat([a, a, b])
    condition = torch.repeat_interleave(torch.arange(3), 20)
    total = mmd_all_pairs(y, condition, 3)
    by_loop = sum(
        mmd(y[condition == c], y[condition == d]) for c, d in itertools.combinations(range(3), 2)
    )
    torch.testing.assert_close(total, by_loop)
    # pairs (0, 2) and (1, 2) each contribute the same; (0, 1) contributes nothing
    assert float(total) == pytest.approx(2 * float(mmd(a, b)), rel=1e-10)


def test_non_adjacent_pair_is_penalised():
    """Only conditions 0 and 2 are in the batch: a penalty over adjacent pairs would be 0."""
    g = _gen(9)
    a = torch.randn(15, 2, generator=g, dtype=torch.float64)
    b = torch.randn(15, 2, generator=g, dtype=torch.float64) + 2.0
    y = torch.cat([a, b])
    condition = torch.tensor([0] * 15 + [2] * 15)
    total = mmd_all_pairs(y, condition, 3)
    assert float(total) > 0.1
    torch.testing.assert_close(total, mmd(a, b))
    by_loop = sum(
        mmd(y[condition == c], y[condition == d]) for c, d in itertools.combinations((0, 2), 2)
    )
    torch.testing.assert_close(total, by_loop)


def test_absent_conditions_contribute_zero():
    g = _gen(10)
    y = torch.randn(12, 3, generator=g, dtype=torch.float64)
    condition = torch.tensor([1] * 6 + [3] * 6)
    y[condition == 3] += 1.0
    pairs, present = mmd_pair_matrix(y, condition, 5)
    assert present.tolist() == [False, True, False, True, False]
    for absent in (0, 2, 4):
        assert torch.all(pairs[absent] == 0)
        assert torch.all(pairs[:, absent] == 0)
    assert float(pairs[1, 3]) > 0
    torch.testing.assert_close(mmd_all_pairs(y, condition, 5), mmd(y[:6], y[6:]))
    # a single condition present: nothing to compare
    assert float(mmd_all_pairs(y[:6], condition[:6], 5)) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_finite_with_identical_rows(dtype):
    g = _gen(11)
    base = torch.randn(4, 3, generator=g, dtype=dtype)
    y = torch.cat([base, base, base[:1]]).requires_grad_(True)  # several identical rows
    condition = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    value = mmd_all_pairs(y, condition, 2)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(y.grad).all()
    # all rows identical: zero penalty and a finite (zero) gradient
    same = base[:1].repeat(6, 1).requires_grad_(True)
    value = mmd_all_pairs(same, torch.tensor([0, 0, 0, 1, 1, 1]), 2)
    value.backward()
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(same.grad).all()


def test_independent_of_the_number_of_bandwidths():
    g = _gen(12)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = torch.randn(20, 3, generator=g, dtype=torch.float64) + 0.5
    once = mmd(x, y, DEFAULT_BANDWIDTHS)
    twice = mmd(x, y, DEFAULT_BANDWIDTHS + DEFAULT_BANDWIDTHS)
    torch.testing.assert_close(once, twice, rtol=1e-12, atol=1e-14)
    condition = torch.tensor([0] * 20 + [1] * 20)
    torch.testing.assert_close(
        mmd_all_pairs(torch.cat([x, y]), condition, 2, [1.0]),
        mmd_all_pairs(torch.cat([x, y]), condition, 2, [1.0, 1.0, 1.0]),
        rtol=1e-12,
        atol=1e-14,
    )


def _u_statistic_by_hand(xs: np.ndarray, ys: np.ndarray, bandwidths) -> float:
    """Unbiased estimate from explicit loops: self-pairs left out of the within-sample means."""
    kxx = np.mean([_kernel_by_hand(a, b, bandwidths) for i, a in enumerate(xs)
                   for j, b in enumerate(xs) if i != j])  # fmt: skip
    kyy = np.mean([_kernel_by_hand(a, b, bandwidths) for i, a in enumerate(ys)
                   for j, b in enumerate(ys) if i != j])  # fmt: skip
    kxy = np.mean([_kernel_by_hand(a, b, bandwidths) for a in xs for b in ys])
    return kxx + kyy - 2.0 * kxy


def test_unbiased_pair_matrix_equals_brute_force():
    g = _gen(11)
    y = torch.randn(15, 3, generator=g, dtype=torch.float64)
    condition = torch.tensor([0, 1, 2] * 5)
    y = y + condition[:, None].to(y.dtype) * 0.3
    pairs, present = mmd_pair_matrix(y, condition, 3, estimator="unbiased")
    groups = [y[condition == c].numpy() for c in range(3)]
    for c, d in itertools.combinations(range(3), 2):
        expected = _u_statistic_by_hand(groups[c], groups[d], DEFAULT_BANDWIDTHS)
        assert float(pairs[c, d]) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert present.all()


def test_unbiased_needs_two_points_of_a_condition():
    y = torch.randn(5, 2, generator=_gen(12))
    condition = torch.tensor([0, 0, 1, 1, 2])  # condition 2 has one point
    pairs, present = mmd_pair_matrix(y, condition, 3, estimator="unbiased")
    assert present.tolist() == [True, True, False]
    assert torch.all(pairs[2] == 0) and torch.all(pairs[:, 2] == 0)
    with pytest.raises(ValueError, match="estimator"):
        mmd_pair_matrix(y, condition, 3, estimator="plugin")


def test_biased_estimate_rewards_collapse_and_unbiased_does_not():
    """Two samples of one distribution: shrinking both lowers the biased MMD, not the unbiased.

    This is why a large MMD weight with the biased estimator pulls every condition's layer
    towards a single point.
    """
    g = _gen(13)
    draws = [(torch.randn(40, 4, generator=g), torch.randn(40, 4, generator=g)) for _ in range(200)]

    def mean_mmd(scale: float, estimator: str) -> float:
        return float(np.mean([float(mmd(scale * a, scale * b, estimator=estimator))
                              for a, b in draws]))  # fmt: skip

    biased = {s: mean_mmd(s, "biased") for s in (1.0, 0.1, 0.01)}
    unbiased = {s: mean_mmd(s, "unbiased") for s in (1.0, 0.1, 0.01)}
    assert biased[1.0] > 2 * biased[0.1] > 20 * biased[0.01]
    assert all(abs(v) < 0.02 * biased[1.0] for v in unbiased.values()), unbiased
    shifted = float(np.mean([float(mmd(a, b + 1.0, estimator="unbiased")) for a, b in draws]))
    assert shifted > 10 * abs(unbiased[1.0])


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_grouped_mmd_is_the_mean_of_each_groups_mmd(estimator):
    g = _gen(14)
    n = 60
    condition = torch.arange(n) % 3
    group = (torch.arange(n) // 3) % 2
    y = torch.randn(n, 3, generator=g, dtype=torch.float64) + condition[:, None] * 0.5
    y = y + group[:, None].to(y.dtype) * 2.0
    grouped = mmd_all_pairs(y, condition, 3, estimator=estimator, group=group, n_groups=2)
    per_group = [
        mmd_all_pairs(y[group == k], condition[group == k], 3, estimator=estimator)
        for k in range(2)
    ]
    torch.testing.assert_close(grouped, sum(per_group) / 2)


def test_grouped_mmd_ignores_a_group_seen_in_one_condition_only():
    """A held-out cell type (only in condition 0) is not pulled towards the other types."""
    g = _gen(15)
    y = torch.randn(400, 2, generator=g, dtype=torch.float64)
    condition = torch.arange(400) % 2
    group = torch.zeros(400, dtype=torch.long)
    held = torch.randn(100, 2, generator=g, dtype=torch.float64) + 5.0  # far, condition 0 only
    y_all = torch.cat([y, held])
    cond_all = torch.cat([condition, torch.zeros(100, dtype=torch.long)])
    group_all = torch.cat([group, torch.ones(100, dtype=torch.long)])
    kw = {"estimator": "unbiased", "n_groups": 2}
    without = mmd_all_pairs(y, condition, 2, group=group, **kw)
    with_held = mmd_all_pairs(y_all, cond_all, 2, group=group_all, **kw)
    torch.testing.assert_close(with_held, without)
    assert float(mmd_all_pairs(y_all, cond_all, 2, estimator="unbiased")) > 10 * abs(
        float(without)
    )  # pooled, the held-out group dominates the penalty


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_shared_grouping_is_the_pooled_mmd_over_the_groups_both_conditions_hold(estimator):
    g = _gen(16)
    n = 240
    condition = torch.arange(n) % 3
    group = torch.randint(0, 4, (n,), generator=g)
    group[(condition == 1) & (group == 2)] = 3  # group 2 is not in condition 1
    group[(condition == 2) & (group == 0)] = 1  # group 0 is not in condition 2
    y = torch.randn(n, 3, generator=g, dtype=torch.float64) + group[:, None] * 0.7
    y = y + condition[:, None].to(y.dtype) * 0.3
    shared = mmd_all_pairs(y, condition, 3, estimator=estimator, group=group, n_groups=4,
                           grouping="shared")  # fmt: skip
    expected = 0.0
    for a, b in ((0, 1), (0, 2), (1, 2)):
        both = [k for k in range(4) if ((condition == a) & (group == k)).any()
                and ((condition == b) & (group == k)).any()]  # fmt: skip
        kept = torch.isin(group, torch.tensor(both))
        expected += mmd(y[(condition == a) & kept], y[(condition == b) & kept], estimator=estimator)
    torch.testing.assert_close(shared, expected)
    pooled = mmd_all_pairs(y, condition, 3, estimator=estimator)
    assert abs(float(shared) - float(pooled)) > 0.01  # the excluded groups did count pooled


def test_shared_grouping_ignores_a_group_seen_in_one_condition_only():
    """Like ``"within"``: a held-out group far from the rest adds nothing."""
    g = _gen(17)
    y = torch.randn(400, 2, generator=g, dtype=torch.float64)
    condition = torch.arange(400) % 2
    held = torch.randn(100, 2, generator=g, dtype=torch.float64) + 5.0  # condition 0 only
    y_all = torch.cat([y, held])
    cond_all = torch.cat([condition, torch.zeros(100, dtype=torch.long)])
    group_all = torch.cat([torch.zeros(400, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    shared = mmd_all_pairs(y_all, cond_all, 2, group=group_all, n_groups=2, grouping="shared")
    torch.testing.assert_close(shared, mmd_all_pairs(y, condition, 2))
    with pytest.raises(ValueError, match="grouping must be one of"):
        mmd_all_pairs(y, condition, 2, group=condition, n_groups=2, grouping="across")
