"""The training data's mean shift between conditions, which a prediction's mean response can be
anchored to (``anchor`` of :class:`trvae.TRVAE` and :meth:`~trvae.TRVAE.predict`), and how much
the groups' responses differ (the width of :meth:`~trvae.TRVAE.predict`'s response interval).

For conditions ``s`` and ``t`` the shift is ``mean(x | t) - mean(x | s)`` over the cells of the
groups (``mmd_group_key``) that have both conditions, all cells pooled: the "mean shift of the
other groups" baseline of the benchmarks. Without groups, or when no group has both, over all
training cells.

The spread is the SD over those groups of their own response (``mean(x | t) - mean(x | s)`` per
group) times ``sqrt(1 + 1/k)`` for ``k`` groups: with a Student-t quantile of ``k - 1`` degrees
of freedom, the classical prediction interval for the response of one more group drawn like
them. That interval ignores the error of the predicted response itself, so it is too narrow
for trVAE's prediction; :meth:`~trvae.TRVAE.assess` measures by how much on pseudo-held-out
groups of the training data and stores the factor as ``scale`` (1 until then), which
:meth:`MeanShifts.spread` applies.

A gene is **quiet** from ``s`` to ``t`` when no group's own response is significant: with
``z`` each group's response over its standard error (groups with at least two cells in both
conditions), ``mean(z^2)`` below the chi-square 95 % quantile of ``k`` degrees of freedom over
``k``. trVAE's predicted change of such a gene is extrapolation noise, so the anchored read-out
gives it the mean shift's change (weight 1, :meth:`MeanShifts.weights`).

**Level-aware change.** On log-expression ``x = log1p(y)`` a response that multiplies ``y`` by
``f`` moves ``x`` less where the gene is low: a group that expresses a gene less than the
training groups changes less on the log scale than their mean shift says. With ``f`` the
geometric mean over the paired groups of ``expm1(mean(x | t)) / expm1(mean(x | s))`` (a
pseudo-level of 1e-3), a cell at level ``l`` (its decoder mean) changes by
``log1p(f * expm1(l)) - l``. Whether this or the additive shift describes the data better is
the data's to say: the weight of the level-aware change (``level_weight``, one of
:data:`LEVEL_WEIGHTS` per pair of conditions) is the one whose mix best predicts each paired
group's own mean response from the others (leave one group out, squared error over genes). It
needs three paired groups and non-negative log-scale means (at most :data:`LOG_MAX`); else 0,
the additive shift, as for models saved before it existed.

**How much to anchor** (``anchor="auto"``, :func:`auto_anchor`). trVAE can only improve on the
mean shift where a group's response follows its cell state: where groups that look alike in the
source condition respond alike. The **state ratio** (:func:`state_ratio`) measures that on the
paired groups: leave one group out and predict its response (over all genes) by the others'
mean, or by their mean weighted by how close their source-condition means lie to its own
(Gaussian weights, bandwidth the median squared distance between groups); the ratio is the
weighted prediction's squared error over the plain mean's. Near 1 the groups' states say
nothing about their responses and trVAE's departures from the mean shift are extrapolation; well
below 1 they do. The weight is 0 at a ratio of at most ``AUTO_RATIOS[0]``, 1 from
``AUTO_RATIOS[1]``, linear between, rounded to :data:`AUTO_STEP`; :data:`AUTO_FALLBACK` where the
ratio is unknown (fewer than three paired groups, no groups, a model saved before it existed).

**Local ratio.** Where it is below 1 the anchor's target is not the pooled shift but the local
one, read off the predicted cells' nearest training cells in z
(:mod:`trvae.module.local_shift`); stored here per pair of conditions (``local_ratio``, NaN /
:data:`UNKNOWN_RATIO` where unknown or not stored: the pooled shift).
"""

from __future__ import annotations

import math

import torch
from scipy.stats import chi2
from torch import Tensor, nn

from trvae._errors import TRVAEError

#: Level of the test that makes a gene quiet (no training group's response significant).
QUIET_LEVEL = 0.95
#: Weights of the level-aware change compared by leave-one-group-out (the first on ties).
LEVEL_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Group means above this are not log-expression: the change stays additive.
LOG_MAX = 30.0
#: Pseudo-level (of ``expm1(x)``) of the level-aware fold changes.
LEVEL_EPS = 1e-3
#: ``anchor="auto"``: the state ratios at which the weight is 0 and 1 (linear between).
AUTO_RATIOS = (0.7, 1.0)
#: ``anchor="auto"``: the weight is rounded to a multiple of this.
AUTO_STEP = 0.25
#: ``anchor="auto"`` where the state ratio is unknown.
AUTO_FALLBACK = 0.5
#: The stored state ratio of a pair of conditions where it is unknown (ratios are >= 0).
UNKNOWN_RATIO = -1.0


class MeanShifts(nn.Module):
    """Holder of the shifts, a buffer ``shifts`` (conditions x conditions x genes; ``None``
    until :meth:`set`); a state dict without it (a model saved by an older trvae) leaves it unset.

    Examples
    --------
    >>> import torch
    >>> shifts = MeanShifts()
    >>> sums = torch.tensor([[0.0], [2.0], [4.0], [10.0]])  # (group, condition) 0/0, 0/1, 1/0, 1/1
    >>> shifts.set(sums, torch.tensor([1, 1, 1, 1]), n_conditions=2)
    >>> shifts(torch.tensor([0]), 1)  # control -> stimulated: (2 + 10) / 2 - (0 + 4) / 2
    tensor([[4.]])
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shifts", None)
        self.register_buffer("spreads", None)
        self.register_buffer("dof", None)
        self.register_buffer("quiet", None)
        self.register_buffer("level_fold", None)
        self.register_buffer("level_weight", None)
        self.register_buffer("state_ratio", None)
        self.register_buffer("local_ratio", None)
        self.register_buffer("scale", torch.ones(()))

    @property
    def built(self) -> bool:
        return self.shifts is not None

    @property
    def has_spreads(self) -> bool:
        """Whether the between-group spreads of the responses are stored (models trained by
        this trvae or later)."""
        return self.spreads is not None and self.dof is not None

    def set(
        self, sums: Tensor, counts: Tensor, n_conditions: int, sq_sums: Tensor | None = None
    ) -> None:
        """Shifts from per-(group, condition) sums of expression (rows ``group * C + condition``,
        genes in columns) and cell counts; ``sq_sums``, the sums of squares, mark the quiet
        genes (none without them)."""
        n_genes = sums.shape[1]
        sums = sums.double().reshape(-1, n_conditions, n_genes)
        counts = counts.double().reshape(-1, n_conditions)
        shifts = torch.zeros(n_conditions, n_conditions, n_genes, dtype=torch.float64)
        spreads = torch.zeros_like(shifts)  # 0 where fewer than two groups: dof 0 says so
        dof = torch.zeros(n_conditions, n_conditions, dtype=torch.float64)
        quiet = torch.zeros(n_conditions, n_conditions, n_genes, dtype=torch.bool)
        level_fold = torch.zeros_like(shifts)
        level_weight = torch.zeros_like(dof)
        ratio = torch.full_like(dof, UNKNOWN_RATIO)
        group_means = sums / counts.clamp_min(1)[..., None]
        observed = group_means[counts > 0]
        log_scale = bool(((observed >= 0) & (observed <= LOG_MAX)).all())
        if sq_sums is not None:  # squared standard error of each group mean
            n = counts[..., None]
            variance = (sq_sums.double().reshape(sums.shape) - sums * group_means).clamp_min(0)
            sq_error = variance / (n - 1).clamp_min(1) / n.clamp_min(1)
        for s in range(n_conditions):
            for t in range(n_conditions):
                tested = (counts[:, s] >= 2) & (counts[:, t] >= 2)
                if sq_sums is not None and s != t and tested.any():
                    response = group_means[tested, t] - group_means[tested, s]
                    error = (sq_error[tested, t] + sq_error[tested, s]).clamp_min(1e-12)
                    k = int(tested.sum())
                    quiet[s, t] = (response**2 / error).mean(0) < chi2.ppf(QUIET_LEVEL, k) / k
                paired = (counts[:, s] > 0) & (counts[:, t] > 0)
                k = int(paired.sum())
                if k >= 2:  # a new group's response: the paired groups' spread, widened for k
                    responses = group_means[paired, t] - group_means[paired, s]
                    spreads[s, t] = responses.std(0) * (1 + 1 / k) ** 0.5
                    dof[s, t] = k - 1
                    if s != t:
                        found = state_ratio(group_means[paired, s], responses)
                        ratio[s, t] = found if math.isfinite(found) else UNKNOWN_RATIO
                    if log_scale and s != t:
                        lin = torch.log(torch.expm1(group_means[paired]) + LEVEL_EPS)
                        level_fold[s, t] = (lin[:, t] - lin[:, s]).mean(0)
                        level_weight[s, t] = _level_weight(
                            sums[paired][:, [s, t]], counts[paired][:, [s, t]], lin[:, [s, t]]
                        )
                if k == 0:
                    paired = torch.ones_like(paired)
                means = sums[paired].sum(0) / counts[paired].sum(0).clamp_min(1)[:, None]
                shifts[s, t] = means[t] - means[s]
        self.shifts = shifts.float()
        self.spreads, self.dof = spreads.float(), dof.float()
        self.quiet = quiet if sq_sums is not None else None
        self.level_fold, self.level_weight = level_fold.float(), level_weight.float()
        self.state_ratio = ratio.float()

    def ratio(self, source: int, target: int) -> float:
        """The state ratio from condition ``source`` to ``target``; NaN where unknown (stored as
        :data:`UNKNOWN_RATIO`, or not stored: a model saved before it existed)."""
        return _stored_ratio(self.state_ratio, source, target)

    def local(self, source: int, target: int) -> float:
        """The local ratio from condition ``source`` to ``target``
        (:mod:`trvae.module.local_shift`; below 1: the anchor's target is the local shift); NaN
        where unknown or not stored (a model saved before it existed: the pooled shift)."""
        return _stored_ratio(self.local_ratio, source, target)

    def set_local(self, ratios: Tensor) -> None:
        """Store the local ratios (conditions x conditions; :data:`UNKNOWN_RATIO` where
        unknown, NaN taken as unknown)."""
        ratios = torch.as_tensor(ratios, dtype=torch.float32)
        self.local_ratio = torch.where(torch.isnan(ratios), UNKNOWN_RATIO, ratios).contiguous()

    def auto_weight(self, source: int, target: int) -> float:
        """``anchor="auto"``'s weight from condition ``source`` to ``target``
        (:func:`auto_anchor` of :meth:`ratio`)."""
        return auto_anchor(self.ratio(source, target))

    def weights(self, source: Tensor, target: int, anchor: float | Tensor) -> Tensor:
        """The mean shift's weight in each cell's (condition ``source``) predicted change to
        ``target``: ``anchor`` (a number, or one per cell), and 1 for the quiet genes of the
        cells whose anchor is above 0 (cells x genes)."""
        per_cell = torch.as_tensor(anchor, dtype=torch.float32, device=source.device)
        per_cell = per_cell.expand(len(source))[:, None]
        weight = per_cell.expand(len(source), self.shifts.shape[-1])
        if self.quiet is not None:
            weight = torch.where(self.quiet[source, target] & (per_cell > 0), 1.0, weight)
        return weight

    def spread(self, source: Tensor, target: int) -> tuple[Tensor, Tensor]:
        """The SD of a new group's response from each cell's condition ``source`` to ``target``
        (cells x genes: the SD over the groups that have both, times ``sqrt(1 + 1/k)`` and
        :attr:`scale`; NaN with fewer than two such groups) and its degrees of freedom ``k - 1``
        (per cell)."""
        dof = self.dof[source, target]
        spread = self.spreads[source, target] * self.scale
        return torch.where(dof[:, None] >= 1, spread, float("nan")), dof

    def set_scale(self, scale: float) -> None:
        """Set :attr:`scale`, the factor of every spread (a positive finite number)."""
        value = float(scale)
        if not (value > 0 and value < float("inf")):
            raise TRVAEError(f"the spread's scale must be a positive finite number, got {scale}")
        self.scale = torch.tensor(value, device=self.scale.device)

    def forward(self, source: Tensor, target: int) -> Tensor:
        """The shift from each cell's condition ``source`` to condition ``target`` (cells x
        genes)."""
        return self.shifts[source, target]

    def change(self, source: Tensor, target: int, level: Tensor) -> Tensor:
        """Each cell's change from its condition ``source`` to ``target`` at its ``level`` (cells
        x genes, log scale): the shift mixed with the level-aware change by ``level_weight``."""
        shift = self.shifts[source, target]
        if self.level_weight is None:
            return shift
        aware = _level_aware(self.level_fold[source, target], level.clamp(0.0, LOG_MAX))
        return shift + self.level_weight[source, target][:, None] * (aware - shift)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        for name in ("shifts", "spreads", "dof"):
            value = state_dict.get(prefix + name)
            setattr(self, name, None if value is None else value.detach().float().contiguous())
        quiet = state_dict.get(prefix + "quiet")  # absent before trvae stored it: none quiet
        self.quiet = None if quiet is None else quiet.detach().bool().contiguous()
        # absent in models saved before they existed: the additive shift, the fallback anchor
        for name in ("level_fold", "level_weight", "state_ratio", "local_ratio"):
            value = state_dict.get(prefix + name)
            setattr(self, name, None if value is None else value.detach().float().contiguous())
        scale = state_dict.get(prefix + "scale")  # absent before trvae stored it: 1
        self.scale = torch.ones(()) if scale is None else scale.detach().float().reshape(())


def _stored_ratio(ratios: Tensor | None, source: int, target: int) -> float:
    """``ratios[source, target]``; NaN where not stored or stored as unknown (negative)."""
    if ratios is None:
        return float("nan")
    value = float(ratios[source, target])
    return value if value >= 0 else float("nan")


def _level_aware(log_fold: Tensor, level: Tensor) -> Tensor:
    """The change of ``log1p(y)`` at ``level`` when ``y`` is multiplied by ``exp(log_fold)``."""
    return torch.log1p(torch.exp(log_fold) * torch.expm1(level)) - level


def _level_weight(sums: Tensor, counts: Tensor, lin: Tensor) -> float:
    """The :data:`LEVEL_WEIGHTS` entry whose mix of the additive and the level-aware change
    best predicts each group's response (rows) from the other groups': ``sums`` and ``counts``
    of the source and target condition (columns), ``lin`` their ``log(expm1(mean) + eps)``;
    0 with fewer than three groups."""
    k = len(sums)
    if k < 3:
        return 0.0
    means = sums / counts[..., None]
    weights = torch.tensor(LEVEL_WEIGHTS, dtype=sums.dtype)
    errors = torch.zeros_like(weights)
    for held in range(k):
        rest = torch.arange(k) != held
        pooled = sums[rest].sum(0) / counts[rest].sum(0)[:, None]
        additive = pooled[1] - pooled[0]
        fold = (lin[rest, 1] - lin[rest, 0]).mean(0)
        level = means[held, 0]
        aware = _level_aware(fold, level)
        mixed = additive + weights[:, None] * (aware - additive)
        errors += ((mixed - (means[held, 1] - level)) ** 2).sum(1)
    return float(weights[int(torch.argmin(errors))])


def state_ratio(source_means: Tensor, responses: Tensor) -> float:
    """How much closer a group's response (row of ``responses``, groups x genes) is predicted
    by the other groups' responses weighted by the nearness of their ``source_means`` than by
    their plain mean (leave one group out; squared errors summed over groups and genes): the
    ratio of the two errors. NaN with fewer than three groups or when either error is 0."""
    k = len(responses)
    if k < 3:
        return float("nan")
    means, responses = source_means.double(), responses.double()
    distance = torch.cdist(means, means) ** 2
    upper = torch.triu_indices(k, k, 1)
    bandwidth = torch.quantile(distance[upper[0], upper[1]], 0.5)
    if not bandwidth > 0:
        return float("nan")
    plain = weighted = 0.0
    for held in range(k):
        rest = torch.arange(k) != held
        near = torch.softmax(-distance[held, rest] / bandwidth, dim=0)
        plain += float(((responses[rest].mean(0) - responses[held]) ** 2).sum())
        weighted += float(((near @ responses[rest] - responses[held]) ** 2).sum())
    return weighted / plain if plain > 0 and weighted > 0 else float("nan")


def auto_anchor(ratio: float) -> float:
    """``anchor="auto"``'s weight at state ratio ``ratio``: 0 up to ``AUTO_RATIOS[0]``, 1 from
    ``AUTO_RATIOS[1]``, linear between, rounded to :data:`AUTO_STEP`; :data:`AUTO_FALLBACK`
    for an unknown ratio (NaN or negative, :data:`UNKNOWN_RATIO`)."""
    if not (math.isfinite(ratio) and ratio >= 0):
        return AUTO_FALLBACK
    low, high = AUTO_RATIOS
    weight = min(max((ratio - low) / (high - low), 0.0), 1.0)
    return AUTO_STEP * math.floor(weight / AUTO_STEP + 0.5)


def check_anchor(anchor: float | str, likelihood: str) -> float | str:
    """``anchor`` as a float in [0, 1], or ``"auto"``; only 0 for count likelihoods (no
    quantile read-out)."""
    if isinstance(anchor, str) and anchor == "auto":
        if likelihood != "mse":
            raise TRVAEError(
                f"anchor='auto' applies to the quantile read-out of likelihood='mse', not "
                f"{likelihood!r}"
            )
        return anchor
    try:
        value = float(anchor)
    except (TypeError, ValueError):
        raise TRVAEError(f"anchor must be a number in [0, 1] or 'auto', got {anchor!r}") from None
    if not 0.0 <= value <= 1.0:
        raise TRVAEError(f"anchor must be in [0, 1], got {value}")
    if value > 0 and likelihood != "mse":
        raise TRVAEError(
            f"anchor applies to the quantile read-out of likelihood='mse', not {likelihood!r}"
        )
    return value
