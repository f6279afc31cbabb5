"""Predictions in another condition, batch by batch."""

from __future__ import annotations

import os

import anndata
import numpy as np
import torch
from anndata import AnnData

from trvae._errors import check_integer
from trvae.data import validation as V
from trvae.data.h5ad import write_h5ad_chunked


class PredictionMixin:
    """:meth:`predict` for :class:`~trvae.TRVAE`."""

    def predict(
        self,
        adata: AnnData | str | os.PathLike,
        target_condition: str,
        source_condition: str | None = None,
        return_mean: bool = True,
        mode: str = "auto",
        batch_size: int = 1024,
        seed: int = 0,
        out: str | os.PathLike | None = None,
        accelerator: str = "auto",
        precision: str = "32",
        anchor: float | str | None = None,
        group_key: str | None = None,
        match_depth: bool = False,
        match_state: bool = True,
        match_nonzero: bool = True,
        local_shift: bool = True,
    ) -> AnnData:
        """Carry cells to ``target_condition``: encode with their condition, decode with the target.

        Parameters
        ----------
        adata
            Cells to transfer, with the training genes (any order: they are realigned). A backed
            AnnData, a view of one or the path of an ``.h5ad`` file is streamed from disk.
        target_condition
            Condition to decode with.
        source_condition
            Condition to encode with; by default each cell's own ``obs[condition_key]``.
        return_mean
            Return the decoder's mean (count space for NB/ZINB, the expected log-expression for
            MSE). ``False`` draws one sample per cell from the likelihood instead (counts for
            NB/ZINB), which looks like real cells: use it for distribution-shape metrics.
        mode
            ``"decode"``: the paper's transfer, the decoder's output for the target condition.
            ``"residual"``: each cell's own profile plus the decoder's change,
            ``x + mean(x | z, target) - mean(x | z, source)``, floored at the smallest training
            value (0 for counts; the library size of both means is the cell's own). It keeps the
            cell-to-cell variation that decoding averages away and cancels the decoder's
            reconstruction bias, which measurably improves both mean and variance R² (see the
            benchmark reports); ``return_mean`` does not apply to it. For NB/ZINB the result
            is expected counts (not integers).
            ``"quantile"``: each cell keeps its *rank* rather than its deviation. MSE: its
            residual's level ``u`` under the source condition's residual distribution
            (per gene, at the level of the decoder's mean; a value at the floor gets a seeded
            uniform level below the floor's mass) is read off the target condition's residual
            distribution at the target mean,
            ``max(x_min, m_t + Q_t(sigmoid(logit(u) + eta_g)))``, with a per-gene shift
            ``eta_g`` that gives every gene the residual read-out's mean before its floor,
            ``mean(x + m_t - m_s)``, over the predicted cells (set on at most 4096 of them,
            seeded; exact below). So the mean is the residual read-out's while the spread
            follows the target condition:
            variance R² 0.31 -> 0.57 on Kang (``docs/choosing-parameters.md``). Two passes
            over the cells; ``return_mean`` does not apply. Needs the tables that training
            stores in the model (:mod:`trvae.module.readout`): a model saved by an older
            trvae has none (retrain it, or use ``"residual"``). NB/ZINB: each count's
            randomized probability integral transform under the source condition's
            distribution is read off the target condition's (:mod:`trvae.module.count_quantile`):
            integer counts whose genes follow the model's target distribution, as samples do,
            while each cell keeps its place in them: closer to real cells than samples or the
            decoder's mean on Kang counts (``docs/choosing-parameters.md``).
            ``"auto"``: ``"quantile"`` (for an MSE model without tables ``"residual"``, with a
            warning).
        seed
            Seed of the sampling when ``return_mean=False`` and of the levels of
            ``mode="quantile"`` (the same seed gives the same prediction; another seed changes
            only the values at the floor for MSE, each count's level within its count for
            NB/ZINB).
        out
            Write the prediction to this ``.h5ad`` file batch by batch instead of building it in
            memory, and return it opened backed (read-only; close it with ``.file.close()``).
            X is CSR for counts (NB/ZINB samples and quantile read-out), dense float32
            otherwise. The file is written beside ``out`` under a temporary name and renamed
            when complete (an existing ``out`` is replaced). Values equal the in-memory ones.
        accelerator
            Where the network runs, as in :meth:`train`: ``"auto"`` (default; a GPU when there
            is one), ``"cpu"``, ``"cuda"``/``"gpu"`` or ``"mps"``. Batches are moved there and
            the results back; the model stays on the CPU between calls.
        precision
            ``"32"`` (default) or ``"bf16-mixed"``: the network under bfloat16 autocast; the
            results are float32 (:mod:`trvae.train.precision`).
        anchor
            Weight in [0, 1] of the training data's mean shift in the predicted cells' mean
            response (``mode="quantile"`` only; see ``anchor`` of :class:`TRVAE`): the mean
            over the predicted cells of the residual read-out is replaced by ``(1 - anchor)``
            times it plus ``anchor`` times the source cells' mean plus the mean shift (weight 1
            on the quiet genes, :mod:`trvae.module.anchor`, when ``anchor > 0``); ``"auto"``:
            the weight the training groups' state ratio gives, per source condition. It acts
            on all cells of ``adata`` together: predict one group at a time to anchor each
            group's response. Default: the model's ``anchor`` (set at construction or chosen by
            :meth:`assess`).
        group_key
            Column of ``adata.obs`` (e.g. the cell type): predict each of its groups on its own,
            so that the steps that look at all predicted cells together (the quantile
            read-out's mean matching and the anchor) act within each group; the result, in
            ``adata``'s order, equals predicting every group separately. In memory only (no
            ``out``).
        match_depth
            MSE ``mode="quantile"`` on log-normalised counts: rebuild the residual tables of
            each condition whose training cells lie at another sequencing depth than the cells
            to predict from training cells resampled to their depth (:mod:`trvae.data.depth`);
            ``uns["trvae_prediction"]["depth_matched"]`` lists them. Off by default (helped on
            Kang counts, hurt on cells only sequenced shallower: ``docs/choosing-parameters.md``).
        match_state
            MSE ``mode="quantile"``, a model with ``mmd_group_key`` and its training data: the
            target condition's table rebuilt from the groups' target cells weighted by how alike
            their source-condition means are to the cells' (:mod:`trvae.module.state`;
            weights in ``uns["trvae_prediction"]["state_weights"]``). On by default.
        match_nonzero
            MSE ``mode="quantile"``: each gene's fraction of cells above the floor moved
            half-way from the read-out's own toward the curve from mean to non-zero fraction of
            the cells to predict, at the gene's predicted mean, which is kept
            (:mod:`trvae.module.nonzero`; ``uns["trvae_prediction"]["nonzero_matched"]``: the
            genes moved). On by default.
        local_shift
            MSE ``mode="quantile"`` with an anchor above 0, a model with ``mmd_group_key`` and
            its training data: where the model's local ratio is below 1, the anchor's shift is
            the mean over the cells of the training data's response among each cell's nearest
            training cells in z, not the pooled mean shift (:mod:`trvae.module.local_shift`;
            ``uns["trvae_prediction"]["local_shift"]`` lists the source conditions that took
            it, ``["local_ratio"]`` the ratios). On by default.

        Returns
        -------
        AnnData with the same genes (the model's order) and a copy of ``adata.obs`` in which
        ``condition_key`` is set to ``target_condition``. ``uns["trvae_prediction"]["values"]``
        says what X holds: ``"quantile"``, ``"residual"``, ``"mean"`` or ``"sample"``; its
        ``"anchor"`` the weight used (one per source condition where they differ), with an
        anchor ``"level_weight"`` per source condition (how level-aware the mean shift is,
        :mod:`trvae.module.anchor`) and, with groups, ``"state_ratio"`` per source condition
        (how far the groups' responses follow their state; what ``anchor="auto"`` reads). For MSE
        models, in memory, var also holds the predicted mean response and how far to trust
        it: ``trvae_response`` (mean over the predicted cells minus the mean over the source
        cells), ``trvae_response_sd`` (how much the training groups' own responses differ:
        the SD over the groups that have both conditions, times ``sqrt(1 + 1/k)`` and the
        factor :meth:`assess` measured, 1 before) and ``trvae_response_lo`` / ``_hi``, the
        Student-t prediction interval at 90 % (``RESPONSE_LEVEL``; ``k - 1`` degrees of
        freedom; level, dof and factor in ``uns["trvae_prediction"]["response_interval"]``) —
        where the response of a group like the training groups would fall. With ``group_key``
        these are DataFrames in ``varm`` (genes x groups).

        Examples
        --------
        >>> from trvae import TRVAE, datasets
        >>> adata = datasets.simulate_perturbation(n_genes=20, cells_per_group=10)
        >>> model = TRVAE(adata, "condition").train(max_epochs=2, progress_bar=False)
        >>> pred = model.predict(adata[:5], "stimulated", mode="residual", accelerator="cpu")
        >>> pred.uns["trvae_prediction"]["values"], pred.shape
        ('residual', (5, 20))
        """
        adata = V.as_anndata(adata)
        batch_size = check_integer("batch_size", batch_size)
        if group_key is not None:
            kwargs = {
                "source_condition": source_condition, "return_mean": return_mean, "mode": mode,
                "batch_size": batch_size, "seed": seed, "accelerator": accelerator,
                "precision": precision, "anchor": anchor, "match_depth": match_depth,
                "match_state": match_state, "match_nonzero": match_nonzero,
                "local_shift": local_shift,
            }  # fmt: skip
            return self._predict_groups(adata, target_condition, group_key, out, kwargs)
        likelihood = self.init_params["likelihood"]
        mode = self._readout_mode(mode, likelihood)
        data = self._cell_data(adata, condition=source_condition)
        target = self._code(target_condition)
        label = self.conditions_[target]
        module = self.module

        def fn(x, c, lib):
            if mode == "residual":
                source, to = self._both_conditions(x, c, lib, target)
                return (x + (to["mean"] - source["mean"])).clamp_min(module.x_min)
            z = module.inference(x, c)["z_mean"]
            gen = module.generative(z, torch.full_like(c, target), lib)
            return gen["mean"] if return_mean else module.sample(gen)

        obs = self._target_obs(adata, target)
        order = V.align_genes(adata, self.var_names)
        var = adata.var.copy() if order is None else adata.var.iloc[order].copy()
        sources = torch.unique(data.conditions).tolist()
        anchors = self._anchor_weights(anchor, mode, sources, target)
        if mode == "quantile" and likelihood != "mse":
            fn = self._count_quantile_fn(target, seed)
        matched = {}
        if mode == "quantile" and likelihood == "mse":
            fn, matched = self._quantile_fn(
                data, target, seed, batch_size, accelerator, precision, anchors, match_depth,
                match_state, match_nonzero, local_shift,
            )  # fmt: skip
        values = mode if mode != "decode" else ("mean" if return_mean else "sample")
        uns = {
            "trvae_prediction": {
                "target_condition": label,
                "source_condition": None if source_condition is None else str(source_condition),
                "values": values,
                "likelihood": likelihood,
                "anchor": _one_or_each(anchors, self.conditions_),
            }
        }
        uns["trvae_prediction"].update(matched)
        shifts = module.mean_shifts
        if any(weight > 0 for weight in anchors.values()) and shifts.level_weight is not None:
            uns["trvae_prediction"]["level_weight"] = {
                self.conditions_[s]: float(shifts.level_weight[s, target]) for s in sources
            }
        ratios = {self.conditions_[s]: shifts.ratio(s, target) for s in sources}
        if any(np.isfinite(ratio) for ratio in ratios.values()):
            uns["trvae_prediction"]["state_ratio"] = ratios
        local_ratios = {self.conditions_[s]: shifts.local(s, target) for s in sources}
        if any(np.isfinite(ratio) for ratio in local_ratios.values()):
            uns["trvae_prediction"]["local_ratio"] = local_ratios
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if out is not None:
                counts = values in ("sample", "quantile") and likelihood in V.COUNT_LIKELIHOODS
                batches = self._outputs(data, fn, batch_size, accelerator, precision)
                return _write_prediction(batches, out, obs, var, uns, counts)
            pred = self._run(data, fn, batch_size, accelerator, precision)
        result = AnnData(pred, obs=obs, var=var)
        result.uns.update(uns)
        self._add_response(result, data, target)
        return result


def _write_prediction(batches, out, obs, var, uns, counts: bool) -> AnnData:
    """Stream the predicted ``batches`` into the ``.h5ad`` file ``out``; open it backed."""
    arrays = (b.cpu().numpy() for b in batches)
    path = write_h5ad_chunked(out, obs, var, arrays, sparse_x=counts, uns=uns)
    return anndata.read_h5ad(path, backed="r")


def _one_or_each(weights: dict[int, float], labels: list[str]) -> float | dict[str, float]:
    """The anchor of ``uns``: one number when every source condition has the same (or there is
    none), else one per source condition's label."""
    values = set(weights.values())
    if len(values) <= 1:
        return values.pop() if values else 0.0
    return {labels[code]: weight for code, weight in weights.items()}
