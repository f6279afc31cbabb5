"""The default training budget: how many epochs a fit runs when ``max_epochs`` is not given."""

from __future__ import annotations

#: Cells a default fit shows the network (epochs x cells), and the bounds on its epochs.
CELL_BUDGET, MIN_EPOCHS, MAX_EPOCHS = 150_000, 10, 200
#: The count likelihoods (NB, ZINB) train this many times the epochs (at most MAX_EPOCHS).
COUNT_EPOCH_FACTOR = 2


def epoch_budget(n_cells: int, likelihood: str = "mse") -> int:
    """Default number of epochs for ``n_cells`` cells: ``ceil(150000 / n_cells)`` in [10, 200];
    for ``likelihood="nb"`` or ``"zinb"`` twice that (:data:`COUNT_EPOCH_FACTOR`), at most 200.

    The budget in cells rather than epochs keeps a default fit's cost about constant: small data
    sets get more passes, large ones fewer (evidence: ``docs/choosing-parameters.md``).

    Examples
    --------
    >>> epoch_budget(4000), epoch_budget(100), epoch_budget(1_000_000), epoch_budget(4000, "nb")
    (38, 200, 10, 76)
    """
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, -(-CELL_BUDGET // max(int(n_cells), 1))))
    if likelihood != "mse":
        epochs = min(MAX_EPOCHS, COUNT_EPOCH_FACTOR * epochs)
    return int(epochs)
