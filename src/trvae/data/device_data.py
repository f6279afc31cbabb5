"""Feeding an accelerator: the training matrix resident on the device, or prefetched batches.

A GPU step of the trVAE network takes a fraction of a millisecond; a host that densifies and
copies every mini-batch cannot keep up with it. Two remedies:

* :class:`DeviceCellData`: an in-memory matrix that fits in device memory is copied there once
  (CSR arrays for a sparse matrix, the array itself for a dense one); every mini-batch is then
  gathered and densified on the device, with the batch's size known on the host in advance, so
  no step waits for the device. The batches are exactly those of
  :class:`~trvae.data.cell_data.CellData` (the same permutations from the same generator).
* :func:`prefetched`: for data that stay on the host (too large, or on disk), a background
  thread prepares the next batches in pinned memory while the device works.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from scipy import sparse

from trvae._errors import TRVAEError
from trvae.data.cell_data import CellData, small_tail

#: ``data_on_device=None`` moves the matrix to a CUDA device when it takes at most this
#: fraction of the device's free memory (the rest is for the network, activations and MMD).
MAX_MEMORY_FRACTION = 0.5
#: Batches :func:`prefetched` prepares ahead of the one being trained on.
PREFETCH_DEPTH = 4

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class DeviceCellData:
    """The cells of an in-memory :class:`~trvae.data.cell_data.CellData`, held on ``device``.

    Parameters
    ----------
    data
        Cells with an in-memory matrix (numpy array or scipy sparse); its gene order is applied
        once, on the host.
    device
        Where the matrix and the batches live.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import sparse
    >>> from trvae.data.cell_data import CellData, small_tail
    >>> x = sparse.random(6, 4, density=0.5, format="csr", random_state=0, dtype=np.float32)
    >>> host = CellData(x, np.array([0, 1, 0, 1, 0, 1]))
    >>> resident = DeviceCellData(host, "cpu")
    >>> a = next(host.batches(np.arange(6), 4))[0]
    >>> b = next(resident.batches(np.arange(6), 4))[0]
    >>> bool((a == b).all())
    True
    """

    on_disk = False

    def __init__(self, data: CellData, device: torch.device | str) -> None:
        if data.on_disk:
            raise TRVAEError(
                "data_on_device=True needs the expression matrix in memory; a backed (on-disk) "
                "AnnData is read batch by batch: load it into memory or use data_on_device=False"
            )
        self.device = torch.device(device)
        self.conditions = data.conditions
        self._conditions = data.conditions.to(self.device)
        x = data.x if data.row_map is None else data.x[data.row_map]
        if data.gene_order is not None:
            x = x[:, data.gene_order]
        self.n_genes = x.shape[1]
        if sparse.issparse(x):
            x = sparse.csr_matrix(x, dtype=np.float32)
            x.sum_duplicates()
            self._row_nnz = np.diff(x.indptr).astype(np.int64)
            self._indptr = torch.as_tensor(x.indptr.astype(np.int64), device=self.device)
            self._indices = torch.as_tensor(x.indices.astype(np.int64), device=self.device)
            self._values = torch.as_tensor(x.data, device=self.device)
            self._dense = None
        else:
            self._dense = torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)

    def __len__(self) -> int:
        return len(self.conditions)

    @staticmethod
    def nbytes(data: CellData) -> int:
        """Device memory the matrix of ``data`` would take (before the gene order is applied)."""
        x = data.x
        if sparse.issparse(x):
            return int(x.nnz) * (4 + 8) + (x.shape[0] + 1) * 8
        return int(np.prod(x.shape)) * 4

    def _gather(self, rows: torch.Tensor, n_values: int) -> torch.Tensor:
        """Dense float32 rows ``rows`` (a device tensor) holding ``n_values`` stored values."""
        if self._dense is not None:
            return self._dense[rows]
        starts = self._indptr[rows]
        lengths = self._indptr[rows + 1] - starts
        owner = torch.repeat_interleave(
            torch.arange(len(rows), device=self.device), lengths, output_size=n_values
        )
        first = torch.cumsum(lengths, 0) - lengths  # where each row's values begin in the batch
        where = torch.arange(n_values, device=self.device) - first[owner] + starts[owner]
        out = torch.zeros(len(rows), self.n_genes, device=self.device)
        out[owner, self._indices[where]] = self._values[where]
        return out

    def batch(self, idx: np.ndarray) -> Batch:
        """Expression, condition codes and library sizes of cells ``idx``, on the device."""
        return next(self.batches(np.asarray(idx), max(len(idx), 1)))

    def batches(
        self,
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        generator: np.random.Generator | None = None,
        drop_small_last: bool = False,
    ) -> Iterator[Batch]:
        """The batches of :meth:`CellData.batches <trvae.data.cell_data.CellData.batches>`,
        gathered on the device: one host-to-device copy of the cell order per call."""
        indices = np.asarray(indices, dtype=np.int64)
        if shuffle:
            indices = (generator or np.random.default_rng()).permutation(indices)
        on_device = torch.as_tensor(indices, device=self.device)
        ends = None if self._dense is not None else np.cumsum(self._row_nnz[indices])
        ends = None if ends is None else np.concatenate([[0], ends])
        for start in range(0, len(indices), batch_size):
            stop = min(start + batch_size, len(indices))
            if drop_small_last and small_tail(start, stop - start, batch_size):
                return
            n_values = 0 if ends is None else int(ends[stop] - ends[start])
            rows = on_device[start:stop]
            x = self._gather(rows, n_values)
            yield x, self._conditions[rows], x.sum(1)


def to_device_data(
    data: CellData, device: torch.device | str | None, data_on_device: bool | None = None
) -> CellData | DeviceCellData:
    """``data`` held on ``device`` when asked, or (``None``) on CUDA when it fits; else itself.

    ``None`` moves an in-memory matrix to a CUDA device when it takes at most
    :data:`MAX_MEMORY_FRACTION` of the free device memory; ``True`` always (an on-disk matrix is
    an error), ``False`` never.
    """
    if isinstance(data, DeviceCellData) or data_on_device is False or device is None:
        return data
    device = torch.device(device)
    if data_on_device is None:
        if device.type != "cuda" or data.on_disk:
            return data
        free, _ = torch.cuda.mem_get_info(device)
        if DeviceCellData.nbytes(data) > MAX_MEMORY_FRACTION * free:
            return data
    return DeviceCellData(data, device)


def prefetched(
    batches: Iterable[Batch], device: torch.device | str, depth: int = PREFETCH_DEPTH
) -> Iterator[Batch]:
    """The batches of ``batches``, prepared by a background thread up to ``depth`` ahead.

    On CUDA the thread pins each batch's memory and starts its copy to ``device`` without
    waiting, so that reading and densifying overlap the training steps. The order and the
    contents are those of ``batches``; an error in the thread is raised here.

    Examples
    --------
    >>> import torch
    >>> batches = [(torch.ones(2, 3), torch.zeros(2), torch.ones(2))] * 3
    >>> len(list(prefetched(batches, "cpu")))
    3
    """
    device = torch.device(device)
    pin = device.type == "cuda"
    slots: queue.Queue = queue.Queue(maxsize=max(int(depth), 1))
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        """Queue ``item`` unless the consumer has gone; whether it was queued."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if pin:
                    batch = tuple(t.pin_memory().to(device, non_blocking=True) for t in batch)
                if not put(batch):
                    return
            put(done)
        except BaseException as error:  # handed to the consumer
            put(error)

    worker = threading.Thread(target=produce, name="trvae-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)
