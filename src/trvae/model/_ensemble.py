"""An ensemble of trVAE models across seeds: averaged predictions with a per-gene uncertainty."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from anndata import AnnData

from trvae._errors import ModelLoadError, TRVAEError, check_integer
from trvae._io import atomic_directory
from trvae.model._response import RESPONSE_COLUMNS
from trvae.model._trvae import TRVAE

_MANIFEST = "ensemble.json"


class TRVAEEnsemble:
    """``n_models`` :class:`TRVAE` models that differ only in their seeds.

    Each member is initialised with seed ``seed + i`` and trained with seed ``seed + i``;
    :meth:`predict` averages the members' predictions and reports how much they disagree.

    Parameters
    ----------
    adata, condition_key
        As for :class:`TRVAE`.
    n_models
        Number of members (>= 2 for an uncertainty).
    seed
        Seed of the first member.
    **model_kwargs
        Any other argument of :class:`TRVAE`, shared by all members.

    Examples
    --------
    >>> import trvae
    >>> adata = trvae.datasets.simulate_perturbation("shared", n_genes=30, cells_per_group=20)
    >>> ens = trvae.TRVAEEnsemble(adata, "condition", n_models=2, n_hidden=(16,), n_latent=4)
    >>> _ = ens.train(max_epochs=2, progress_bar=False, accelerator="cpu")
    >>> pred = ens.predict(adata[:5], "stimulated", accelerator="cpu")
    >>> pred.layers["trvae_sd"].shape, "trvae_mean_sd" in pred.var
    ((5, 30), True)
    """

    def __init__(
        self,
        adata: AnnData,
        condition_key: str | None = None,
        n_models: int = 5,
        seed: int = 0,
        **model_kwargs,
    ) -> None:
        self.n_models = check_integer("n_models", n_models)
        self.seed = check_integer("seed", seed, minimum=0)
        self.members = [
            TRVAE(adata, condition_key=condition_key, seed=self.seed + i, **model_kwargs)
            for i in range(self.n_models)
        ]

    def __repr__(self) -> str:
        return f"TRVAEEnsemble(n_models={self.n_models}, member={self.members[0]!r})"

    def train(self, seed: int | None = None, **train_kwargs) -> TRVAEEnsemble:
        """Train every member (:meth:`TRVAE.train` arguments), member ``i`` with seed
        ``seed + i`` (default: the ensemble's seed)."""
        first = self.seed if seed is None else int(seed)
        for i, member in enumerate(self.members):
            member.train(seed=first + i, **train_kwargs)
        return self

    def predict(
        self, adata: AnnData, target_condition: str, combine: str = "auto", **predict_kwargs
    ) -> AnnData:
        """The members' combined prediction, with their disagreement.

        Takes the arguments of :meth:`TRVAE.predict` (not ``out``), and ``combine``: how X
        combines the members' predictions. ``"average"``: each cell's value is the mean over
        the members. ``"mixture"``: cell ``i`` takes member ``i mod n_models``'s values, so X
        follows the members' predicted distributions pooled (their average as distributions)
        instead of narrowing them: where members disagree, averaging each cell shrinks the
        spread a distribution read-out was built to give (measured in
        ``docs/choosing-parameters.md``). ``"auto"`` (default): ``"mixture"`` for the
        read-outs that return a distribution (``mode="quantile"``, which ``"auto"`` resolves
        to, and decoder samples, ``return_mean=False``), ``"average"`` for expected values
        (``mode="decode"`` means, ``mode="residual"``). ``uns["trvae_ensemble"]["combine"]``
        records the choice.

        Whatever ``combine``, ``layers["trvae_sd"]`` holds the SD over members of each cell's
        value (float32, cells x genes); ``var["trvae_mean"]`` and ``var["trvae_mean_sd"]`` the
        mean over members, and the SD, of each member's average over the predicted cells: the
        per-gene uncertainty of the predicted mean expression. An interval for the mean change
        of gene g is ``var["trvae_mean"] ± z * var["trvae_mean_sd"]`` minus the control mean.
        The response columns of :meth:`TRVAE.predict` (``var["trvae_response"]`` and its
        interval, from how much the training groups' responses differ) are centred on the
        members' mean; with ``group_key`` (in ``varm``, one column per group) each group's on
        the members' mean over that group's cells, while ``trvae_mean`` and ``trvae_mean_sd``
        stay over all predicted cells.
        """
        if predict_kwargs.get("out") is not None:
            raise TRVAEError("TRVAEEnsemble.predict builds its result in memory: out= is not taken")
        if combine not in ("auto", "average", "mixture"):
            raise TRVAEError(f"combine must be 'auto', 'average' or 'mixture', got {combine!r}")
        preds = [m.predict(adata, target_condition, **predict_kwargs) for m in self.members]
        stack = np.stack([np.asarray(p.X, dtype=np.float32) for p in preds])
        result = preds[0]
        if combine == "auto":
            values = result.uns["trvae_prediction"]["values"]
            combine = "mixture" if values in ("quantile", "sample") else "average"
        if combine == "average":
            result.X = stack.mean(0)
        else:
            member = np.arange(stack.shape[1]) % len(stack)
            result.X = stack[member, np.arange(stack.shape[1])]
        sd = stack.std(0, ddof=1) if len(stack) > 1 else np.zeros_like(stack[0])
        result.layers["trvae_sd"] = sd.astype(np.float32)
        member_means = stack.mean(1, dtype=np.float64)  # members x genes
        result.var["trvae_mean"] = member_means.mean(0)
        sd_means = member_means.std(0, ddof=1) if len(stack) > 1 else np.zeros(stack.shape[2])
        result.var["trvae_mean_sd"] = sd_means
        if RESPONSE_COLUMNS[0] in result.var:  # member 0's response interval, moved to the mean
            delta = result.var["trvae_mean"].to_numpy() - member_means[0]
            for name in (RESPONSE_COLUMNS[0], *RESPONSE_COLUMNS[2:]):
                result.var[name] = result.var[name].to_numpy() + delta
        if RESPONSE_COLUMNS[0] in result.varm:  # group_key: the same per group (column)
            labels = result.obs[predict_kwargs["group_key"]].astype(str).to_numpy()
            for group in result.varm[RESPONSE_COLUMNS[0]].columns:
                means = stack[:, labels == group].mean(1, dtype=np.float64)
                delta = means.mean(0) - means[0]
                for name in (RESPONSE_COLUMNS[0], *RESPONSE_COLUMNS[2:]):
                    result.varm[name][group] = result.varm[name][group].to_numpy() + delta
        result.uns["trvae_ensemble"] = {
            "n_models": self.n_models,
            "seed": self.seed,
            "combine": combine,
        }
        return result

    def save(self, path: str | Path, overwrite: bool = False) -> None:
        """Write every member under ``path`` (``member_0`` ...) atomically, with a manifest."""
        with atomic_directory(path, overwrite) as tmp:
            for i, member in enumerate(self.members):
                member.save(tmp / f"member_{i}")
            manifest = {"n_models": self.n_models, "seed": self.seed}
            (tmp / _MANIFEST).write_text(json.dumps(manifest))

    @classmethod
    def load(cls, path: str | Path, adata: AnnData | None = None) -> TRVAEEnsemble:
        """Load an ensemble written by :meth:`save`."""
        path = Path(path)
        try:
            manifest = json.loads((path / _MANIFEST).read_text())
            n_models, seed = int(manifest["n_models"]), int(manifest["seed"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ModelLoadError(f"{path} is not a saved TRVAEEnsemble: {err}") from err
        ensemble = cls.__new__(cls)
        ensemble.n_models, ensemble.seed = n_models, seed
        ensemble.members = [TRVAE.load(path / f"member_{i}", adata) for i in range(n_models)]
        return ensemble
