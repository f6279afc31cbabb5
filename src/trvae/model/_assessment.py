"""Self-assessment: how well the model would have predicted groups it could see, on the training
data alone, next to the mean shift of the other groups."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from trvae._errors import TRVAEError, check_integer
from trvae.data import validation as V
from trvae.model._response import RESPONSE_COLUMNS, RESPONSE_LEVEL

#: Fewest cells of a group in the control and in a perturbed condition for it to be assessed.
MIN_CELLS = 10
#: DEGs of the real response on which the assessment scores.
N_DEGS = 100
#: Anchor weights (``anchor`` of :class:`~trvae.TRVAE`) that :meth:`~trvae.TRVAE.assess` tries.
ANCHORS = (0.0, 0.25, 0.5, 0.75, 1.0)


class AssessmentMixin:
    """:meth:`assess` for :class:`~trvae.TRVAE`."""

    def assess(
        self,
        group_key: str,
        n_groups: int | None = 3,
        groups: Sequence[str] | None = None,
        control: str | None = None,
        seed: int = 0,
        anchors: Sequence[float] | None = ANCHORS,
        choose_anchor: bool = True,
        calibrate: bool = True,
        **train_kwargs,
    ) -> pd.DataFrame:
        """Estimate, on the training data alone, how far to trust predictions of unseen groups.

        For up to ``n_groups`` groups of ``obs[group_key]`` (e.g. cell types) that have control
        and perturbed cells, the group's perturbed cells are held out, a fresh model with this
        model's settings is fitted to the rest, and the held-out cells are predicted from the
        group's control cells. Each prediction is scored against the real cells on the top-100
        DEGs of the group's response (Pearson r of the change from control, E-distance, R² of
        means) next to the mean shift of the other groups, the simplest baseline. Nothing here
        uses cells outside the training data: the cells you will predict are never touched.

        Parameters
        ----------
        group_key
            Column of the training data's obs with the groups.
        n_groups
            How many groups to hold out (chosen at random with ``seed`` among those with at
            least 10 control and 10 perturbed cells); ``None``: all of them. Each costs one fit.
        groups
            Hold out these groups instead of a random choice.
        control
            The control condition; default ``"control"`` when the model knows it.
        seed
            Seed of the choice of groups and of the refits.
        anchors
            Anchor weights to score (``anchor`` of :class:`TRVAE`: how far the predicted mean
            response is moved toward the mean shift); default :data:`ANCHORS`. The model's own
            is always scored (``"auto"``: what each refit reads off its own training groups);
            ``None``: only that. Each costs a prediction, not a fit.
        choose_anchor
            Set the model's ``anchor`` to the weight that scored best on the pseudo-held-out
            groups (the lowest mean rank among ``anchors`` over Pearson-Δ and E-distance of
            every row; a tie keeps the weight nearest the model's), so that :meth:`predict`
            uses it. The choice and the ranks are in ``attrs``.
        calibrate
            Widen (or narrow) the response interval that :meth:`predict` writes
            (``var["trvae_response_lo"]`` / ``["trvae_response_hi"]``) by the factor that makes
            it cover the pseudo-held-out groups' real mean changes of their top-100 DEGs at its
            nominal level (90 %), at the anchor of the verdict. The factor measured is
            ``attrs["interval_scale"]`` (NaN where no refit had an interval); with ``calibrate``
            it is kept in the model (1 before any assessment).
        **train_kwargs
            Arguments of :meth:`train` for the refits (e.g. the ``max_epochs`` you trained with);
            by default the package defaults.

        Returns
        -------
        A DataFrame with one row per (group, perturbation, anchor weight): ``delta_pearson``,
        ``edist``, ``r2_mean``, ``r2_var`` (of the per-gene variances: the shape) of trVAE and
        the same with suffix ``_mean_shift``, and
        ``beats_mean_shift`` (higher Pearson r *and* lower E-distance) and ``interval_coverage``
        (the fraction of the DEGs whose real mean change lies in the refit's response interval,
        before any calibration) and ``own`` (the row's weight is the refit's own).
        ``attrs["anchor"]`` is the weight the verdict is about (the chosen one, or the model's:
        the median over the rows of the refits' own),
        ``attrs["anchor_ranks"]`` the mean rank of each weight and ``attrs["verdict"]`` a
        one-line summary; the frame is also kept as ``model.assessment_``.

        Examples
        --------
        >>> import trvae
        >>> adata = trvae.datasets.simulate_perturbation("shared", n_genes=40, cells_per_group=30)
        >>> model = trvae.TRVAE(adata, condition_key="condition", n_hidden=(16,), n_latent=4)
        >>> table = model.assess("cell_type", n_groups=1, max_epochs=2, accelerator="cpu")
        >>> list(table.columns[:3]), table.attrs["verdict"].startswith("beat the mean shift in")
        (['group', 'target', 'anchor'], True)
        """
        if n_groups is not None:
            n_groups = check_integer("n_groups", n_groups)
        adata = self._training_adata("assess")
        labels = V.check_obs_key(adata, group_key, "group_key").astype(str).to_numpy()
        conditions = V.check_obs_key(adata, self.condition_key).astype(str).to_numpy()
        control = _control_condition(control, self.conditions_)
        chosen = _pseudo_held_out(labels, conditions, control, n_groups, groups, seed)
        grid = sorted(set(map(float, anchors or ())))
        mse = self.init_params["likelihood"] == "mse"
        rows, ratios = [], []
        groups = labels
        for group, target in chosen:
            held = (groups == group) & (conditions == target)
            train = adata[~((groups == group) & (conditions != control))]
            model = type(self)(train, **self._refit_params())
            model.train(seed=seed, **{"progress_bar": False, **train_kwargs})
            source = adata[(groups == group) & (conditions == control)]
            device = train_kwargs.get("accelerator", "auto")
            other = np.isin(groups, _both(groups, conditions, control, target)) & (groups != group)
            shift = _mean_shift(
                adata, model.layer, other & (conditions == target), other & (conditions == control)
            )
            real = adata[held]
            real_x, source_x = _dense_x(real, model.layer), _dense_x(source, model.layer)
            idx = _response_degs(real_x, source_x, real.var_names)
            r, c = real_x[:, idx], source_x[:, idx]
            real_change = r.mean(0) - c.mean(0)
            # the refit's own anchor ("auto": read off its own training groups), then the grid
            own = model._own_anchor(control, target) if mse else 0.0
            for weight in sorted({own, *grid}) if mse else [0.0]:
                pred = model.predict(source, target, accelerator=device, anchor=weight)
                row = _score(r, c, pred.X, shift, idx)
                ratios.append(_interval_ratios(pred, real_change, idx))
                row["interval_coverage"] = _coverage(ratios[-1])
                keys = {"group": group, "target": target, "anchor": weight, "own": weight == own}
                rows.append({**keys, **row})
        table = pd.DataFrame(rows)
        ranks = _anchor_ranks(table)
        current = float(table.loc[table["own"], "anchor"].median())
        kept = table["own"].to_numpy()  # the rows the verdict and the interval scale are of
        best = current
        if choose_anchor and grid and len(ranks) > 1:
            nearest = sorted(ranks.index, key=lambda w: (ranks[w], abs(w - current)))
            best = float(nearest[0])
            self.init_params["anchor"] = best
            kept = (table["anchor"] == best).to_numpy()
        scale = _interval_scale([ratio for ratio, keep in zip(ratios, kept, strict=True) if keep])
        if calibrate and np.isfinite(scale) and scale > 0:
            self.module.mean_shifts.set_scale(scale)
        table.attrs["anchor"], table.attrs["anchor_ranks"] = best, ranks.to_dict()
        table.attrs["interval_scale"] = scale
        verdict = _verdict(table[kept], best, best != current)
        table.attrs["verdict"] = verdict + _interval_note(scale, calibrate)
        self.assessment_ = table
        return table

    def _training_adata(self, what: str) -> AnnData:
        if getattr(self, "adata", None) is None:
            raise TRVAEError(f"{what} needs the training data: load the model with adata=")
        return self.adata

    def _refit_params(self) -> dict:
        """Constructor arguments that rebuild this model's configuration on other cells."""
        params = {k: v for k, v in self.init_params.items() if k != "mmd_groups"}
        return {"condition_key": self.condition_key, "layer": self.layer, **params}


def _control_condition(control: str | None, conditions: list[str]) -> str:
    if control is None:
        if "control" not in conditions:
            raise TRVAEError(f"name the control condition (control=...); known: {conditions}")
        return "control"
    return V.check_condition_value(control, conditions, "control condition")


def _both(groups: np.ndarray, conditions: np.ndarray, control: str, target: str) -> list[str]:
    """Groups with cells in both ``control`` and ``target``."""
    return sorted(set(groups[conditions == control]) & set(groups[conditions == target]))


def _pseudo_held_out(
    groups: np.ndarray,
    conditions: np.ndarray,
    control: str,
    n_groups: int | None,
    names: Sequence[str] | None,
    seed: int,
) -> list[tuple[str, str]]:
    """(group, perturbation) pairs to hold out: ``n_groups`` eligible groups, every perturbation."""
    frame = pd.crosstab(groups, conditions)
    if control not in frame.columns:
        raise TRVAEError(f"no cells of the control condition {control!r}")
    targets = [c for c in frame.columns if c != control]
    eligible = [
        g
        for g in frame.index
        if frame.loc[g, control] >= MIN_CELLS and (frame.loc[g, targets] >= MIN_CELLS).any()
    ]
    if len(eligible) < 2:
        raise TRVAEError(
            "assess needs two groups with at least "
            f"{MIN_CELLS} control and {MIN_CELLS} perturbed cells; found {eligible}"
        )
    if names is not None:
        unknown = sorted(set(map(str, names)) - set(eligible))
        if unknown:
            raise TRVAEError(f"groups {unknown} lack {MIN_CELLS} control and perturbed cells")
        chosen = sorted(map(str, names))
    elif n_groups is None or n_groups >= len(eligible):
        chosen = sorted(eligible)
    else:
        chosen = sorted(np.random.default_rng(seed).choice(eligible, n_groups, replace=False))
    return [(g, t) for g in chosen for t in targets if frame.loc[g, t] >= MIN_CELLS]


def _mean_shift(
    adata: AnnData, layer: str | None, target: np.ndarray, source: np.ndarray
) -> np.ndarray:
    from trvae.metrics._helpers import _dense  # lazily: scipy.stats off `import trvae`

    x = V.get_matrix(adata, layer)
    return (
        _dense(x[np.flatnonzero(target)].mean(0)).ravel()
        - _dense(x[np.flatnonzero(source)].mean(0)).ravel()
    )


def _response_degs(real: np.ndarray, source: np.ndarray, var_names: pd.Index) -> np.ndarray:
    """Column indices of the top DEGs of the real response (dense real vs source cells)."""
    from trvae.metrics import top_degs

    labels = ["real"] * len(real) + ["control"] * len(source)
    both = AnnData(
        X=np.vstack([real, source]),
        obs=pd.DataFrame({"which": labels}, index=[str(i) for i in range(len(labels))]),
        var=pd.DataFrame(index=var_names),
    )
    degs = top_degs(both, "which", "real", "control", n_genes=N_DEGS)
    return var_names.get_indexer(degs)


def _score(r: np.ndarray, c: np.ndarray, pred, shift, idx: np.ndarray) -> dict:
    """trVAE's and the mean shift's scores on genes ``idx``; ``r`` and ``c`` are the real and
    the source cells on those genes, dense."""
    from trvae.metrics import delta_pearson, energy_distance, r2_mean, r2_var
    from trvae.metrics._helpers import _dense

    row = {"n_cells": len(r)}
    for name, p in (("", _dense(pred)[:, idx]), ("_mean_shift", c + shift[idx])):
        row[f"delta_pearson{name}"] = delta_pearson(p, r, c)
        row[f"edist{name}"] = energy_distance(p, r)
        row[f"r2_mean{name}"] = r2_mean(p, r)
        row[f"r2_var{name}"] = r2_var(p, r)
    row["beats_mean_shift"] = bool(
        row["delta_pearson"] > row["delta_pearson_mean_shift"]
        and row["edist"] < row["edist_mean_shift"]
    )
    return row


def _dense_x(adata: AnnData, layer: str | None) -> np.ndarray:
    """``adata``'s expression matrix (or ``layer``), dense."""
    from trvae.metrics._helpers import _dense

    return _dense(V.get_matrix(adata, layer))


def _interval_ratios(pred: AnnData, real_change: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``|real change - predicted change| / half-width`` of the prediction's response interval
    on genes ``idx`` (NaN where it has none): 1 is the interval's edge."""
    if RESPONSE_COLUMNS[0] not in pred.var:
        return np.full(len(idx), np.nan)
    lo, mid, hi = (pred.var[f"trvae_response{s}"].to_numpy()[idx] for s in ("_lo", "", "_hi"))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(real_change - mid) / ((hi - lo) / 2)
    return np.where(np.abs(real_change - mid) == 0, 0.0, ratio)


def _coverage(ratios: np.ndarray) -> float:
    ok = np.isfinite(ratios)
    return float(np.mean(ratios[ok] <= 1)) if ok.any() else float("nan")


def _interval_scale(ratios: list[np.ndarray]) -> float:
    """The factor of the interval's half-width that covers :data:`RESPONSE_LEVEL` of the pooled
    (row, gene) pairs; NaN without any."""
    pooled = np.concatenate(ratios) if ratios else np.zeros(0)
    pooled = pooled[np.isfinite(pooled)]
    if not len(pooled):
        return float("nan")
    return float(np.quantile(pooled, RESPONSE_LEVEL, method="inverted_cdf"))


def _interval_note(scale: float, calibrate: bool) -> str:
    if not np.isfinite(scale):
        return ""
    what = "widened" if scale >= 1 else "narrowed"
    if not calibrate:
        return f"; its response interval would need x{scale:.2f} to cover {RESPONSE_LEVEL:.0%}"
    return f"; response interval {what} x{scale:.2f} to cover {RESPONSE_LEVEL:.0%}"


def _anchor_ranks(table: pd.DataFrame) -> pd.Series:
    """Mean rank of each anchor weight over the rows' Pearson-Δ (high first) and E-distance."""
    keys = ["group", "target"]
    pearson = table.groupby(keys)["delta_pearson"].rank(ascending=False)
    edist = table.groupby(keys)["edist"].rank(ascending=True)
    return ((pearson + edist) / 2).groupby(table["anchor"]).mean()


def _verdict(table: pd.DataFrame, anchor: float, chosen: bool) -> str:
    wins, n = int(table["beats_mean_shift"].sum()), len(table)
    how = "chosen here" if chosen else "the model's"
    return (
        f"beat the mean shift in {wins} of {n} pseudo-held-out groups (Pearson-Δ and E-distance); "
        f"median Pearson-Δ {table['delta_pearson'].median():.2f} "
        f"(mean shift {table['delta_pearson_mean_shift'].median():.2f}); anchor {anchor:g} "
        f"({how}: predicted mean responses {100 * (1 - anchor):.0f} % trVAE's, "
        f"{100 * anchor:.0f} % the mean shift's)"
    )
