"""``trvae bench speed``: training and prediction throughput against the machine's GEMM rate.

For the paper's architecture (hidden layers 800-800, z of 40, MMD layer of 128, batches of 512)
on synthetic data (about 10% non-zeros, dense or CSR-sparse), it measures

- training cells/s: :meth:`trvae.train.plan.TrainingPlan.fit` (the real training loop: batching,
  loss, backward, Adam, per-epoch bookkeeping), timed over a few hundred steps after a warm-up
  fit;
- prediction cells/s: :meth:`trvae.TRVAE.predict` (``mode="decode"``, decoder mean);
- the fp32 GEMM rate of the device: ``torch.mm`` of two large square matrices, in GFLOP/s;
- the fraction of that rate reached by training and by prediction, with FLOPs counted from the
  layer sizes: ``2 * batch * n_in * n_out`` per ``nn.Linear`` forward, backward twice the
  forward; prediction is one forward pass. The MMD kernel, the loss and the optimiser are not
  counted (they are small next to the Linear layers), so the fractions are lower bounds on the
  hardware's use;
- the roofline of prediction: the GEMM rate divided by the forward FLOPs of one cell, the most
  cells/s any implementation of this network can reach on this machine.

All of it runs on one device (``accelerator``: the CPU, or a GPU when there is one); on a GPU
the timings include moving the batches there and the results back.

With ``precision="bf16-mixed"`` (``--precision bf16-mixed``) every configuration is measured
twice in the same run, at ``"32"`` and under bfloat16 autocast (:mod:`trvae.train.precision`),
on fresh models of the same seed; the bfloat16 GEMM rate (``torch.mm`` of bfloat16 matrices) is
measured too, each row's fractions are of its own precision's GEMM rate, and ``x fp32`` columns
give the speed-up of the bfloat16 row over the fp32 row.

Nothing here is a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse
from torch import nn

from trvae.cli import arg_kwargs
from trvae_benchmarks.common import quick_or_default, torch_threads

__all__ = ["gemm_gflops", "linear_flops", "run_speed_bench", "synthetic_data"]

PRECISIONS = ("32", "bf16-mixed")
#: Extra columns of a ``precision="bf16-mixed"`` run (the default run prints :data:`COLUMNS`).
PRECISION_COLUMNS = ("precision", "train x fp32", "predict x fp32")

PAPER_MODEL: dict = {"n_hidden": (800, 800), "n_latent": 40, "n_mmd": 128}
BATCH_SIZE, GENES, FORMATS, DENSITY = 512, (2000, 7000), ("dense", "csr"), 0.1
STEPS, WARMUP_STEPS, STEPS_PER_EPOCH, GEMM_SIZE = 200, 10, 16, 4096
QUICK = {"genes": (2000,), "steps": 32, "warmup_steps": 4, "gemm_size": 2048}
COLUMNS = (
    "genes",
    "input",
    "train cells/s",
    "train GFLOP/s",
    "% of GEMM",
    "train s/step",
    "predict cells/s",
    "predict % of GEMM",
    "predict roofline cells/s",
)


def linear_flops(module: nn.Module, batch: int) -> int:
    """Forward FLOPs of all ``nn.Linear`` layers of ``module`` for ``batch`` rows."""
    return sum(
        2 * batch * m.in_features * m.out_features
        for m in module.modules()
        if isinstance(m, nn.Linear)
    )


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (GPU kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_gflops(
    n: int = GEMM_SIZE,
    repeats: int = 5,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
    """Best ``torch.mm`` rate of two ``n x n`` matrices of ``dtype`` over ``repeats`` runs,
    GFLOP/s."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def synthetic_data(
    n_cells: int, n_genes: int, fmt: str = "dense", density: float = DENSITY, seed: int = 0,
    counts: bool = False,
) -> AnnData:  # fmt: skip
    """Cells of two conditions with about ``density`` non-zeros: counts, or their log1p."""
    rng = np.random.default_rng(seed)
    x = sparse.random(
        n_cells,
        n_genes,
        density=density,
        format="csr",
        dtype=np.float32,
        random_state=rng,
        data_rvs=lambda k: rng.poisson(3.0, k) + 1.0,
    )
    if not counts:
        x.data = np.log1p(x.data)
    obs = pd.DataFrame(
        {"condition": pd.Categorical(np.where(np.arange(n_cells) % 2, "stim", "ctrl"))},
        index=[f"c{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
    return AnnData(x if fmt == "csr" else x.toarray(), obs=obs, var=var)


def _time_training(
    model,
    steps: int,
    warmup_steps: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    precision: str = "32",
) -> tuple:
    """(seconds, steps) of :class:`TrainingPlan` fits on ``device``: a warm-up fit, then the
    timed one. On CUDA the matrix is copied to the device first when it fits (as ``train()``
    does), outside the timing."""
    from trvae.data.device_data import to_device_data
    from trvae.train.devices import on_device
    from trvae.train.plan import TrainingPlan

    data = to_device_data(model._cell_data(model.adata), device)  # resident on a GPU it fits
    per_epoch = len(data) // batch_size
    none = np.array([], dtype=int)
    fit = {"seed": seed, "progress_bar": False, "device": device}
    plan_kwargs = {"batch_size": batch_size, "early_stopping": False, "precision": precision}
    with on_device(model.module, device):
        if warmup_steps:
            warm_idx = np.arange(min(len(data), warmup_steps * batch_size))
            plan = TrainingPlan(max_epochs=1, **plan_kwargs)
            plan.fit(model.module, data, warm_idx, none, **fit)
        epochs = max(1, math.ceil(steps / per_epoch))
        plan = TrainingPlan(max_epochs=epochs, **plan_kwargs)
        _sync(device)
        t0 = time.perf_counter()
        plan.fit(model.module, data, np.arange(per_epoch * batch_size), none, **fit)
        _sync(device)
        return time.perf_counter() - t0, epochs * per_epoch


def _time_prediction(
    model, adata: AnnData, accelerator: str, batch_size: int, precision: str = "32"
) -> float:
    """Seconds of ``model.predict(adata, ..., mode="decode")`` after a small warm-up."""
    target = model.conditions_[-1]
    predict = {"mode": "decode", "accelerator": accelerator, "batch_size": batch_size}
    predict["precision"] = precision
    model.predict(adata[: 2 * batch_size], target, **predict)
    t0 = time.perf_counter()
    model.predict(adata, target, **predict)
    return time.perf_counter() - t0


def run_speed_bench(
    genes: Sequence[int] = GENES,
    formats: Sequence[str] = FORMATS,
    batch_size: int = BATCH_SIZE,
    steps: int = STEPS,
    warmup_steps: int = WARMUP_STEPS,
    steps_per_epoch: int = STEPS_PER_EPOCH,
    model_kwargs: dict | None = None,
    likelihood: str = "mse",
    density: float = DENSITY,
    gemm_size: int = GEMM_SIZE,
    seed: int = 0,
    n_threads: int | None = None,
    verbose: bool = True,
    accelerator: str = "auto",
    predict_cells: int | None = None,
    predict_batch_size: int = 1024,
    precision: str = "32",
) -> tuple[pd.DataFrame, float]:
    """Measure training and prediction throughput; returns (table, GEMM GFLOP/s) and prints both.

    Parameters
    ----------
    genes, formats
        Gene counts and input formats (``"dense"``, ``"csr"``) to measure, every combination.
    batch_size, steps, warmup_steps
        Training batch size; optimiser steps timed; steps of the untimed warm-up fit.
    steps_per_epoch
        Training cells are ``steps_per_epoch * batch_size``, so a timed fit runs
        ``ceil(steps / steps_per_epoch)`` epochs (the per-epoch bookkeeping is included).
    model_kwargs
        Architecture (default :data:`PAPER_MODEL`).
    likelihood
        ``"mse"`` (log1p values) or ``"nb"``/``"zinb"`` (counts).
    gemm_size
        Side of the square matrices of the GEMM measurement.
    n_threads
        torch CPU threads (default: torch's setting); restored afterwards.
    accelerator
        Device of the GEMM, the training and the prediction, as in :meth:`trvae.TRVAE.train`
        (``"auto"``: a GPU when there is one).
    predict_cells, predict_batch_size
        Cells predicted in the timed :meth:`~trvae.TRVAE.predict` (default: the training cells;
        a GPU needs far more to be timed beyond its launch overheads) and its batch size.
    precision
        ``"32"``, or ``"bf16-mixed"``: every configuration at ``"32"`` and at ``"bf16-mixed"``,
        with the bfloat16 GEMM rate; the table then has :data:`PRECISION_COLUMNS` as well and
        ``table.attrs["gemm_gflops"]`` holds both GEMM rates.
    """
    from trvae.model import TRVAE
    from trvae.train.devices import resolve_devices
    from trvae.train.precision import check_precision

    model_kwargs = {**PAPER_MODEL, **(model_kwargs or {})}
    precisions = ("32",) if check_precision(precision) == "32" else PRECISIONS
    columns = COLUMNS if len(precisions) == 1 else _with_precision(COLUMNS)
    rows = []
    with torch_threads(n_threads) as n_threads:
        device = resolve_devices(accelerator, 1).device()
        where = (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"{device.type}, {n_threads} threads"
        )
        gemms = {"32": gemm_gflops(gemm_size, device=device)}
        if "bf16-mixed" in precisions:
            gemms["bf16-mixed"] = gemm_gflops(gemm_size, device=device, dtype=torch.bfloat16)
        gemm = gemms["32"]
        if verbose:
            for p, rate in gemms.items():
                name = "fp32" if p == "32" else "bf16"
                print(
                    f"{name} GEMM (torch.mm {gemm_size}x{gemm_size}, {where}): {rate:.1f} GFLOP/s",
                    flush=True,
                )
        n_cells = steps_per_epoch * batch_size
        n_predict = int(predict_cells or n_cells)
        for n_genes in genes:
            for fmt in formats:
                if fmt not in FORMATS:
                    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
                adata = synthetic_data(
                    n_cells, n_genes, fmt, density, seed, counts=likelihood != "mse"
                )
                to_predict = adata
                if n_predict != n_cells:
                    counts = likelihood != "mse"
                    to_predict = synthetic_data(n_predict, n_genes, fmt, density, seed, counts)
                for p in precisions:  # a fresh model of the same seed for each precision
                    model = TRVAE(
                        adata, condition_key="condition", likelihood=likelihood, seed=seed,
                        **model_kwargs,
                    )  # fmt: skip
                    seconds, n_steps = _time_training(
                        model, steps, warmup_steps, batch_size, seed, device, p
                    )
                    pred_s = _time_prediction(model, to_predict, accelerator, predict_batch_size, p)
                    rate = gemms[p]
                    flops = 3 * linear_flops(model.module, batch_size) * n_steps
                    cell_flops = linear_flops(model.module, 1)
                    row = {
                        "genes": n_genes,
                        "input": fmt,
                        "precision": p,
                        "train cells/s": n_steps * batch_size / seconds,
                        "train GFLOP/s": flops / seconds / 1e9,
                        "% of GEMM": 100.0 * flops / seconds / 1e9 / rate,
                        "train s/step": seconds / n_steps,
                        "predict cells/s": n_predict / pred_s,
                        "predict % of GEMM": 100.0 * n_predict * cell_flops / pred_s / 1e9 / rate,
                        "predict roofline cells/s": rate * 1e9 / cell_flops,
                    }
                    if len(precisions) > 1:
                        fp32 = rows[-1] if p != "32" else row
                        row["train x fp32"] = row["train cells/s"] / fp32["train cells/s"]
                        row["predict x fp32"] = row["predict cells/s"] / fp32["predict cells/s"]
                    rows.append(row)
                    if verbose:
                        print(_format(pd.DataFrame(rows[-1:], columns=columns), header=False))
                    del model
                del adata, to_predict
    table = pd.DataFrame(rows, columns=columns)
    table.attrs["gemm_gflops"] = gemms
    if verbose:
        arch = ", ".join(f"{k}={v}" for k, v in model_kwargs.items())
        rates = ", ".join(
            f"{'fp32' if p == '32' else 'bf16'} GEMM {r:.1f} GFLOP/s" for p, r in gemms.items()
        )
        print(
            f"\ntrVAE speed ({likelihood}, {arch}, batch {batch_size}, {n_steps} timed steps, "
            f"{density:.0%} non-zeros, {where}; {n_predict} cells predicted in batches of "
            f"{predict_batch_size}; {rates})"
        )
        print(_format(table))
    return table, gemm


def _with_precision(columns: Sequence[str]) -> tuple[str, ...]:
    """:data:`COLUMNS` with ``precision`` after ``input`` and the speed-ups at the end."""
    first = list(columns[:2])
    return (*first, PRECISION_COLUMNS[0], *columns[2:], *PRECISION_COLUMNS[1:])


def _format(table: pd.DataFrame, header: bool = True) -> str:
    fmt = {
        "train cells/s": "{:.0f}".format,
        "train GFLOP/s": "{:.1f}".format,
        "% of GEMM": "{:.1f}".format,
        "train s/step": "{:.4f}".format,
        "predict cells/s": "{:.0f}".format,
        "predict % of GEMM": "{:.1f}".format,
        "predict roofline cells/s": "{:.0f}".format,
        "train x fp32": "{:.2f}".format,
        "predict x fp32": "{:.2f}".format,
    }
    return table.to_string(index=False, header=header, formatters=fmt)


def add_bench_parser(sub) -> None:
    """Register ``trvae bench speed`` on the command's sub-parsers."""
    p = sub.add_parser("bench", help="performance measurements (trvae bench speed)")
    bench = p.add_subparsers(dest="bench", metavar="{speed}", required=True)
    s = bench.add_parser(
        "speed",
        help="training/prediction cells/s and the fraction of the fp32 GEMM rate",
        description=__doc__.split("\n\n")[0],
    )
    s.add_argument("--quick", action="store_true", help="2000 genes, 32 steps, GEMM of 2048")
    s.add_argument("--genes", type=int, nargs="+", metavar="N", help="default: 2000 7000")
    s.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    s.add_argument("--steps", type=int, help=f"timed training steps (default {STEPS})")
    s.add_argument("--warmup-steps", type=int, help=f"default {WARMUP_STEPS}")
    s.add_argument("--steps-per-epoch", type=int, default=STEPS_PER_EPOCH)
    s.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    s.add_argument("--n-hidden", type=int, nargs="+", metavar="N", help="default: 800 800")
    s.add_argument("--n-latent", type=int, help="default 40")
    s.add_argument("--n-mmd", type=int, help="default 128")
    s.add_argument("--likelihood", choices=("mse", "nb", "zinb"), default="mse")
    s.add_argument("--gemm-size", type=int, help=f"default {GEMM_SIZE}")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    s.add_argument("--accelerator", default="auto", help="auto (default), cpu, gpu/cuda, mps")
    s.add_argument("--predict-cells", type=int, help="cells predicted (default: training cells)")
    s.add_argument("--predict-batch-size", type=int, default=1024)
    s.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="32",
        help="bf16-mixed: measure fp32 and bf16-mixed side by side, with both GEMM rates",
    )


def bench_command(args: argparse.Namespace) -> int:
    """Run ``trvae bench speed`` from parsed arguments."""
    pick = quick_or_default(args, QUICK)

    model_kwargs = arg_kwargs(args, "n_hidden", "n_latent", "n_mmd", given_only=True)
    if "n_hidden" in model_kwargs:
        model_kwargs["n_hidden"] = tuple(model_kwargs["n_hidden"])
    run_speed_bench(
        genes=tuple(pick("genes", GENES)),
        formats=tuple(args.formats),
        steps=pick("steps", STEPS),
        warmup_steps=pick("warmup_steps", WARMUP_STEPS),
        gemm_size=pick("gemm_size", GEMM_SIZE),
        model_kwargs=model_kwargs,
        n_threads=args.threads,
        **arg_kwargs(
            args,
            *("batch_size", "steps_per_epoch", "likelihood", "seed", "accelerator"),
            *("predict_cells", "predict_batch_size", "precision"),
        ),
    )
    return 0
