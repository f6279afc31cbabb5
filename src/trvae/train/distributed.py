"""Device selection and multi-process data-parallel training, on ``torch.distributed`` directly.

The arguments follow Lightning's (``accelerator``, ``devices``, ``strategy``) but trvae does not
use Lightning: its training loop is a plain PyTorch loop (fewer dependencies, faster on small CPU
data), and this module adds what Lightning's DDP strategy would:

- ``devices=N`` (``N >= 2``, ``strategy="auto"`` or ``"ddp"``) starts ``N`` processes with
  :func:`torch.multiprocessing.spawn` (the ``ddp_spawn`` flavour: nothing to launch by hand);
  they meet at a :class:`~torch.distributed.TCPStore` that the calling process opens on a free
  localhost port, with the ``gloo`` backend on CPU and ``nccl`` on CUDA (one GPU per process).
- Each process wraps the module in :class:`~torch.nn.parallel.DistributedDataParallel`, which
  averages the gradients, and trains on its own disjoint share of every epoch's shuffled training
  cells (see :meth:`trvae.train.plan.TrainingPlan.fit`). ``batch_size`` is per process, as in
  Lightning, so one optimiser step sees ``N * batch_size`` cells; the MMD penalty and the
  BatchNorm statistics are computed within each process's batch.
- The validation loss is all-reduced, so the learning-rate schedule, the best epoch and early
  stopping are the same decisions in every process; rank 0's best weights and its history come
  back to the calling process (through a file in a temporary directory, written after the last
  training collective; a process that crashes after that, in the teardown, only warns).
- The data reach the processes pickled (spawn): fine for in-memory data of a few GB. A backed
  (on-disk) matrix is sent as its file name and reopened read-only in each process.
- A script that trains with ``devices >= 2`` must keep its top-level code under
  ``if __name__ == "__main__":``, because spawned processes import the main module.

Launched by ``torchrun`` (or any launcher that sets the ``env://`` variables ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; see :func:`launched_ddp`),
nothing is spawned: every process of the job runs the same script, and ``train(...,
strategy="ddp")`` (or ``devices >= 2``) joins the job's process group from the environment
(:func:`fit_launched`), on one or many machines. The training is the same as above; at the end
rank 0's weights are broadcast, so every process returns the same trained model.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trvae._errors import TRVAEError
from trvae._io import atomic_torch_save
from trvae.data.cell_data import CellData
from trvae.data.device_data import to_device_data
from trvae.data.portable import portable
from trvae.train.devices import DeviceSetup

if TYPE_CHECKING:
    from trvae.train.plan import TrainingPlan

_HOST = "127.0.0.1"
_TIMEOUT = timedelta(minutes=30)
_RESULT = "result.pt"


class DistributedTrainingError(RuntimeError):
    """A training process of a multi-device run failed; the message holds its traceback.

    Examples
    --------
    >>> import trvae
    >>> issubclass(trvae.DistributedTrainingError, RuntimeError)
    True
    """


# ---------------------------------------------------------------------- processes
@dataclass
class FitJob:
    """One call of :meth:`~trvae.train.plan.TrainingPlan.fit` but for its device.

    What every training process of a DDP run does alike, and what :meth:`run` passes on:
    ``plan`` fits ``module`` on ``data`` split into ``train_idx`` / ``val_idx``; ``seed``,
    ``progress_bar``, ``on_epoch_end`` and ``resume_state`` are as in ``TrainingPlan.fit``;
    ``data_on_device`` as in :func:`~trvae.data.device_data.to_device_data`.
    """

    plan: TrainingPlan
    module: torch.nn.Module
    data: CellData
    train_idx: np.ndarray
    val_idx: np.ndarray
    seed: int = 0
    progress_bar: bool = True
    on_epoch_end: Callable[[dict], None] | None = None
    resume_state: dict | None = None
    data_on_device: bool | None = None

    def run(
        self, device: torch.device | str | None = None, distributed: bool = False
    ) -> pd.DataFrame:
        """``plan.fit`` of ``module`` (already on ``device``); returns the per-epoch history."""
        return self.plan.fit(
            self.module,
            to_device_data(self.data, device, self.data_on_device),
            self.train_idx,
            self.val_idx,
            seed=self.seed,
            progress_bar=self.progress_bar,
            on_epoch_end=self.on_epoch_end,
            resume_state=self.resume_state,
            device=device,
            distributed=distributed,
        )


@dataclass
class _Job:
    """Everything a training process needs (pickled by the caller, unpickled in each process)."""

    fit: FitJob
    device_type: str
    world_size: int
    port: int
    n_threads: int
    result_path: str


def _worker(rank: int, payload: bytes) -> None:
    """One training process: join the process group, fit, and (rank 0) write the result.

    ``payload`` is the pickled :class:`_Job`. It is pickled by the caller, not handed to spawn
    as an object: torch's multiprocessing pickler would put its tensors in shared memory, so that
    every process would update the same weights (and optimiser state).
    """
    job: _Job = pickle.loads(payload)
    torch.set_num_threads(job.n_threads)
    setup = DeviceSetup(job.device_type, job.world_size)
    device = setup.device(rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = dist.TCPStore(_HOST, job.port, None, False, _TIMEOUT)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        store=store,
        rank=rank,
        world_size=job.world_size,
        timeout=_TIMEOUT,
    )
    try:
        module = job.fit.module.to(device)
        history = job.fit.run(device, distributed=True)
        if rank == 0:
            result = {
                "module": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                "history": history.to_dict("list"),
                "columns": list(history.columns),
                "best_epoch": int(history.attrs.get("best_epoch", -1)),
            }
            atomic_torch_save(result, job.result_path)
        dist.barrier()  # no process tears its connections down while another still uses them
    finally:
        dist.destroy_process_group()
    # skip the interpreter's own teardown, where gloo's threads have aborted a finished process
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _child_error(err: Exception, world_size: int) -> DistributedTrainingError:
    """A clear error for the calling process from a failed training process."""
    rank = getattr(err, "error_index", "?")
    if isinstance(err, mp.ProcessRaisedException):
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        summary = lines[-1].strip() if lines else "unknown error"
        return DistributedTrainingError(
            f"DDP training failed in process {rank} of {world_size}: {summary}\n{err}"
        )
    hint = ""
    if getattr(err, "exit_code", None) == 1:
        hint = (
            " (if this is a script: spawned processes import the main module, so its training "
            'code must be under `if __name__ == "__main__":`)'
        )
    return DistributedTrainingError(
        f"DDP training process {rank} of {world_size} died: {err}{hint}"
    )


def fit_distributed(fit: FitJob, setup: DeviceSetup) -> pd.DataFrame:
    """Train ``fit.module`` with DDP in ``setup.world_size`` spawned processes.

    Parameters
    ----------
    fit
        What every process runs. ``fit.module`` is on CPU; it receives rank 0's final (best)
        weights and stays on CPU. ``fit.on_epoch_end`` must be picklable and is called by
        rank 0 only.
    setup
        From :func:`resolve_devices`, with ``world_size >= 2``.

    Returns
    -------
    Rank 0's per-epoch history (``attrs["best_epoch"]`` set).

    Raises
    ------
    DistributedTrainingError
        When a process raises or dies; its traceback is in the message.
    """
    fit = replace(  # the same module: it receives the result
        fit,
        data=portable(fit.data),
        train_idx=np.asarray(fit.train_idx),
        val_idx=np.asarray(fit.val_idx),
    )
    n_threads = max(1, torch.get_num_threads() // setup.world_size)
    store = dist.TCPStore(_HOST, 0, None, True, _TIMEOUT, wait_for_workers=False)
    try:
        with tempfile.TemporaryDirectory(prefix="trvae-ddp-") as tmp:
            job = _Job(
                fit=fit,
                device_type=setup.device_type,
                world_size=setup.world_size,
                port=store.port,
                n_threads=n_threads,
                result_path=str(Path(tmp) / _RESULT),
            )
            try:
                payload = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as err:  # pickle raises TypeError, AttributeError, PicklingError...
                raise TRVAEError(
                    f"multi-device training cannot send its job to the processes: {err}"
                ) from err
            try:
                mp.spawn(_worker, args=(payload,), nprocs=setup.world_size, join=True)
            except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
                if not Path(job.result_path).exists():
                    raise _child_error(err, setup.world_size) from err
                # rank 0 wrote it (atomically) after the last collective: a teardown failure
                failed = f"a DDP training process failed after the training had finished ({err})"
                warnings.warn(f"{failed}; using the finished model", RuntimeWarning, stacklevel=2)
            result = torch.load(job.result_path, weights_only=True, map_location="cpu")
    finally:
        del store
    fit.module.load_state_dict(result["module"])
    fit.module.eval()
    history = pd.DataFrame(result["history"], columns=result["columns"])
    history.attrs["best_epoch"] = result["best_epoch"]
    return history


# ---------------------------------------------------------------------- launched by torchrun
#: The variables of ``env://`` rendezvous that torchrun (and Slurm / Kubernetes launchers) set.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class LaunchedDDP:
    """This process's place in a job started by an external launcher (from the environment)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launched_ddp(devices: int | str = "auto", strategy: str = "auto") -> LaunchedDDP | None:
    """The job this process belongs to, when an external launcher started it and DDP is asked.

    ``None`` unless all of :data:`LAUNCH_VARIABLES` are set, ``WORLD_SIZE > 1`` and the
    arguments ask for DDP: ``strategy="ddp"``, or ``devices >= 2``. A number of ``devices``
    must then equal the processes on this machine (``LOCAL_WORLD_SIZE``, torchrun's
    ``--nproc-per-node``), as in Lightning; ``"auto"`` takes them as they are.

    Raises
    ------
    TRVAEError
        For a number of ``devices`` that is not the launcher's processes per machine.
    """
    env = os.environ
    if not all(env.get(name) for name in LAUNCH_VARIABLES) or int(env["WORLD_SIZE"]) < 2:
        return None
    n = int(devices) if str(devices).strip().isdigit() else None
    if str(strategy).lower() != "ddp" and (n is None or n < 2):
        return None
    local_world = int(env.get("LOCAL_WORLD_SIZE", 1))
    if n is not None and n != local_world:
        raise TRVAEError(
            f"devices={n} but the launcher started {local_world} process(es) on this machine "
            "(LOCAL_WORLD_SIZE); pass devices='auto' or the launcher's --nproc-per-node"
        )
    return LaunchedDDP(
        int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]), local_world
    )


def _broadcast_state(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (one broadcast per dtype)."""
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in (*module.parameters(), *module.buffers()):
        groups.setdefault(tensor.dtype, []).append(tensor)
    with torch.no_grad():
        for tensors in groups.values():
            flat = torch.cat([t.detach().reshape(-1) for t in tensors])
            dist.broadcast(flat, 0)
            values = flat.split([t.numel() for t in tensors])
            for tensor, value in zip(tensors, values, strict=True):
                tensor.copy_(value.view_as(tensor))


def fit_launched(fit: FitJob, device_type: str, launch: LaunchedDDP) -> pd.DataFrame:
    """Train ``fit.module`` as rank ``launch.rank`` of a job started by torchrun (``env://``).

    The default process group is initialised from the environment (``gloo`` on CPU, ``nccl``
    on CUDA, GPU ``LOCAL_RANK``) unless the script did so already, and destroyed afterwards if
    it was initialised here. Every rank must call this with the same data, split and seed. The
    module ends on the CPU holding rank 0's best weights, on every rank; the history (the same
    on every rank) is returned. Checkpoints are written by rank 0.
    """
    device = torch.device("cpu")
    if device_type == "cuda":
        device = torch.device("cuda", launch.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    elif device_type != "cpu":
        raise TRVAEError(f"DDP needs accelerator 'cpu' or 'cuda', not {device_type!r}")
    owned = not dist.is_initialized()
    if owned:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", timeout=_TIMEOUT)
    elif dist.get_world_size() != launch.world_size:
        raise TRVAEError(
            f"the process group has {dist.get_world_size()} ranks but WORLD_SIZE is "
            f"{launch.world_size}"
        )
    try:
        fit.module.to(device)
        history = fit.run(device, distributed=True)
        _broadcast_state(fit.module)
    finally:
        fit.module.cpu()
        if owned:
            dist.destroy_process_group()
    return history
