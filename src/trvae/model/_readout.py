"""The read-outs of :meth:`TRVAE.predict` beyond the decoder: choosing one, and the two-pass
quantile read-out (:mod:`trvae.module.readout`)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import torch

from trvae._errors import TRVAEError
from trvae.data.cell_data import CellData
from trvae.module import count_quantile, nonzero, readout
from trvae.module.anchor import check_anchor


class ReadoutMixin:
    """The read-out helpers of :class:`~trvae.TRVAE`'s ``predict``."""

    def _readout_mode(self, mode: str, likelihood: str) -> str:
        """``mode`` of :meth:`predict` checked, ``"auto"`` resolved."""
        if mode not in ("auto", "decode", "residual", "quantile"):
            raise TRVAEError(
                f"mode must be 'auto', 'decode', 'residual' or 'quantile', got {mode!r}"
            )
        built = self.module.readout.built
        if mode == "auto":
            if likelihood != "mse":
                return "quantile"
            if built:
                return "quantile"
            warnings.warn(
                "this model has no quantile read-out tables (saved by an older trvae, or not "
                "trained): predicting with mode='residual'; retrain it for mode='quantile'",
                UserWarning,
                stacklevel=3,
            )
            return "residual"
        if mode == "quantile" and likelihood == "mse" and not built:
            raise TRVAEError(
                "this model has no quantile read-out tables (saved by an older trvae, or not "
                "trained): retrain it, or predict with mode='residual'"
            )
        return mode

    def _anchor_weights(
        self, anchor: float | str | None, mode: str, sources: list[int], target: int
    ) -> dict[int, float]:
        """``predict``'s ``anchor`` checked and resolved per source condition (codes
        ``sources``) to ``target``; ``None``: the model's (0 for other read-outs); ``"auto"``:
        :meth:`~trvae.module.anchor.MeanShifts.auto_weight`."""
        shifts = self.module.mean_shifts
        if anchor is None:
            mse_quantile = mode == "quantile" and self.init_params["likelihood"] == "mse"
            anchor = self.init_params.get("anchor", 0.0) if mse_quantile else 0.0
            if anchor != 0 and not shifts.built:
                warnings.warn(
                    "this model has no mean shifts to anchor to (saved by an older trvae): "
                    "predicting with anchor=0; retrain it to anchor",
                    UserWarning,
                    stacklevel=3,
                )
                anchor = 0.0
        anchor = check_anchor(anchor, self.init_params["likelihood"])
        if anchor != 0 and mode != "quantile":
            raise TRVAEError(f"anchor applies to mode='quantile', not mode={mode!r}")
        if anchor != 0 and not shifts.built:
            raise TRVAEError(
                "this model has no mean shifts to anchor to (saved by an older trvae, or not "
                "trained): retrain it, or predict with anchor=0"
            )
        if anchor == "auto":
            return {s: shifts.auto_weight(s, target) for s in sources}
        return dict.fromkeys(sources, float(anchor))

    def anchor_weights(self) -> pd.DataFrame:
        """Per ordered pair of conditions: how far the training groups' responses follow their
        state, and the anchor weight :meth:`predict` uses by default.

        After training with ``mmd_group_key``. A state ratio near 1 (or above) says that groups
        which look alike in the source condition do not respond alike: trVAE's departures from
        the training data's mean shift are then extrapolation, and ``anchor="auto"`` takes the
        mean shift's response (weight 1); well below 1 trVAE's own response is kept (weight 0).
        The measure and the mapping: :mod:`trvae.module.anchor`.

        Returns
        -------
        A DataFrame with one row per pair ``source`` != ``target``: ``state_ratio`` (NaN where
        unknown: fewer than three groups with both conditions), ``anchor`` (the weight
        :meth:`predict` uses by default: the model's ``anchor``, resolved when ``"auto"``),
        ``level_weight`` (how level-aware the mean shift is; NaN before training) and
        ``local_ratio`` (below 1: the anchor takes the local mean shift,
        :mod:`trvae.module.local_shift`; NaN where unknown).

        Examples
        --------
        >>> import trvae
        >>> adata = trvae.datasets.simulate_perturbation("shared", n_genes=30, cells_per_group=20)
        >>> model = trvae.TRVAE(adata, "condition", mmd_group_key="cell_type", n_hidden=(16,))
        >>> _ = model.train(max_epochs=1, progress_bar=False, accelerator="cpu")
        >>> model.anchor_weights().columns.tolist()
        ['source', 'target', 'state_ratio', 'anchor', 'level_weight', 'local_ratio']
        """
        shifts = self.module.mean_shifts
        columns = ["source", "target", "state_ratio", "anchor", "level_weight", "local_ratio"]
        rows = []
        for s, source in enumerate(self.conditions_):
            for t, target in enumerate(self.conditions_):
                if s == t:
                    continue
                level = np.nan if shifts.level_weight is None else float(shifts.level_weight[s, t])
                anchor = self._own_anchor(source, target) if shifts.built else np.nan
                ratio, local = shifts.ratio(s, t), shifts.local(s, t)
                rows.append([source, target, ratio, anchor, level, local])
        return pd.DataFrame(rows, columns=columns)

    def _own_anchor(self, source: str, target: str) -> float:
        """The anchor :meth:`predict` uses by default from condition ``source`` to ``target``."""
        code = self._code(source)
        return self._anchor_weights(None, "quantile", [code], self._code(target))[code]

    def _both_conditions(self, x, c, lib, target: int) -> tuple[dict, dict]:
        """The decoder's outputs at each cell's posterior mean of z, with its own condition
        ``c`` and with condition code ``target``."""
        z = self.module.inference(x, c)["z_mean"]
        to = torch.full_like(c, target)
        return self.module.generative(z, c, lib), self.module.generative(z, to, lib)

    def _count_quantile_fn(self, target: int, seed: int):
        """The batch function of ``mode="quantile"`` for NB/ZINB
        (:mod:`trvae.module.count_quantile`): each batch's levels seeded by ``seed`` and the
        number of its first cell."""
        position = 0

        def fn(x, c, lib):
            nonlocal position
            source, to = self._both_conditions(x, c, lib, target)
            noise = readout.floor_noise(seed, position, tuple(x.shape), x.device)
            position += len(x)
            return count_quantile.transfer_counts(x, source, to, noise)

        return fn

    def _quantile_fn(
        self,
        data: CellData,
        target: int,
        seed: int,
        batch_size: int,
        accelerator,
        precision,
        anchors: dict[int, float] | None = None,
        match_depth: bool = False,
        match_state: bool = False,
        match_nonzero: bool = False,
        local_shift: bool = False,
    ):
        """The batch function of ``mode="quantile"`` (:mod:`trvae.module.readout`), after its
        first pass: the per-gene shift that matches the residual read-out's mean before its
        floor, ``mean(x + m_t - m_s)`` (at least ``x_min``; moved by
        ``anchor`` toward the source cells' mean plus the mean shift; with an anchor, what the
        shift cannot reach is added to every value, then snapped), set on at most
        :data:`~trvae.module.readout.MATCH_CELLS` cells (all of them when fewer, then in the
        same batches with the same floor levels as the second pass). ``anchors``: the anchor
        per source condition code (:meth:`_anchor_weights`; none: 0). ``match_depth``: tables
        from :meth:`_depth_matched_tables` where it builds any. ``match_state``: the target
        condition's table from :meth:`_state_matched_tables` (unless depth matching rebuilt
        it). ``match_nonzero``: each gene's non-zero fraction moved toward the predicted cells'
        curve (:mod:`trvae.module.nonzero`), the values above the floor keeping their shape
        and the mean. ``local_shift``: the anchor's shift moved to the local shift where the
        model's local ratio says so (:meth:`_local_deltas`). Returns the function and what
        was matched: ``"depth_matched"`` (the conditions whose tables were matched to the cells'
        depth), ``"state_weights"`` (the training groups' weights; absent where the tables
        were not state-matched) and ``"nonzero_matched"`` (the number of genes whose non-zero
        fraction moved; absent without ``match_nonzero``) and ``"local_shift"`` (the source
        conditions whose anchor took the local shift; absent without an anchor)."""
        module, tables, info = self.module, self.module.readout, {"depth_matched": []}
        if match_depth:
            conditions = [*torch.unique(data.conditions).tolist(), target]
            rebuilt, matched = self._depth_matched_tables(
                data, conditions, seed, batch_size, precision
            )
            tables = tables if rebuilt is None else rebuilt
            info["depth_matched"] = matched
        if match_state and self.conditions_[target] not in info["depth_matched"]:
            rebuilt, weights = self._state_matched_tables(
                data, target, seed, batch_size, precision, tables
            )
            if rebuilt is not None:
                tables, info["state_weights"] = rebuilt, weights
        copies: dict = {}  # rebuilt tables live on the CPU: a copy per device a batch runs on
        per_condition = torch.zeros(len(self.conditions_))
        for code, weight in (anchors or {}).items():
            per_condition[code] = weight
        anchored = bool((per_condition > 0).any())
        cells = np.arange(len(data))
        if len(data) > readout.MATCH_CELLS:
            rng = np.random.default_rng([int(seed) % 2**63, len(data)])
            cells = np.sort(rng.choice(len(data), readout.MATCH_CELLS, replace=False))
        local = None
        if anchored:
            local, info["local_shift"] = (
                self._local_deltas(data, cells, target, anchors) if local_shift else (None, [])
            )

        def levels(x, c, lib, start):
            """Each entry's source level u, the source and the target means."""
            source, to = (gen["mean"] for gen in self._both_conditions(x, c, lib, target))
            noise = readout.floor_noise(seed, start, tuple(x.shape), x.device)
            u = placed(tables, x.device, copies).source_levels(x, source, c, module.x_min, noise)
            return u, source, to

        def batch_function(first_pass: bool):
            position = 0

            def fn(x, c, lib):
                nonlocal position
                start, position = position, position + len(x)
                if done is not None:  # every cell was in the first pass: its values
                    return done[start:position].to(x.device)
                u, source, to = levels(x, c, lib, start)
                ties = nonzero.tie_noise(seed, start, tuple(x.shape), x.device)
                if first_pass:  # the decoder's change moves the expected value: not floored
                    residual = x + to - source
                    if not anchored:
                        return torch.cat([u, to, residual, x, ties], dim=1)
                    shifted = x + module.mean_shifts.change(c, target, source)
                    if local is not None:
                        shifted = shifted + local.to(x.device)[c]
                    weight = module.mean_shifts.weights(c, target, per_condition.to(x.device)[c])
                    return torch.cat([u, to, residual, x, ties, shifted, weight], dim=1)
                cond = torch.full_like(c, target)
                on_device = placed(tables, x.device, copies)
                values = on_device.target_values(u, to, cond, module.x_min, shift.to(x.device))
                if nonzero_map is not None:
                    values = nonzero_map(values, ties)
                if gap is None:
                    return values
                moved = (values + gap.to(x.device)).clamp_min(module.x_min)
                return readout.snap_to_detection(moved, module.x_min, tables.detection)

            return fn

        done = None  # the second pass's values, where the first pass computed them all
        n_fields, fields, start = 7 if anchored else 5, None, 0
        first = self._outputs(data, batch_function(True), batch_size, accelerator, precision, cells)
        for part in first:  # copied into place: a list of batches and its concatenation would
            # hold the first pass (5 or 7 values per cell and gene) twice
            if fields is None:
                fields = torch.empty(n_fields, len(cells), part.shape[1] // n_fields)
            rows = slice(start, start + len(part))
            fields[:, rows] = part.cpu().unflatten(1, (n_fields, -1)).transpose(0, 1)
            start += len(part)
        gap = nonzero_map = None
        if fields is None:  # no cells: nothing to match
            shift = torch.zeros(module.n_input)
            return batch_function(False), info
        u, to, residual, source_x, ties, *extra = fields
        cond = torch.full((len(u),), target, dtype=torch.long)
        reference = residual
        if anchored:  # per cell and gene: the quiet genes take the mean shift's change
            shifted, weight = extra
            reference = residual + weight * (shifted - residual)
        reference = reference.mean(0, dtype=torch.float64).float().clamp_min(module.x_min)
        shift = tables.match_shift(u, to, cond, module.x_min, reference)
        values = tables.target_values(u, to, cond, module.x_min, shift)
        if match_nonzero and tables.detection is not None:
            x_min = float(module.x_min)
            curve = nonzero.nonzero_curve(source_x, x_min)
            nonzero_map = nonzero.NonzeroMap(
                values, ties, x_min, tables.detection, reference, curve
            )
            values, nonzero_map.mapped = nonzero_map.mapped, None  # not kept with the map
            info["nonzero_matched"] = int(nonzero_map.moves.sum())
        if anchored:  # what the level shift cannot reach (eta at its bound), added to every
            # value before the snap (a floor value the gap moves less than half-way to
            # detection stays at the floor; spreading the gap over the values above the floor
            # alone gave a few cells extreme values)
            gap = reference - values.mean(0)
        if len(cells) == len(data):  # the second pass would compute the same numbers again
            done = values
            if gap is not None:
                done = (values + gap).clamp_min(module.x_min)
                done = readout.snap_to_detection(done, module.x_min, tables.detection)
        return batch_function(False), info


def placed(
    tables: readout.QuantileTables, device: torch.device, copies: dict
) -> readout.QuantileTables:
    """``tables`` where they already lie on ``device`` (the model's own, moved with it), else
    a copy on ``device``, made once per ``copies`` (per ``predict`` call): tables rebuilt for
    one call are not part of the module that is moved to the accelerator."""
    if tables.edges.device == device:
        return tables
    if device not in copies:
        copies[device] = copy.deepcopy(tables).to(device)
    return copies[device]
