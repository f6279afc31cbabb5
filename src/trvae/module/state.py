"""State matching of the quantile read-out (:mod:`trvae.module.readout`, step 5).

``predict(match_state=True)``, the default with ``mmd_group_key`` and the training data at
hand (:class:`~trvae.model._table_match.TableMatchMixin`). The target condition's table pools
the residuals of every training group, but a held-out group's response spreads like those
of the groups it resembles: on the development sets (Kang counts and the synthetic sets)
a table rebuilt per prediction from the training groups' target cells, each group weighted
by its size times ``exp(-(d_g - min d) / h)`` (``d_g`` the squared distance over all
genes between the group's mean and the predicted cells' mean in their source condition,
``h`` the median of it between training groups: the state ratio's weights of
:mod:`trvae.module.anchor`), raised the mean variance R² on each of the six sets where
it was screened (``docs/choosing-parameters.md``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def state_weights(means: Tensor, cells_mean: Tensor, sizes: np.ndarray) -> np.ndarray | None:
    """Weights (summing to 1) of the training groups whose source-condition ``means`` (groups x
    genes) lie at squared distances ``d`` from the predicted cells' mean ``cells_mean``:
    ``sizes * exp(-(d - min d) / h)``, ``h`` the median squared distance between the groups;
    ``None`` when ``h`` is 0 (the groups' means do not differ) or there is one group.

    Examples
    --------
    >>> import torch
    >>> means = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> # d = 0, 1, 4; h = median(1, 4, 5) = 4; weights exp(0), exp(-1/4), exp(-1)
    >>> state_weights(means, torch.zeros(2), np.array([10, 10, 10])).round(3)
    array([0.466, 0.363, 0.171])
    """
    if len(means) < 2:
        return None
    means = means.double()
    distance = ((means - cells_mean.double()) ** 2).sum(1)
    between = torch.pdist(means) ** 2
    bandwidth = torch.quantile(between, 0.5)
    if not bandwidth > 0:
        return None
    weights = torch.from_numpy(np.asarray(sizes, np.float64))
    weights = weights * torch.exp(-(distance - distance.min()) / bandwidth)
    return (weights / weights.sum()).numpy()
