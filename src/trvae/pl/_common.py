"""What every figure of :mod:`trvae.pl` shares: saving, gene lookup."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from trvae._errors import TRVAEError

DPI = 150


def _finish(fig: Figure, save: str | Path | None) -> Figure:
    """Save ``fig`` at ``DPI`` when ``save`` is given (format from the suffix, PNG without one)."""
    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight", format=None if path.suffix else "png")
    return fig


def _gene_index(var_names: Sequence[str], genes: Sequence[str], n_vars: int) -> np.ndarray:
    names = [str(g) for g in var_names]
    if len(names) != n_vars:
        raise TRVAEError(f"{len(names)} var_names for {n_vars} genes")
    pos = {g: i for i, g in enumerate(names)}
    missing = [g for g in genes if str(g) not in pos]
    if missing:
        raise TRVAEError(f"genes missing from var_names: {missing[:10]}")
    return np.array([pos[str(g)] for g in genes], dtype=int)
