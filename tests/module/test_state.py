import numpy as np
import torch

from trvae.module import state as S


def test_state_weights_by_hand():
    means = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    # squared distances to the cells' mean (0, 0): 0, 1, 4; between groups 1, 4, 5: median 4
    weights = S.state_weights(means, torch.zeros(2), np.array([10, 20, 10]))
    expected = np.array([10, 20 * np.exp(-1 / 4), 10 * np.exp(-4 / 4)])
    np.testing.assert_allclose(weights, expected / expected.sum())
    # only the groups' relative sizes count
    np.testing.assert_allclose(
        S.state_weights(means, torch.zeros(2), np.array([30, 60, 30])), weights
    )
    assert S.state_weights(means[:1], torch.zeros(2), np.array([5])) is None
    same = torch.ones(3, 2)
    assert S.state_weights(same, torch.zeros(2), np.array([1, 1, 1])) is None
