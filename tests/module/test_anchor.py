"""The mean shifts a prediction can be anchored to (:mod:`trvae.module.anchor`)."""

import math

import pytest
import torch

from trvae import TRVAEError
from trvae.module.anchor import (
    AUTO_FALLBACK,
    AUTO_RATIOS,
    UNKNOWN_RATIO,
    MeanShifts,
    auto_anchor,
    check_anchor,
    state_ratio,
)


def test_shifts_pool_the_groups_that_have_both_conditions():
    # 3 groups x 3 conditions (rows group * 3 + condition), 2 genes; group 2 lacks condition 2
    sums = torch.tensor(
        [[0, 0], [4, 2], [6, 0], [10, 10], [30, 20], [60, 10], [1, 1], [2, 2], [0, 0]],
        dtype=torch.float64,
    )
    counts = torch.tensor([1, 2, 3, 2, 2, 2, 1, 1, 0])
    shifts = MeanShifts()
    assert not shifts.built
    shifts.set(sums, counts, n_conditions=3)
    # 0 -> 1: all three groups; means (4 + 30 + 2) / 5 and (0 + 10 + 1) / 4
    expected = torch.tensor([36 / 5 - 11 / 4, 24 / 5 - 11 / 4])
    torch.testing.assert_close(shifts(torch.tensor([0]), 1)[0], expected.float())
    # 0 -> 2: groups 0 and 1 only; means (6 + 60) / 5 and (0 + 10) / 3
    torch.testing.assert_close(
        shifts(torch.tensor([0]), 2)[0], torch.tensor([66 / 5 - 10 / 3, 10 / 5 - 10 / 3])
    )
    assert torch.equal(shifts(torch.tensor([1, 1]), 1), torch.zeros(2, 2))
    torch.testing.assert_close(shifts.shifts[2, 0], -shifts.shifts[0, 2])


def test_no_paired_group_falls_back_to_all_cells():
    # 2 groups, condition 0 only in group 0, condition 1 only in group 1
    sums = torch.tensor([[2.0], [0.0], [0.0], [9.0]])
    shifts = MeanShifts()
    shifts.set(sums, torch.tensor([2, 0, 0, 3]), n_conditions=2)
    assert shifts.shifts[0, 1].item() == pytest.approx(9 / 3 - 2 / 2)


def test_state_dict_with_and_without_shifts():
    shifts = MeanShifts()
    shifts.set(torch.ones(2, 3), torch.tensor([1, 1]), n_conditions=2)
    fresh = MeanShifts()
    fresh.load_state_dict(shifts.state_dict())
    assert torch.equal(fresh.shifts, shifts.shifts)
    fresh.load_state_dict({})  # a model saved before the shifts existed
    assert not fresh.built


def test_check_anchor():
    assert check_anchor(0.5, "mse") == 0.5 and check_anchor(0, "nb") == 0.0
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(TRVAEError, match="anchor must"):
            check_anchor(bad, "mse")
    with pytest.raises(TRVAEError, match="quantile read-out"):
        check_anchor(0.5, "nb")


def test_spreads_are_the_paired_groups_response_sd_widened():
    # 3 groups x 2 conditions, 1 gene; responses 2, 4, 9 in the three groups (one cell each)
    sums = torch.tensor([[1.0], [3.0], [0.0], [4.0], [1.0], [10.0]])
    shifts = MeanShifts()
    shifts.set(sums, torch.ones(6, dtype=torch.long), n_conditions=2)
    responses = torch.tensor([2.0, 4.0, 9.0], dtype=torch.float64)
    expected = responses.std() * (1 + 1 / 3) ** 0.5
    sd, dof = shifts.spread(torch.tensor([0, 0]), 1)
    torch.testing.assert_close(sd[:, 0], expected.float().repeat(2))
    assert dof.tolist() == [2.0, 2.0]
    one = MeanShifts()  # one paired group: no spread to estimate
    one.set(sums[:4], torch.tensor([1, 1, 1, 0]), n_conditions=2)
    assert torch.isnan(one.spread(torch.tensor([0]), 1)[0]).all()
    assert one.spread(torch.tensor([0]), 1)[1].item() == 0.0
    fresh = MeanShifts()
    fresh.load_state_dict({"shifts": shifts.shifts})  # saved before the spreads existed
    assert fresh.built and not fresh.has_spreads


def test_scale_multiplies_the_spread_and_survives_a_state_dict():
    sums = torch.tensor([[1.0], [3.0], [0.0], [4.0], [1.0], [10.0]])
    shifts = MeanShifts()
    shifts.set(sums, torch.ones(6, dtype=torch.long), n_conditions=2)
    before = shifts.spread(torch.tensor([0]), 1)[0]
    assert shifts.scale.item() == 1.0
    shifts.set_scale(1.5)
    torch.testing.assert_close(shifts.spread(torch.tensor([0]), 1)[0], 1.5 * before)
    copy = MeanShifts()
    copy.load_state_dict(shifts.state_dict())
    assert copy.scale.item() == 1.5
    old = {k: v for k, v in shifts.state_dict().items() if k != "scale"}  # saved before scale
    copy.load_state_dict(old)
    assert copy.scale.item() == 1.0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(TRVAEError, match="scale"):
            shifts.set_scale(bad)


def _moments(ctrl: torch.Tensor, change: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and sums of squares of two groups (the second 5 higher), control and perturbed."""
    cells = [ctrl, ctrl + change, ctrl + 5, ctrl + change + 5]  # rows group * 2 + condition
    return (
        torch.stack([c.sum(0) for c in cells]).double(),
        torch.stack([(c**2).sum(0) for c in cells]).double(),
    )


def test_quiet_genes_are_those_no_group_responds_in():
    """Two groups, 3 cells per group and condition; gene 0 responds in both groups, gene 1 by
    0.1 (within the noise), gene 2 not at all (and has no variance)."""
    ctrl = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [2.0, 2.0, 1.0]])
    counts = torch.tensor([3, 3, 3, 3])
    shifts = MeanShifts()
    # a response of 1: each group's z = 1 / sqrt(1/3 + 1/3) = 1.22, mean z^2 1.5 < 5.99 / 2
    shifts.set(*_moments(ctrl, torch.tensor([1.0, 0.1, 0.0]))[:1], counts, 2)
    assert shifts.quiet is None  # no sums of squares: no gene is quiet
    sums, sq_sums = _moments(ctrl, torch.tensor([1.0, 0.1, 0.0]))
    shifts.set(sums, counts, 2, sq_sums)
    assert shifts.quiet[0, 1].tolist() == [True, True, True]
    # a response of 3: z = 3.67, mean z^2 13.5 > 3.0
    sums, sq_sums = _moments(ctrl, torch.tensor([3.0, 0.1, 0.0]))
    shifts.set(sums, counts, 2, sq_sums)
    assert shifts.quiet[0, 1].tolist() == [False, True, True]
    assert shifts.quiet[1, 0].tolist() == [False, True, True]
    assert not shifts.quiet[0, 0].any()
    weights = shifts.weights(torch.tensor([0, 0]), 1, anchor=0.5)
    assert weights.tolist() == [[0.5, 1.0, 1.0]] * 2
    assert torch.equal(shifts.weights(torch.tensor([0]), 1, anchor=0.0), torch.zeros(1, 3))
    state = shifts.state_dict()
    older = MeanShifts()
    older.load_state_dict({k: v for k, v in state.items() if k != "quiet"})
    assert older.quiet is None and older.weights(torch.tensor([0]), 1, 0.5).tolist() == [[0.5] * 3]
    loaded = MeanShifts()
    loaded.load_state_dict(state)
    assert torch.equal(loaded.quiet, shifts.quiet)


def _one_cell_groups(ctrl: torch.Tensor, stim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts of one cell per group and condition (rows group * 2 + condition)."""
    sums = torch.stack([ctrl, stim], dim=1).reshape(-1, ctrl.shape[1]).double()
    return sums, torch.ones(len(sums), dtype=torch.long)


def test_level_weight_follows_how_the_groups_respond():
    """Four groups at different levels (2 genes): a response that multiplies expm1(x) by 4 is
    level-aware (weight 1, and the change at a level is log1p(4 expm1(l)) - l); one that adds 1
    to x in every group is additive (weight 0: the change is the shift at any level)."""
    y = torch.tensor([[1.0, 2.0], [3.0, 5.0], [10.0, 20.0], [30.0, 40.0]])
    ctrl = torch.log1p(y)
    shifts = MeanShifts()
    shifts.set(*_one_cell_groups(ctrl, torch.log1p(4 * y)), n_conditions=2)
    assert shifts.level_weight[0, 1].item() == 1.0 and shifts.level_weight[1, 0].item() == 1.0
    level = torch.tensor([[0.2, 4.0]])
    expected = torch.log1p(4 * torch.expm1(level)) - level
    torch.testing.assert_close(
        shifts.change(torch.tensor([0]), 1, level), expected, atol=1e-3, rtol=0
    )
    assert torch.equal(shifts.change(torch.tensor([1]), 1, level), torch.zeros(1, 2))
    shifts.set(*_one_cell_groups(ctrl, ctrl + 1), n_conditions=2)
    assert shifts.level_weight[0, 1].item() == 0.0
    torch.testing.assert_close(shifts.change(torch.tensor([0]), 1, level), torch.ones(1, 2))


def test_level_weight_needs_three_groups_and_log_scale_means():
    y = torch.tensor([[1.0], [3.0], [10.0], [30.0]])
    shifts = MeanShifts()
    shifts.set(*_one_cell_groups(torch.log1p(y[:2]), torch.log1p(4 * y[:2])), n_conditions=2)
    assert shifts.level_weight[0, 1].item() == 0.0  # two groups: nothing to leave out
    shifts.set(*_one_cell_groups(y - 5, 4 * y - 5), n_conditions=2)  # negative means: not log
    assert shifts.level_weight[0, 1].item() == 0.0
    level = torch.tensor([[1.0]])
    torch.testing.assert_close(
        shifts.change(torch.tensor([0]), 1, level), shifts.shifts[0, 1][None]
    )
    shifts.set(*_one_cell_groups(torch.log1p(y), torch.log1p(4 * y)), n_conditions=2)
    state = shifts.state_dict()
    older = MeanShifts()  # saved before the level-aware change: the additive shift
    older.load_state_dict({k: v for k, v in state.items() if not k.startswith("level")})
    assert older.level_weight is None
    torch.testing.assert_close(older.change(torch.tensor([0]), 1, level), shifts.shifts[0, 1][None])
    loaded = MeanShifts()
    loaded.load_state_dict(state)
    assert torch.equal(
        loaded.change(torch.tensor([0]), 1, level), shifts.change(torch.tensor([0]), 1, level)
    )


def test_state_ratio_by_hand():
    """Three groups on a line (source means 0, 1, 3; bandwidth the median squared distance 4),
    one gene whose response equals the position: each group left out is predicted by the other
    two's plain mean and by their mean weighted exp(-d^2 / 4)."""
    means = torch.tensor([[0.0], [1.0], [3.0]])
    responses = torch.tensor([[0.0], [1.0], [3.0]])
    plain = weighted = 0.0
    for held, (a, b) in enumerate([(1, 2), (0, 2), (0, 1)]):
        wa = math.exp(-((means[held, 0] - means[a, 0]).item() ** 2) / 4)
        wb = math.exp(-((means[held, 0] - means[b, 0]).item() ** 2) / 4)
        ra, rb, r = responses[a, 0].item(), responses[b, 0].item(), responses[held, 0].item()
        plain += ((ra + rb) / 2 - r) ** 2
        weighted += ((wa * ra + wb * rb) / (wa + wb) - r) ** 2
    assert state_ratio(means, responses) == pytest.approx(weighted / plain, rel=1e-6)
    assert math.isnan(state_ratio(means[:2], responses[:2]))  # two groups: nothing to weigh
    assert math.isnan(state_ratio(torch.zeros(3, 1), responses))  # groups alike: no bandwidth


def test_auto_anchor_reads_the_state_ratio():
    low, high = AUTO_RATIOS
    assert auto_anchor(0.2) == auto_anchor(low) == 0.0
    assert auto_anchor(high) == auto_anchor(1.5) == 1.0
    assert auto_anchor(low + 0.5 * (high - low)) == 0.5
    assert auto_anchor(low + 0.3 * (high - low)) == 0.25  # rounded to the step
    assert auto_anchor(float("nan")) == auto_anchor(UNKNOWN_RATIO) == AUTO_FALLBACK
    assert check_anchor("auto", "mse") == "auto"
    with pytest.raises(TRVAEError, match="auto"):
        check_anchor("auto", "nb")


def test_state_ratio_of_the_shifts_follows_how_the_groups_respond():
    """Eight groups along a line in 3 genes: a response that grows with the position makes
    near groups respond alike (ratio well below 1: trust trVAE, weight 0); one random response
    per group makes nearness say nothing (ratio near or above 1: the mean shift, weight 1)."""
    gen = torch.Generator().manual_seed(0)
    position = torch.linspace(-1, 1, 8)[:, None]
    ctrl = 2 + position * torch.tensor([1.0, -1.0, 0.5])
    shifts = MeanShifts()
    shifts.set(*_one_cell_groups(ctrl, ctrl + 1 + position), n_conditions=2)
    assert 0 <= shifts.state_ratio[0, 1].item() < AUTO_RATIOS[0]
    assert shifts.auto_weight(0, 1) == 0.0
    noise = torch.randn(8, 3, generator=gen)
    shifts.set(*_one_cell_groups(ctrl, ctrl + 1 + noise), n_conditions=2)
    assert shifts.state_ratio[0, 1].item() >= AUTO_RATIOS[1] and shifts.auto_weight(0, 1) == 1.0
    assert shifts.state_ratio[0, 0].item() == UNKNOWN_RATIO  # a condition to itself
    assert math.isnan(shifts.ratio(0, 0)) and shifts.ratio(0, 1) == shifts.state_ratio[0, 1].item()
    older = MeanShifts()  # saved before the state ratio: the fallback weight
    older.load_state_dict({k: v for k, v in shifts.state_dict().items() if k != "state_ratio"})
    assert older.state_ratio is None and older.auto_weight(0, 1) == AUTO_FALLBACK
    assert math.isnan(older.ratio(0, 1))
    shifts.set(*_one_cell_groups(ctrl[:2], ctrl[:2] + 1), n_conditions=2)
    assert shifts.auto_weight(0, 1) == AUTO_FALLBACK  # two groups: unknown


def test_weights_per_cell():
    shifts = MeanShifts()
    ctrl = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    shifts.set(*_one_cell_groups(ctrl, ctrl + 1), n_conditions=2)
    shifts.quiet = torch.tensor([[[True, False]] * 2] * 2)
    weight = shifts.weights(torch.tensor([0, 0]), 1, torch.tensor([0.0, 0.25]))
    # the quiet gene takes the mean shift's change where the cell's anchor is above 0 only
    assert torch.equal(weight, torch.tensor([[0.0, 0.0], [1.0, 0.25]]))
    assert torch.equal(shifts.weights(torch.tensor([0]), 1, 0.5), torch.tensor([[1.0, 0.5]]))
