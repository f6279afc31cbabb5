"""Methods compared in the benchmark, all with one interface.

Every method is built as ``Method(condition_key, control, stimulated, cell_type_key, **kwargs)``,
learns from cells with :meth:`fit` and predicts the stimulated state of control cells with
:meth:`predict`, which returns a dense float32 cells x genes array in the training gene order.
``kwargs`` are the architecture and training arguments of :class:`trvae.TRVAE` and
:meth:`trvae.TRVAE.train` (``seed`` goes to both); the gene-space baselines only use ``layer``,
so one set of arguments serves every method.

=================  ==================================================================
``trVAE``          :class:`TRVAEMethod`: trVAE with the MMD within cell types
``CVAE``           :class:`CVAE`: the same network and training with ``beta=0``
``trVAE-paper``    :class:`PaperTRVAE`: the paper's network and MMD
``scGen``          :class:`LatentArithmetic`: unconditional VAE + latent vector arithmetic
``mean_shift``     :class:`MeanShift`: control + mean(stimulated) - mean(control)
``control``        :class:`ControlUnchanged`: the control cells themselves
=================  ==================================================================
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from trvae._errors import TRVAEError
from trvae.data import validation as V
from trvae.data.cell_data import CellData, stratified_split
from trvae.model import TRVAE
from trvae.module import TRVAEModule
from trvae.train.budget import epoch_budget
from trvae.train.plan import TrainingPlan

__all__ = [
    "CVAE",
    "METHODS",
    "ControlUnchanged",
    "LatentArithmetic",
    "MeanShift",
    "Method",
    "PaperTRVAE",
    "TRVAEMethod",
    "make_method",
]

_MODEL_KEYS = tuple(
    p
    for p in inspect.signature(TRVAE.__init__).parameters
    if p not in ("self", "adata", "condition_key")
)
_TRAIN_KEYS = tuple(
    p for p in inspect.signature(TRVAE.train).parameters if p not in ("self", "plan_kwargs")
) + tuple(f.name for f in fields(TrainingPlan))


def dense(x) -> np.ndarray:
    """A dense float32 copy of a (possibly sparse or backed) matrix."""
    x = x.toarray() if sparse.issparse(x) else np.asarray(x)
    return np.array(x, dtype=np.float32)


class Method:
    """Base class: stores the keys and the keyword arguments, selects cells by condition.

    Parameters
    ----------
    condition_key
        Column of ``obs`` with the condition.
    control, stimulated
        The source and target conditions.
    cell_type_key
        Column of ``obs`` with the cell type (used by :class:`MeanShift` and
        :class:`LatentArithmetic`; may be ``None``).
    **kwargs
        Arguments of :class:`trvae.TRVAE` and :meth:`trvae.TRVAE.train`.
    """

    name = "method"

    def __init__(
        self,
        condition_key: str = "condition",
        control: str = "control",
        stimulated: str = "stimulated",
        cell_type_key: str | None = "cell_type",
        **kwargs,
    ) -> None:
        unknown = sorted(set(kwargs) - set(_MODEL_KEYS) - set(_TRAIN_KEYS))
        if unknown:
            raise TRVAEError(f"{type(self).__name__}: unknown arguments {unknown}")
        self.condition_key, self.cell_type_key = condition_key, cell_type_key
        self.control, self.stimulated = str(control), str(stimulated)
        self.kwargs = kwargs
        self.layer = kwargs.get("layer")
        self.var_names: list[str] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.control!r} -> {self.stimulated!r})"

    def _conditions(self, adata: AnnData) -> pd.Series:
        return V.check_obs_key(adata, self.condition_key)

    def _check_train(self, adata: AnnData) -> pd.Series:
        V.check_adata(adata, "train_adata")
        labels = self._conditions(adata)
        for value in (self.control, self.stimulated):
            if not (labels == value).any():
                raise TRVAEError(
                    f"train_adata has no cells with {self.condition_key} == {value!r} "
                    f"(conditions: {sorted(labels.unique())})"
                )
        self.var_names = list(map(str, adata.var_names))
        return labels

    def _matrix(self, adata: AnnData) -> np.ndarray:
        """Dense float32 expression in the training gene order."""
        V.check_adata(adata)
        if self.var_names is None:
            raise TRVAEError(f"{type(self).__name__} is not fitted: call fit() first")
        order = V.align_genes(adata, self.var_names)
        x = dense(V.get_matrix(adata, self.layer))
        return x if order is None else x[:, order]

    def _model_kwargs(self) -> dict:
        return {k: v for k, v in self.kwargs.items() if k in _MODEL_KEYS}

    def _train_kwargs(self) -> dict:
        return {k: v for k, v in self.kwargs.items() if k in _TRAIN_KEYS}

    def fit(self, train_adata: AnnData) -> Method:
        """Learn from ``train_adata`` (cells of both conditions); returns ``self``."""
        self._check_train(train_adata)
        return self

    def predict(self, control_adata: AnnData) -> np.ndarray:
        """Stimulated state of ``control_adata``'s cells: dense float32, cells x genes."""
        raise NotImplementedError

    def embeddings(self, adata: AnnData) -> dict[str, np.ndarray]:
        """The method's learned representations of ``adata``'s cells (none for gene-space ones)."""
        return {}


class ControlUnchanged(Method):
    """Predicts nothing changes: returns the control cells as they are."""

    name = "control"

    def predict(self, control_adata: AnnData) -> np.ndarray:
        return self._matrix(control_adata)


class MeanShift(Method):
    """Adds the mean stimulated-minus-control difference of the training cells in gene space.

    The means run over the cells of the cell types observed in *both* conditions of the
    training data (the other cell types, when one type's stimulated cells are held out); over
    all cells when ``cell_type_key`` is ``None`` or absent from ``obs``.
    """

    name = "mean_shift"

    def fit(self, train_adata: AnnData) -> MeanShift:
        labels = self._check_train(train_adata).to_numpy()
        keep = np.ones(train_adata.n_obs, dtype=bool)
        if self.cell_type_key is not None and self.cell_type_key in train_adata.obs:
            types = V.check_obs_key(train_adata, self.cell_type_key, "cell_type_key").to_numpy()
            both = set(types[labels == self.control]) & set(types[labels == self.stimulated])
            if both:
                keep = np.isin(types, sorted(both))
        x = V.get_matrix(train_adata, self.layer)
        means = [
            np.asarray(x[np.flatnonzero(keep & (labels == c))].mean(0), dtype=np.float64).ravel()
            for c in (self.stimulated, self.control)
        ]
        self.shift_ = (means[0] - means[1]).astype(np.float32)
        return self

    def predict(self, control_adata: AnnData) -> np.ndarray:
        return self._matrix(control_adata) + self.shift_


class TRVAEMethod(Method):
    """:class:`trvae.TRVAE` behind the common interface.

    Its arguments as given, else its defaults; the MMD compares the conditions within cell
    types (``mmd_group_key=cell_type_key``) when the training data have that column.
    """

    name = "trVAE"
    #: Arguments that override the caller's, e.g. ``beta=0`` for the CVAE.
    _overrides: ClassVar[dict] = {}

    def fit(self, train_adata: AnnData) -> TRVAEMethod:
        self._check_train(train_adata)
        kw = self._model_kwargs()
        if self.cell_type_key is not None and self.cell_type_key in train_adata.obs:
            kw.setdefault("mmd_group_key", self.cell_type_key)
        kw.update(self._overrides)
        self.model = TRVAE(train_adata, condition_key=self.condition_key, **kw)
        self.model.train(**self._train_kwargs())
        return self

    def predict(self, control_adata: AnnData) -> np.ndarray:
        if self.var_names is None:
            raise TRVAEError(f"{type(self).__name__} is not fitted: call fit() first")
        pred = self.model.predict(
            control_adata,
            self.stimulated,
            source_condition=self.control,
            precision=self.kwargs.get("precision", "32"),
        )
        return dense(pred.X)

    def embeddings(self, adata: AnnData) -> dict[str, np.ndarray]:
        """``z`` (posterior mean) and ``y`` (the MMD layer), each cell with its own condition."""
        return {"z": self.model.get_latent(adata), "y": self.model.get_mmd_layer(adata)}

    def variants(self, control_adata: AnnData) -> dict[str, np.ndarray]:
        """Other read-outs of the same fitted model, scored as methods of their own.

        ``-decode``: the paper's transfer (decoder mean); ``-sample`` (trVAE only): one draw from
        the likelihood per cell. Only for the MSE likelihood, whose default is the residual mode.
        """
        if self.model.init_params["likelihood"] != "mse":
            return {}
        predict = self.model.predict
        args = (control_adata, self.stimulated)
        out = {f"{self.name}-decode": dense(predict(*args, self.control, mode="decode").X)}
        if type(self) is TRVAEMethod:  # the noise model is the same for the others: show it once
            out[f"{self.name}-sample"] = dense(
                predict(*args, self.control, mode="decode", return_mean=False).X
            )
        return out


class CVAE(TRVAEMethod):
    """A conditional VAE: :class:`TRVAEMethod` with ``beta=0`` (no MMD), all else identical."""

    name = "CVAE"
    _overrides: ClassVar[dict] = {"beta": 0.0}


class PaperTRVAE(TRVAEMethod):
    """The paper's trVAE: condition only in the decoder's first layer, pooled biased MMD.

    ``decoder_conditioning="mmd_layer"``, ``mmd_estimator="biased"``, no groups, ``beta=100``;
    all else (layer widths, KL weight, training) as for :class:`TRVAEMethod`.
    """

    name = "trVAE-paper"
    _overrides: ClassVar[dict] = {
        "decoder_conditioning": "mmd_layer",
        "mmd_estimator": "biased",
        "mmd_group_key": None,
        "beta": 100.0,
    }


class LatentArithmetic(Method):
    """scGen-style latent arithmetic with an unconditional VAE of the same architecture.

    A :class:`~trvae.module.TRVAEModule` with a single condition (so no condition input that
    could differ between cells) and ``beta=0`` is trained with the same
    :class:`~trvae.train.plan.TrainingPlan`, split and seed as trVAE. ``delta`` is the mean
    posterior z of the stimulated minus that of the control training cells, each condition
    first balanced over cell types as in scGen (every cell type resampled with replacement to
    the size of the largest one, then both conditions subsampled to the same size, seeded).
    Prediction decodes ``z(control cell) + delta`` (posterior means, decoder mean).
    """

    name = "scGen"

    def fit(self, train_adata: AnnData) -> LatentArithmetic:
        labels = self._check_train(train_adata)
        kw = self._model_kwargs()
        likelihood = kw.get("likelihood", "mse")
        x = V.get_matrix(train_adata, self.layer)
        V.check_values(x, likelihood)
        seed = int(kw.pop("seed", 0))
        kw.pop("layer", None)
        kw["beta"] = 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.module = TRVAEModule(train_adata.n_vars, 1, **kw).eval()
        tkw = self._train_kwargs()
        for key in ("checkpoint_dir", "resume"):
            if tkw.pop(key, None):
                raise TRVAEError(f"{type(self).__name__} does not support {key}")
        codes = pd.Categorical(
            labels, categories=V.check_conditions(labels, self.condition_key)
        ).codes
        train_idx, val_idx = stratified_split(codes, tkw.pop("validation_fraction", 0.1), seed)
        fit_kw = {k: tkw.pop(k) for k in ("progress_bar",) if k in tkw}
        tkw.pop("seed", None)
        tkw["max_epochs"] = tkw.get("max_epochs") or epoch_budget(train_adata.n_obs)
        data = CellData(x, np.zeros(train_adata.n_obs, dtype=np.int64))
        self.history = TrainingPlan(**tkw).fit(
            self.module, data, train_idx, val_idx, seed=seed, **fit_kw
        )
        z = self._encode(data)
        groups = [np.flatnonzero(labels.to_numpy() == c) for c in (self.control, self.stimulated)]
        types = None
        if self.cell_type_key is not None and self.cell_type_key in train_adata.obs:
            types = V.check_obs_key(train_adata, self.cell_type_key, "cell_type_key").to_numpy()
        rng = np.random.default_rng(seed)
        groups = [_balance(g, types, rng) for g in groups]
        n = min(len(g) for g in groups)
        ctrl, stim = (rng.choice(g, n, replace=False) for g in groups)
        self.delta_ = z[stim].mean(0) - z[ctrl].mean(0)
        return self

    def embeddings(self, adata: AnnData) -> dict[str, np.ndarray]:
        """``z``, the posterior mean of the unconditional VAE."""
        x = self._matrix(adata)
        return {"z": self._encode(CellData(x, np.zeros(len(x), dtype=np.int64)))}

    @torch.no_grad()
    def _encode(self, data: CellData) -> np.ndarray:
        self.module.eval()
        batches = data.batches(np.arange(len(data)), 1024)
        return torch.cat([self.module.inference(x, c)["z_mean"] for x, c, _ in batches]).numpy()

    @torch.no_grad()
    def predict(self, control_adata: AnnData) -> np.ndarray:
        x = self._matrix(control_adata)
        data = CellData(x, np.zeros(len(x), dtype=np.int64))
        delta = torch.as_tensor(self.delta_)
        self.module.eval()
        out = []
        for xb, c, lib in data.batches(np.arange(len(data)), 1024):
            z = self.module.inference(xb, c)["z_mean"] + delta
            out.append(self.module.generative(z, c, lib)["mean"])
        return torch.cat(out).numpy().astype(np.float32)


def _balance(idx: np.ndarray, types: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """scGen's balancer: every cell type of ``idx`` resampled to the largest type's size."""
    if types is None:
        return idx
    groups = [idx[types[idx] == t] for t in sorted(set(types[idx]))]
    n_max = max(len(g) for g in groups)
    return np.concatenate([rng.choice(g, n_max, replace=True) for g in groups])


#: Benchmark name -> method class.
METHODS: dict[str, type[Method]] = {
    "trVAE": TRVAEMethod,
    "CVAE": CVAE,
    "trVAE-paper": PaperTRVAE,
    "scGen": LatentArithmetic,
    "mean_shift": MeanShift,
    "control": ControlUnchanged,
}


def make_method(name: str, **kwargs) -> Method:
    """Build the method registered as ``name`` in :data:`METHODS` with ``kwargs``."""
    if name not in METHODS:
        raise TRVAEError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name](**kwargs)
