"""What a prediction says about the mean response: its per-gene interval, and predicting group
by group (:meth:`~trvae.TRVAE.predict` with ``group_key``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from trvae._errors import TRVAEError
from trvae.data import validation as V
from trvae.data.cell_data import CellData

#: Nominal level of the response interval that :meth:`~trvae.TRVAE.predict` writes into var.
RESPONSE_LEVEL = 0.9
#: The var columns of the predicted mean response and its interval.
RESPONSE_COLUMNS = ("trvae_response", "trvae_response_sd", "trvae_response_lo", "trvae_response_hi")


class ResponseMixin:
    """The response columns and the per-group prediction of :class:`~trvae.TRVAE`'s
    :meth:`predict`."""

    @torch.no_grad()
    def _add_response(self, result: AnnData, data: CellData, target: int) -> None:
        """:data:`RESPONSE_COLUMNS` of an in-memory MSE prediction: the mean change from the
        source cells, the SD of a new group's response (:mod:`trvae.module.anchor`) and the
        Student-t interval at :data:`RESPONSE_LEVEL` around the change."""
        shifts = self.module.mean_shifts
        if self.init_params["likelihood"] != "mse" or not shifts.has_spreads or not len(data):
            return
        total = torch.zeros(self.module.n_input, dtype=torch.float64)
        sd, dof = torch.zeros_like(total), 0.0
        for x, c, _ in data.batches(np.arange(len(data)), 4096):
            spread, cell_dof = shifts.spread(c, target)
            total += x.sum(0, dtype=torch.float64)
            sd += spread.sum(0, dtype=torch.float64)
            dof += float(cell_dof.sum(dtype=torch.float64))
        n = len(data)
        response = np.asarray(result.X).mean(0, dtype=np.float64) - total.numpy() / n
        sd, dof = sd.numpy() / n, dof / n
        from scipy.stats import t as student_t  # lazily: scipy.stats off `import trvae`

        q = student_t.ppf(0.5 + RESPONSE_LEVEL / 2, dof) if dof >= 1 else np.nan
        for name, value in zip(
            RESPONSE_COLUMNS, (response, sd, response - q * sd, response + q * sd), strict=True
        ):
            result.var[name] = value
        interval = {"level": RESPONSE_LEVEL, "dof": dof, "scale": float(shifts.scale)}
        result.uns["trvae_prediction"]["response_interval"] = interval

    def _predict_groups(
        self, adata: AnnData, target_condition: str, group_key: str, out, kwargs: dict
    ) -> AnnData:
        """:meth:`predict` of each group of ``adata.obs[group_key]`` alone, in ``adata``'s order."""
        if out is not None:
            raise TRVAEError(
                "predict(group_key=...) builds the prediction in memory and takes no out=; "
                "predict each group into a file of its own instead"
            )
        labels = V.check_obs_key(adata, group_key, "group_key").astype(str).to_numpy()
        x, first, responses, weights = None, None, {}, {}
        with self._reusing_training_data():  # the training data's parts: made once
            for group in pd.unique(labels):
                rows = np.flatnonzero(labels == group)
                pred = self.predict(adata[rows], target_condition, **kwargs)
                if RESPONSE_COLUMNS[0] in pred.var:
                    responses[str(group)] = pred.var[list(RESPONSE_COLUMNS)]
                if "state_weights" in pred.uns["trvae_prediction"]:
                    weights[str(group)] = pred.uns["trvae_prediction"]["state_weights"]
                if x is None:
                    x, first = np.empty((adata.n_obs, pred.n_vars), dtype=np.float32), pred
                x[rows] = pred.X
        assert first is not None  # check_obs_key: at least one cell
        var = first.var.drop(columns=[c for c in RESPONSE_COLUMNS if c in first.var])
        obs = self._target_obs(adata, self._code(target_condition))
        result = AnnData(x, obs=obs, var=var)
        result.uns["trvae_prediction"] = {**first.uns["trvae_prediction"], "group_key": group_key}
        result.uns["trvae_prediction"].pop("state_weights", None)
        if weights:  # per predicted group, its training groups' weights
            result.uns["trvae_prediction"]["state_weights"] = weights
        for name in RESPONSE_COLUMNS if responses else ():
            frame = pd.DataFrame({g: r[name] for g, r in responses.items()}, index=var.index)
            result.varm[name] = frame
        return result

    def _target_obs(self, adata: AnnData, target: int) -> pd.DataFrame:
        """A copy of ``adata.obs`` with ``condition_key`` set to condition code ``target``."""
        obs = adata.obs.copy()
        obs[self.condition_key] = pd.Categorical.from_codes(
            np.full(adata.n_obs, target), categories=self.conditions_
        )
        return obs
