"""UMAPs of several embeddings of the same cells (e.g. trVAE's z and its MMD layer y)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from trvae._errors import TRVAEError
from trvae._threads import torch_threads_kept
from trvae.pl._common import _finish


def embedding_grid(
    embeddings: dict[str, Any],
    obs: pd.DataFrame,
    color: Sequence[str],
    seed: int = 0,
    title: str | None = None,
    save: str | Path | None = None,
) -> Figure:
    """UMAPs of several embeddings of the same cells: one row an embedding, one column a label.

    Each embedding (e.g. trVAE's z and its MMD layer y) gets scanpy's neighbour graph and UMAP
    (seeded), drawn once per column of ``obs`` named in ``color`` (e.g. condition, cell type)
    with the same colours for a label in every row.

    Parameters
    ----------
    embeddings
        Row name -> cells x dimensions array, the cells in the order of ``obs``.
    obs
        Cell annotations; the ``color`` columns are used as categories.
    color
        Columns of ``obs`` to colour by.
    seed
        Seed of the UMAP layout.
    title, save
        Figure title, and a file to write the figure to (as in :func:`mean_scatter`).

    Returns
    -------
    The :class:`~matplotlib.figure.Figure`.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> from trvae.pl import embedding_grid
    >>> obs = pd.DataFrame({"condition": np.repeat(["control", "stimulated"], 30)})
    >>> z = np.random.default_rng(0).normal(size=(60, 5))
    >>> fig = embedding_grid({"z": z}, obs, color=["condition"])
    >>> fig.axes[0].get_title()
    'z — condition'
    """
    import scanpy as sc
    from anndata import AnnData
    from matplotlib import colormaps

    if not embeddings or not color:
        raise TRVAEError("need at least one embedding and one obs column to colour by")
    missing = [c for c in color if c not in obs.columns]
    if missing:
        raise TRVAEError(f"obs has no column(s) {missing}")
    fig = Figure(figsize=(3.4 * len(color) + 1.6, 3.0 * len(embeddings)), layout="constrained")
    axes = fig.subplots(len(embeddings), len(color), squeeze=False)
    for row, (name, emb) in zip(axes, embeddings.items(), strict=True):
        emb = np.asarray(emb, dtype=np.float32)
        if len(emb) != len(obs):
            raise TRVAEError(f"embedding {name!r} has {len(emb)} cells, obs has {len(obs)}")
        holder = AnnData(np.zeros((len(emb), 0), np.float32), obsm={"X_emb": emb})
        with torch_threads_kept():
            sc.pp.neighbors(holder, use_rep="X_emb", random_state=seed)
            sc.tl.umap(holder, random_state=seed)
        xy = holder.obsm["X_umap"]
        for ax, key in zip(row, color, strict=True):
            cats = pd.Categorical(obs[key].astype(str))
            palette = colormaps["tab10" if len(cats.categories) <= 10 else "tab20"]
            for k, cat in enumerate(cats.categories):
                mask = cats == cat
                ax.scatter(*xy[mask].T, s=3, color=palette(k % palette.N), label=cat)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name} — {key}", fontsize=9)
        for ax in row:
            ax.legend(
                loc="upper left", bbox_to_anchor=(1, 1), frameon=False, fontsize=6, markerscale=2
            )
    if title:
        fig.suptitle(title)
    return _finish(fig, save)
