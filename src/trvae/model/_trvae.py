"""The user-facing model :class:`TRVAE`: the AnnData registry and the network's configuration.

Training, prediction and persistence come from the mixins in :mod:`trvae.model`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from trvae._errors import TRVAEError, check_integer, check_number, check_option
from trvae.data import validation as V
from trvae.data.cell_data import CellData
from trvae.model._assessment import AssessmentMixin
from trvae.model._inference import InferenceMixin
from trvae.model._local_shift import LocalShiftMixin
from trvae.model._prediction import PredictionMixin
from trvae.model._readout import ReadoutMixin
from trvae.model._response import ResponseMixin
from trvae.model._save_load import SaveLoadMixin
from trvae.model._table_match import TableMatchMixin
from trvae.model._training import TrainingMixin
from trvae.module import ARCHITECTURES, DECODER_CONDITIONING, LIKELIHOODS, MMD_ON, TRVAEModule
from trvae.module.anchor import check_anchor
from trvae.module.mmd import DEFAULT_BANDWIDTHS
from trvae.module.mmd import ESTIMATORS as MMD_ESTIMATORS
from trvae.module.mmd import GROUPINGS as MMD_GROUPINGS
from trvae.nn.conv import image_dims

_SETUP_KEY = "_trvae"

#: Default KL weight per likelihood (evidence: ``docs/choosing-parameters.md``).
DEFAULT_ALPHA: dict[str, float] = {"mse": 10.0, "nb": 0.1, "zinb": 0.1}
#: Default MMD weight per (likelihood, MMD grouped by ``mmd_group_key``).
DEFAULT_BETA: dict[tuple[str, bool], float] = {
    ("mse", False): 100.0,
    ("mse", True): 1000.0,
    ("nb", False): 100.0,
    ("nb", True): 100.0,
    ("zinb", False): 100.0,
    ("zinb", True): 100.0,
}
#: Default weight of the training data's mean shift in a prediction's mean response, per
#: likelihood (``anchor``; the quantile read-out of MSE models only).
DEFAULT_ANCHOR: dict[str, float | str] = {"mse": "auto", "nb": 0.0, "zinb": 0.0}
#: Default decoder conditioning per grouping of the MMD.
DEFAULT_DECODER_CONDITIONING: dict[bool, str] = {False: "mmd_layer", True: "all_layers"}


class TRVAE(
    TrainingMixin,
    PredictionMixin,
    InferenceMixin,
    ResponseMixin,
    ReadoutMixin,
    TableMatchMixin,
    LocalShiftMixin,
    AssessmentMixin,
    SaveLoadMixin,
):
    """trVAE: a conditional VAE whose first decoder layer is made condition-independent by MMD.

    Parameters
    ----------
    adata
        Training data, cells x genes. Log-normalised expression for ``likelihood="mse"``, raw
        counts for ``"nb"``/``"zinb"``. Sparse matrices stay sparse. A backed AnnData
        (``anndata.read_h5ad(path, backed="r")``), a view of one (``backed[mask]``: its rows are
        streamed from the file, not copied) or the path of an ``.h5ad`` file (opened backed) is
        trained out of core: mini-batches are read from disk by a block-shuffled sampler (see
        :mod:`trvae.data.cell_data`) and the values are checked in chunks. Only X is streamed.
    condition_key
        Column of ``adata.obs`` with the condition of each cell (or set by :meth:`setup_anndata`).
    layer
        Use ``adata.layers[layer]`` instead of ``adata.X``.
    likelihood
        ``"mse"``, ``"nb"`` or ``"zinb"``.
    n_latent, n_hidden, n_mmd, dropout, batch_norm
        Architecture (see :class:`~trvae.module.TRVAEModule`). The paper's, except two hidden
        layers of 128 rather than 800: as accurate on development data and 3-6x cheaper.
    alpha
        Weight of the KL divergence; default :data:`DEFAULT_ALPHA` (10 for ``"mse"``, 0.1 for
        ``"nb"``/``"zinb"``). The setting that matters most for transfer: a weak KL lets z keep
        condition information, a strong one erases the cell.
    beta
        Weight of the MMD penalty, summed over all pairs of conditions in a batch; of the order
        of the reconstruction term (a sum over genes). Default :data:`DEFAULT_BETA`: 100, or
        1000 with ``mmd_group_key`` and ``likelihood="mse"``.
    mmd_bandwidths
        Squared length scales of the multi-scale RBF kernel of the MMD.
    seed
        Seed of the weight initialisation.
    architecture
        ``"mlp"`` (default) or ``"conv"``: convolutional encoder and decoder for images stored
        flattened in X (``likelihood="mse"`` only; see :mod:`trvae.nn.conv`).
    image_shape
        ``(H, W)`` or ``(C, H, W)`` of the images, for ``architecture="conv"``; default
        ``adata.uns["image_shape"]`` (set by :func:`trvae.datasets.mnist`).
    decoder_conditioning
        ``"mmd_layer"`` (the paper's network): the condition enters the decoder only through
        the MMD layer y. ``"all_layers"``: every decoder layer after y also sees the condition,
        so the MMD can make y condition-free while later layers carry the condition's effect.
        Default :data:`DEFAULT_DECODER_CONDITIONING`: ``"all_layers"`` with ``mmd_group_key``.
    mmd_estimator
        ``"biased"`` (default; the V-statistic) or ``"unbiased"`` (the U-statistic); see
        :mod:`trvae.module.mmd`.
    mmd_group_key
        Column of ``adata.obs`` with a grouping of the cells (e.g. cell type): the MMD then
        compares the conditions within each group only, so a group held out of one condition
        is not pulled towards the others. Only training uses it; prediction needs no such
        column. Recommended whenever the data have cell types.
    mmd_on
        ``"y"`` (default, the paper's): the MMD acts on the decoder's first layer y. ``"z"``: on
        the latent code, so that the encoder must strip the condition from z (better for
        images, where z otherwise keeps the stroke width).
    mmd_grouping
        With ``mmd_group_key``: ``"within"`` (default) compares the conditions within each
        group; ``"shared"`` compares each pair of conditions pooled over the groups both hold.
    anchor
        Weight ``w`` in [0, 1] of the training data's mean shift in the mean response of a
        prediction (:meth:`predict`'s quantile read-out): the predicted cells keep trVAE's
        shape, and their mean change from the source cells is ``(1 - w)`` times trVAE's plus
        ``w`` times the mean shift of the groups that have both conditions
        (:mod:`trvae.module.anchor`). 0 is trVAE's own response, 1 the mean shift's; with
        ``w > 0`` the genes in which no training group responds significantly (quiet genes)
        take the mean shift's change, weight 1. The mean shift is level-aware where the
        training groups say so (a fold change on the linear scale, applied at each cell's
        level; chosen by leave-one-group-out after training, ``uns["trvae_prediction"]
        ["level_weight"]``). ``"auto"`` (the default for ``"mse"``, :data:`DEFAULT_ANCHOR`)
        reads the weight off the training groups, per pair of conditions: 0 where the groups
        that look alike in the source condition respond alike (trVAE can learn how a response
        follows the cell state), up to 1 where they do not (trVAE's departures from the mean
        shift are then extrapolation); 0.5 without three groups that have both conditions
        (:func:`trvae.module.anchor.auto_anchor`). :meth:`assess` can choose a number instead,
        by refits on the training data.

    Notes
    -----
    The measurements behind each default are in ``docs/choosing-parameters.md``.

    Examples
    --------
    >>> import trvae
    >>> adata = trvae.datasets.simulate_perturbation("shared", n_genes=50, cells_per_group=20)
    >>> model = trvae.TRVAE(adata, condition_key="condition", n_hidden=(32,), n_latent=4)
    >>> _ = model.train(max_epochs=2, progress_bar=False, accelerator="cpu")
    >>> control = adata[adata.obs["condition"] == "control"]
    >>> pred = model.predict(control, "stimulated", accelerator="cpu")
    >>> pred.shape == control.shape, pred.obs["condition"].unique().tolist()
    (True, ['stimulated'])
    """

    def __init__(
        self,
        adata: AnnData | str | os.PathLike,
        condition_key: str | None = None,
        layer: str | None = None,
        likelihood: str = "mse",
        n_latent: int = 40,
        n_hidden: Sequence[int] = (128, 128),
        n_mmd: int = 128,
        alpha: float | None = None,
        beta: float | None = None,
        dropout: float = 0.2,
        batch_norm: bool = True,
        mmd_bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
        seed: int = 0,
        architecture: str = "mlp",
        image_shape: Sequence[int] | None = None,
        decoder_conditioning: str | None = None,
        mmd_estimator: str = "biased",
        mmd_group_key: str | None = None,
        mmd_on: str = "y",
        mmd_grouping: str = "within",
        anchor: float | str | None = None,
    ) -> None:
        adata = V.check_adata(V.as_anndata(adata))
        setup = (
            adata.uns.get(_SETUP_KEY, {}) if isinstance(adata.uns, dict | type(adata.uns)) else {}
        )
        condition_key = condition_key or setup.get("condition_key")
        layer = layer if layer is not None else setup.get("layer")
        if condition_key is None:
            raise TRVAEError("condition_key is required (or call TRVAE.setup_anndata first)")
        check_option("likelihood", likelihood, LIKELIHOODS, TRVAEError)
        image_shape = _check_architecture(adata, architecture, likelihood, image_shape)
        grouped = mmd_group_key is not None
        if decoder_conditioning is None:
            decoder_conditioning = DEFAULT_DECODER_CONDITIONING[grouped]
        check_option("decoder_conditioning", decoder_conditioning, DECODER_CONDITIONING, TRVAEError)
        check_option("mmd_estimator", mmd_estimator, MMD_ESTIMATORS, TRVAEError)
        check_option("mmd_on", mmd_on, MMD_ON, TRVAEError)
        check_option("mmd_grouping", mmd_grouping, MMD_GROUPINGS, TRVAEError)
        anchor = DEFAULT_ANCHOR[likelihood] if anchor is None else check_anchor(anchor, likelihood)
        alpha = DEFAULT_ALPHA[likelihood] if alpha is None else alpha
        beta = DEFAULT_BETA[likelihood, grouped] if beta is None else beta
        settings = {  # checked before the data are scanned
            "n_latent": check_integer("n_latent", n_latent),
            "n_hidden": _check_widths(n_hidden),
            "n_mmd": check_integer("n_mmd", n_mmd),
            "alpha": check_number("alpha", alpha, low=0),
            "beta": check_number("beta", beta, low=0),
            "dropout": check_number("dropout", dropout, 0, 1, high_open=True),
            "batch_norm": bool(batch_norm),
            "mmd_bandwidths": _check_bandwidths(mmd_bandwidths),
            "seed": check_integer("seed", seed, minimum=0),
        }
        conditions = V.check_obs_key(adata, condition_key)
        self.conditions_ = V.check_conditions(conditions, condition_key)
        x, rows, _ = V.matrix_rows(adata, layer, None)
        V.check_values(x, likelihood, _where(layer), rows=rows)
        self.condition_key, self.layer = condition_key, layer
        self.var_names = list(map(str, adata.var_names))
        if len(set(self.var_names)) != len(self.var_names):
            raise TRVAEError("adata.var_names has duplicates; call adata.var_names_make_unique()")
        self.init_params = {
            "likelihood": likelihood,
            **settings,
            "architecture": architecture,
            "image_shape": image_shape,
            "decoder_conditioning": decoder_conditioning,
            "mmd_estimator": mmd_estimator,
            "mmd_group_key": mmd_group_key,
            "mmd_groups": None,
            "mmd_on": mmd_on,
            "mmd_grouping": mmd_grouping,
            "anchor": anchor if anchor == "auto" else float(anchor),
        }
        if mmd_group_key is not None:
            groups = V.check_obs_key(adata, mmd_group_key, "mmd_group_key")
            self.init_params["mmd_groups"] = sorted(map(str, pd.unique(groups)))
        self.module = self._build_module()
        self.adata = adata
        self.history: pd.DataFrame = pd.DataFrame()
        self.is_trained = False

    def _build_module(self) -> TRVAEModule:
        not_module = ("seed", "mmd_group_key", "mmd_groups", "anchor")
        params = {k: v for k, v in self.init_params.items() if k not in not_module}
        params["n_mmd_groups"] = len(self.init_params.get("mmd_groups") or [])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_params["seed"])
            module = TRVAEModule(len(self.var_names), len(self.conditions_), **params)
        return module.eval()

    @staticmethod
    def setup_anndata(adata: AnnData, condition_key: str, layer: str | None = None) -> None:
        """Record which obs column holds the condition and which layer holds the data.

        The keys are stored in ``adata.uns["_trvae"]`` and used when :class:`TRVAE` is
        created without them.

        Examples
        --------
        >>> from trvae import TRVAE, datasets
        >>> adata = datasets.simulate_perturbation(n_genes=20, cells_per_group=10)
        >>> TRVAE.setup_anndata(adata, condition_key="condition", layer="counts")
        >>> TRVAE(adata, likelihood="nb").layer
        'counts'
        """
        V.check_adata(adata)
        V.check_obs_key(adata, condition_key)
        V.get_matrix(adata, layer)
        adata.uns[_SETUP_KEY] = {"condition_key": condition_key, "layer": layer}

    def __repr__(self) -> str:
        p = self.init_params
        return (
            f"TRVAE(likelihood={p['likelihood']!r}, n_genes={len(self.var_names)}, "
            f"conditions={self.conditions_}, n_latent={p['n_latent']}, alpha={p['alpha']}, "
            f"beta={p['beta']}, trained={self.is_trained})"
        )

    @contextlib.contextmanager
    def _reusing_training_data(self) -> Iterator[None]:
        """Within: what ``predict`` derives from the training data alone (their
        :class:`CellData`, the local pool's z) is made once, not once per call, as
        ``predict(group_key=...)`` calls ``predict`` per group. Forgotten on leaving."""
        outer = getattr(self, "_reuse", None)
        self._reuse: dict | None = {} if outer is None else outer
        try:
            yield
        finally:
            self._reuse = outer

    def _reused(self, key: str, make: Callable):
        """``make()``, kept under ``key`` within :meth:`_reusing_training_data`."""
        store = getattr(self, "_reuse", None)
        if store is None:
            return make()
        if key not in store:
            store[key] = make()
        return store[key]

    def _training_cell_data(self) -> CellData:
        """:meth:`_cell_data` of the training data (``self.adata``)."""
        return self._reused("training", lambda: self._cell_data(self.adata))

    def _training_grouped(self) -> CellData:
        """:meth:`_grouped` of :meth:`_training_cell_data`."""
        return self._reused("grouped", lambda: self._grouped(self._training_cell_data()))

    def _cell_data(
        self, adata: AnnData | str | os.PathLike, condition: str | None = None
    ) -> CellData:
        """Validated :class:`CellData` of ``adata`` in the training gene order.

        ``condition`` replaces every cell's own condition (which then need not be in obs). A path
        is opened backed; backed data (and views of it) are streamed from disk.
        """
        adata = V.check_adata(V.as_anndata(adata))
        order = V.align_genes(adata, self.var_names)
        x, rows, order = V.matrix_rows(adata, self.layer, order)
        V.check_values(x, self.init_params["likelihood"], _where(self.layer), rows=rows)
        if condition is None:
            labels = V.check_obs_key(adata, self.condition_key)
            unknown = sorted(set(labels) - set(self.conditions_))
            if unknown:
                raise TRVAEError(
                    f"adata.obs[{self.condition_key!r}] has conditions not seen in training: "
                    f"{unknown}; known: {self.conditions_}"
                )
            codes = pd.Categorical(labels, categories=self.conditions_).codes
        else:
            code = self.conditions_.index(V.check_condition_value(condition, self.conditions_))
            codes = np.full(adata.n_obs, code)
        return CellData(x, codes, order, row_map=rows)

    def _code(self, condition: str) -> int:
        return self.conditions_.index(V.check_condition_value(condition, self.conditions_))


def _check_architecture(adata, architecture, likelihood, image_shape) -> list[int] | None:
    """The image shape (a list, for the JSON config) that ``architecture`` needs, checked."""
    check_option("architecture", architecture, ARCHITECTURES, TRVAEError)
    if architecture == "mlp":
        return None if image_shape is None else [int(s) for s in image_shape]
    if likelihood != "mse":
        raise TRVAEError(f"architecture='conv' needs likelihood='mse', not {likelihood!r}")
    if image_shape is None:
        image_shape = adata.uns.get("image_shape")
    if image_shape is None:
        raise TRVAEError("architecture='conv' needs image_shape (or adata.uns['image_shape'])")

    try:
        image_dims(image_shape, adata.n_vars)
    except (ValueError, TypeError) as err:
        raise TRVAEError(str(err)) from err
    return [int(s) for s in image_shape]


def _where(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def _is_sequence(value: object) -> bool:
    """A list, tuple or array of settings (a string is not one)."""
    return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str)


def _check_widths(n_hidden: object) -> list[int]:
    """The hidden layers' widths: a sequence of integers >= 1 (empty: no hidden layer)."""
    if not _is_sequence(n_hidden):
        raise TRVAEError(
            f"n_hidden must be a sequence of layer widths such as (128, 128), got {n_hidden!r}"
        )
    return [check_integer(f"n_hidden[{i}]", h) for i, h in enumerate(n_hidden)]


def _check_bandwidths(bandwidths: object) -> list[float]:
    """The MMD kernel's bandwidths: a non-empty sequence of positive numbers."""
    if not _is_sequence(bandwidths) or len(bandwidths) == 0:
        raise TRVAEError(
            f"mmd_bandwidths must be a non-empty sequence of positive numbers, got {bandwidths!r}"
        )
    return [
        check_number(f"mmd_bandwidths[{i}]", b, low=0, low_open=True)
        for i, b in enumerate(bandwidths)
    ]
