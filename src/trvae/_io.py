"""Atomic file writes and checked reads: a crash mid-write never leaves a half-written file.

Every writer builds its file under a temporary name beside the target (``.<name>.tmp-<pid>``)
and renames it onto the target when complete (:func:`os.replace` is atomic on one file system).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trvae._errors import TRVAEError


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file is removed if the block raises. ``fsync`` flushes it to disk first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> str:
    """Save a matplotlib figure as PNG atomically; returns the file name."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **savefig_kwargs)
    return Path(path).name


@contextmanager
def nullable_strings_writable() -> Iterator[None]:
    """Let anndata write pandas' string arrays (the default string dtype from pandas 3 on).

    anndata refuses them unless ``settings.allow_write_nullable_strings`` is set, because
    anndata < 0.11 cannot read them back; trvae requires anndata >= 0.11.
    """
    from anndata import settings

    if not hasattr(settings, "allow_write_nullable_strings"):
        yield
        return
    with settings.override(allow_write_nullable_strings=True):
        yield


def write_h5ad(adata, path: str | os.PathLike) -> None:
    """``adata.write_h5ad`` to ``path`` atomically."""
    with atomic_path(path) as tmp, nullable_strings_writable():
        adata.write_h5ad(tmp.with_suffix(".h5ad"))
        os.replace(tmp.with_suffix(".h5ad"), tmp)


def fsync_dir(directory: Path) -> None:
    """Flush every file under ``directory`` to disk."""
    for file in directory.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def directory_backup(path: Path) -> Path:
    """Where :func:`atomic_directory` keeps the old ``path`` while it renames the new one in."""
    return path.parent / f".{path.name}.old"


@contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; put it in place if the block succeeds.

    Raises :class:`~trvae.TRVAEError` up front if ``path`` exists and ``overwrite`` is false.
    On success every file is flushed to disk, an existing ``path`` is renamed to
    :func:`directory_backup` (so a crash between the two renames leaves the old directory
    there), the temporary directory is renamed onto ``path`` and the backup removed. The
    temporary directory is removed if the block raises.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise TRVAEError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        fsync_dir(tmp)
        backup = directory_backup(path)
        if path.exists():  # the old directory stays whole until the new one is in place
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(path, backup)
        os.replace(tmp, path)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_h5ad(path: str | os.PathLike):
    """Read an ``.h5ad`` file, with clear errors for a missing, misnamed or unreadable file."""
    import anndata as ad

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir() or path.suffix.lower() != ".h5ad":
        raise TRVAEError(f"{path} is not an .h5ad file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return ad.read_h5ad(path)
    except Exception as err:  # h5py/anndata raise many types for a corrupt file
        raise TRVAEError(f"cannot read {path}: {type(err).__name__}: {err}") from err


def torch_load_error(err: Exception) -> str:
    """Why ``torch.load(..., weights_only=True)`` or ``load_state_dict`` failed, in one line.

    A weights-only refusal gives its reason only: not torch's advice to unpickle the file anyway.
    """
    text = str(err)
    if isinstance(err, pickle.UnpicklingError):
        match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", text, re.S)
        reason = " ".join((match.group(1) if match else text.split("\n")[0]).split())
        return (
            "not a weights-only file (corrupt, or holding pickled Python objects, which trvae "
            f"never unpickles): {reason}"
        )
    if not text:
        return f"{type(err).__name__} (empty or truncated file)"
    return f"{type(err).__name__}: {text}"
