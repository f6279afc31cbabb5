"""Torch's thread count kept across calls into scanpy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restore torch's intra-op thread count on exit.

    scanpy's Wilcoxon test, neighbours and UMAP run numba code that sets OpenMP's thread count
    to every core, and torch's CPU kernels read the same count: without this, a fit after
    such a call could run on every core whatever ``torch.set_num_threads`` said, and differ
    from the same fit run alone.

    Examples
    --------
    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with torch_threads_kept():
    ...     torch.set_num_threads(1)
    >>> torch.get_num_threads() == before
    True
    """
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
