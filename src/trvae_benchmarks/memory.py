"""Resident memory of this process, as the benchmarks report it (Linux ``/proc``; NaN elsewhere)."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def status_mb(field: str = "VmRSS") -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB; NaN elsewhere."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's ``malloc_trim``), for a fair baseline."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _max(a: float, b: float) -> float:
    return b if a != a else max(a, b)  # NaN (no sample yet) loses


class PeakRSS:
    """Context manager measuring the peak resident memory of a block (a thread polls ``VmRSS``).

    With ``release=True`` freed memory is first returned to the OS (:func:`release_memory`), so
    that memory the allocator kept from earlier work does not hide the block's own use (call
    ``gc.collect()`` before, if garbage cycles may hold memory). After the block, ``peak`` is the
    largest RSS seen (MiB) and ``increase_mb`` that minus the RSS before it. Inside the block,
    ``with rss.phase(name):`` records the peak of a sub-block in ``peaks[name]``.
    """

    def __init__(self, interval: float = 0.02, release: bool = True) -> None:
        self.interval, self.release = interval, release
        self.peak = self.increase_mb = float("nan")
        self.peaks: dict[str, float] = {}
        self._current = float("nan")

    def _sample(self) -> None:
        rss = status_mb()
        self.peak, self._current = _max(self.peak, rss), _max(self._current, rss)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakRSS:
        if self.release:
            release_memory()
        self._base = status_mb()
        self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.increase_mb = max(0.0, self.peak - self._base)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the peak RSS of the block under ``name`` in :attr:`peaks`."""
        self._current = float("nan")
        self._sample()
        try:
            yield
        finally:
            self._sample()
            self.peaks[name] = self._current
