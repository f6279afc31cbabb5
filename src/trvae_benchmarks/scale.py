"""``trvae bench scale``: out-of-core training and prediction on a synthetic million-cell file.

The phases, each timed, with the peak resident memory (RSS) of the process during it:

1. **write**: :func:`trvae.datasets.synthetic_counts` writes ``n_cells x n_genes`` NB counts
   (CSR) chunk by chunk, with the simulator's truth in ``uns["sim"]``; an existing file of the
   same size and seed at ``--path`` is reused instead.
2. **setup**: the file is opened backed (``anndata.read_h5ad(path, backed="r")``, obs in memory,
   X on disk); the held-out (cell type, condition) pair is removed from training by index (a
   view of the backed AnnData, whose rows are streamed from the file: nothing is copied) and a
   :class:`~trvae.TRVAE` is created (NB likelihood), which checks the counts in chunks.
3. **train**: one epoch of :meth:`~trvae.TRVAE.train` over all training cells (no validation
   split), with mini-batches read by the block-shuffled sampler of :mod:`trvae.data.cell_data`. The
   time includes :meth:`train`'s own pass over the training cells after the epoch.
4. **predict**: the held-out pair is predicted from the control cells of its cell type, one NB
   sample per cell (``mode="decode", return_mean=False``), written to
   ``<path stem>.pred.h5ad`` batch by batch (``predict(..., out=...)``); then, as phase
   **residual**, the residual read-out (``mode="residual"``: each control cell's counts plus
   the decoder's change) to ``<path stem>.residual.h5ad``, and as phase **quantile** the
   count models' default read-out (``mode="quantile"``: each count carried by its rank,
   :mod:`trvae.module.count_quantile`) to ``<path stem>.quantile.h5ad``.
5. **score**: the predicted counts are log-normalised (``normalize_total(1e4)`` + ``log1p``,
   the library size of each predicted cell is that of its source control cell) and their mean
   per gene is compared with the simulator's true mean of the held-out pair
   (``uns["sim"]["true_log_norm_mean"]``): R² (squared Pearson r over genes) on all genes and on
   the top-100 true response genes (largest ``|true stimulated - true control|`` of the cell
   type). For reference, the same R² of: the control cells' truth (a prediction of "no
   response"); the control's truth plus the mean true response of the other cell types (what
   a perfect gene-space mean shift would predict; the type-specific part of the response is
   unpredictable); the real held-out cells in the file (the ceiling set by sampling noise).
   And the Pearson r of the predicted response (prediction minus the real control cells'
   mean) with the true response (true stimulated minus true control).

The network is the benchmark's smaller one, hidden layers 256-256 (z of 40, MMD layer of 128),
KL weight 0.1 (see :data:`SCALE_MODEL`),
batches of 512: one epoch over 1M cells x 2000 genes takes about 15 minutes on one CPU thread.
Peak RSS is sampled every 50 ms from ``/proc/self/status`` (``VmRSS``) by a background thread;
the kernel's high-water mark (``VmHWM``) of the whole run is printed too.
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from trvae.data.cell_data import read_rows
from trvae.pp import log_normalize
from trvae_benchmarks.common import add_bench_subparser, torch_threads
from trvae_benchmarks.memory import PeakRSS, status_mb

__all__ = ["run_scale_bench"]

N_CELLS, N_GENES, BATCH_SIZE = 1_000_000, 2000, 512
#: The KL weight is NB's default, 0.1 (:data:`trvae.model.DEFAULT_ALPHA`): on a 30,000-cell
#: synthetic file (20 epochs of NB, about the optimiser steps of one epoch on 1M cells) alpha
#: 10 / 1 / 0.1 gave R² 0.745 / 0.901 / 0.909 on all genes and 0.510 / 0.689 / 0.720 on the
#: top-100 response genes (decoder means; held-out type0).
SCALE_MODEL: dict = {"n_hidden": (256, 256), "n_latent": 40, "n_mmd": 128}
HELD_OUT_TYPE, CONTROL, STIMULATED = "type0", "control", "stimulated"
N_TOP, SCORE_ROWS = 100, 16384


def _log_norm_sum(x, rows: np.ndarray, target_sum: float) -> np.ndarray:
    """Sum over ``rows`` of an on-disk count matrix of ``log1p(target_sum * counts / total)``."""
    total = np.zeros(x.shape[1])
    for start in range(0, len(rows), SCORE_ROWS):
        block = read_rows(x, rows[start : start + SCORE_ROWS])
        total += np.asarray(log_normalize(block, target_sum, np.float64).sum(0)).ravel()
    return total


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r (NaN when either vector is constant)."""
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _r2(a: np.ndarray, b: np.ndarray) -> float:
    """Squared Pearson r, the R² of the trVAE/scGen papers (NaN when a vector is constant)."""
    return _pearson(a, b) ** 2


def _open_or_write(path: Path, n_cells: int, n_genes: int, seed: int, chunk_size: int) -> bool:
    """Reuse the synthetic file at ``path`` if it matches; else write it. True if written."""
    import anndata as ad

    from trvae._errors import TRVAEError
    from trvae.datasets import synthetic_counts

    if path.exists():
        adata = ad.read_h5ad(path, backed="r")
        try:
            sim = adata.uns.get("sim", {})
            if adata.shape == (n_cells, n_genes) and int(sim.get("seed", -1)) == seed:
                return False
            raise TRVAEError(
                f"{path} exists but is not the synthetic {n_cells} x {n_genes} file of seed "
                f"{seed} (it is {adata.n_obs} x {adata.n_vars}); remove it or choose --path"
            )
        finally:
            adata.file.close()
    synthetic_counts(n_cells, n_genes, path=path, chunk_size=chunk_size, seed=seed)
    return True


def run_scale_bench(
    n_cells: int = N_CELLS,
    n_genes: int = N_GENES,
    path: str | os.PathLike | None = None,
    batch_size: int = BATCH_SIZE,
    n_threads: int | None = None,
    model_kwargs: dict | None = None,
    held_out_type: str = HELD_OUT_TYPE,
    seed: int = 0,
    chunk_size: int = 16384,
    verbose: bool = True,
    precision: str = "32",
) -> dict:
    """Write (or reuse), train on, predict from and score a synthetic count file, out of core.

    Parameters
    ----------
    n_cells, n_genes
        Size of the synthetic file.
    path
        The ``.h5ad`` file (default ``trvae_scale_<n_cells>x<n_genes>.h5ad`` in the working
        directory); reused when it holds the synthetic file of this size and seed. The
        prediction goes to ``<stem>.pred.h5ad`` beside it.
    batch_size
        Training batch size.
    n_threads
        torch CPU threads (default: torch's setting); restored afterwards.
    model_kwargs
        Architecture (default :data:`SCALE_MODEL`); the likelihood is NB.
    held_out_type
        Cell type whose stimulated cells are held out and predicted.
    seed
        Seed of the file, the initialisation, the shuffling and the sampling.
    chunk_size
        Cells written at a time.
    precision
        ``"32"`` or ``"bf16-mixed"`` for training and prediction (:mod:`trvae.train.precision`).

    Returns
    -------
    Dict of the figures: per-phase ``seconds``, ``peak_rss_mb`` and ``cells``; training
    ``cells_per_s``; ``peak_rss_hwm_mb``; the R² figures.
    """
    import anndata as ad

    from trvae._errors import TRVAEError
    from trvae.data import validation as V
    from trvae.model import TRVAE

    path = Path(path or f"trvae_scale_{n_cells}x{n_genes}.h5ad")
    pred_path = path.with_name(f"{path.stem}.pred.h5ad")
    residual_path = path.with_name(f"{path.stem}.residual.h5ad")
    quantile_path = path.with_name(f"{path.stem}.quantile.h5ad")
    model_kwargs = {**SCALE_MODEL, **(model_kwargs or {})}
    times: dict[str, float] = {}
    cells: dict[str, int] = {}

    def say(text: str) -> None:
        if verbose:
            print(text, flush=True)

    @contextmanager
    def timed(name: str):
        say(f"[{name}] ...")
        start = time.perf_counter()
        with sampler.phase(name):
            yield
        times[name] = time.perf_counter() - start
        say(f"[{name}] {times[name]:.1f} s, peak RSS {sampler.peaks[name]:.0f} MiB")

    with torch_threads(n_threads) as n_threads:
        with PeakRSS(interval=0.05, release=False) as sampler:
            with timed("write"):
                written = _open_or_write(path, n_cells, n_genes, seed, chunk_size)
            cells["write"] = n_cells if written else 0
            with timed("setup"):
                adata = ad.read_h5ad(path, backed="r")
                cell_type = V.check_obs_key(adata, "cell_type", "cell type key").to_numpy()
                condition = V.check_obs_key(adata, "condition").to_numpy()
                if held_out_type not in set(cell_type):
                    raise TRVAEError(f"no cells of cell type {held_out_type!r} in {path}")
                held = (cell_type == held_out_type) & (condition == STIMULATED)
                source = (cell_type == held_out_type) & (condition == CONTROL)
                model = TRVAE(
                    adata[~held], condition_key="condition", likelihood="nb", seed=seed,
                    **model_kwargs,
                )  # fmt: skip
            cells["setup"] = int((~held).sum())
            with timed("train"):
                model.train(
                    max_epochs=1,
                    batch_size=batch_size,
                    validation_fraction=0.0,
                    early_stopping=False,
                    seed=seed,
                    progress_bar=verbose,
                    precision=precision,
                )
            cells["train"] = int((~held).sum())
            readouts = {  # phase: (name in the scores, output file, predict's read-out)
                "predict": ("trvae", pred_path, {"mode": "decode", "return_mean": False}),
                "residual": ("trvae_residual", residual_path, {"mode": "residual"}),
                "quantile": ("trvae_quantile", quantile_path, {"mode": "quantile"}),
            }
            preds = {}
            for phase, (name, out, readout) in readouts.items():
                with timed(phase):
                    preds[name] = model.predict(
                        adata[source], STIMULATED, seed=seed, out=out, precision=precision,
                        **readout,
                    )  # fmt: skip
                cells[phase] = int(source.sum())
            with timed("score"):
                scores = _score(adata, preds, held_out_type, held, source)
            cells["score"] = int((len(preds) + 1) * source.sum() + held.sum())
            for prediction in preds.values():
                prediction.file.close()
            adata.file.close()
    result = {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "path": str(path),
        "prediction_path": str(pred_path),
        "threads": n_threads,
        "batch_size": batch_size,
        "precision": precision,
        "model": {**model_kwargs, "alpha": model.init_params["alpha"]},
        "file_written": written,
        "seconds": times,
        "cells": cells,
        "peak_rss_mb": dict(sampler.peaks),
        "peak_rss_sampled_mb": sampler.peak,
        "peak_rss_hwm_mb": status_mb("VmHWM"),
        "cells_per_s": {k: cells[k] / times[k] for k in times if cells.get(k) and times[k] > 0},
        **scores,
    }
    if verbose:
        print(_report(result, held_out_type))
    return result


def _score(adata, preds: dict, held_out_type: str, held: np.ndarray, source: np.ndarray) -> dict:
    """R² of the predicted, the control and the real held-out means against the truth."""
    sim = adata.uns["sim"]
    types, conds = list(sim["cell_types"]), list(sim["conditions"])
    t = types.index(held_out_type)
    truth = np.asarray(sim["true_log_norm_mean"], dtype=np.float64)
    true_stim, true_ctrl = truth[t, conds.index(STIMULATED)], truth[t, conds.index(CONTROL)]
    target_sum = float(sim["target_sum"])
    top = np.argsort(-np.abs(true_stim - true_ctrl), kind="stable")[: min(N_TOP, len(true_stim))]
    predicted = {
        name: _log_norm_sum(p.X, np.arange(p.n_obs), target_sum) / p.n_obs
        for name, p in preds.items()
    }
    real = _log_norm_sum(adata.X, np.flatnonzero(held), target_sum) / max(int(held.sum()), 1)
    control = _log_norm_sum(adata.X, np.flatnonzero(source), target_sum) / max(source.sum(), 1)
    others = [u for u in range(len(types)) if u != t]
    stim, ctrl = conds.index(STIMULATED), conds.index(CONTROL)
    shift = true_ctrl + (truth[others, stim] - truth[others, ctrl]).mean(0) if others else true_ctrl
    out = {"n_top": len(top), "n_source_cells": int(source.sum()), "n_held_out": int(held.sum())}
    refs = {**predicted, "control": true_ctrl, "shift": shift, "real": real}
    for name, values in refs.items():
        out[f"r2_all_{name}"] = _r2(values, true_stim)
        out[f"r2_top_{name}"] = _r2(values[top], true_stim[top])
    response = true_stim - true_ctrl
    for name, values in {**predicted, "shift": shift, "real": real}.items():
        change = values - (true_ctrl if name == "shift" else control)  # control: the file's cells
        out[f"response_r_all_{name}"] = _pearson(change, response)
        out[f"response_r_top_{name}"] = _pearson(change[top], response[top])
    return out


def _report(r: dict, held_out_type: str) -> str:
    arch = ", ".join(f"{k}={v}" for k, v in r["model"].items())
    lines = [
        "",
        f"trVAE out-of-core scale bench: {r['n_cells']:,} cells x {r['n_genes']:,} genes "
        f"({r['path']}), NB, {arch}, batch {r['batch_size']}, {r['threads']} thread(s), "
        f"precision {r.get('precision', '32')}",
        f"{'phase':<8} {'seconds':>9} {'cells':>10} {'cells/s':>9} {'peak RSS MiB':>13}",
    ]
    for name, seconds in r["seconds"].items():
        n = r["cells"].get(name, 0)
        label = "reuse" if name == "write" and not r["file_written"] else name
        rate = f"{r['cells_per_s'][name]:,.0f}" if name in r["cells_per_s"] else "-"
        lines.append(
            f"{label:<8} {seconds:>9.1f} {n:>10,} {rate:>9} {r['peak_rss_mb'][name]:>13,.0f}"
        )
    lines += [
        f"peak RSS: {r['peak_rss_sampled_mb']:,.0f} MiB sampled, "
        f"{r['peak_rss_hwm_mb']:,.0f} MiB kernel high-water mark (VmHWM)",
        f"held out: {held_out_type} / {STIMULATED} ({r['n_held_out']:,} cells), predicted from "
        f"{r['n_source_cells']:,} {CONTROL} cells (one NB sample each, log-normalised)",
        f"R² of mean log-normalised expression vs the simulator's truth (all genes / top-"
        f"{r['n_top']} response genes):",
        f"  trVAE (NB samples)    {r['r2_all_trvae']:.3f} / {r['r2_top_trvae']:.3f}",
        f"  trVAE (residual)      {r['r2_all_trvae_residual']:.3f} / "
        f"{r['r2_top_trvae_residual']:.3f}",
        f"  trVAE (quantile)      {r['r2_all_trvae_quantile']:.3f} / "
        f"{r['r2_top_trvae_quantile']:.3f}",
        f"  control (no response) {r['r2_all_control']:.3f} / {r['r2_top_control']:.3f}",
        f"  other types' response {r['r2_all_shift']:.3f} / {r['r2_top_shift']:.3f}",
        f"  real held-out cells   {r['r2_all_real']:.3f} / {r['r2_top_real']:.3f}",
        "Pearson r of the response (mean minus the control cells' mean) vs the true response:",
        f"  trVAE (NB samples)    {r['response_r_all_trvae']:.3f} / "
        f"{r['response_r_top_trvae']:.3f}",
        f"  trVAE (residual)      {r['response_r_all_trvae_residual']:.3f} / "
        f"{r['response_r_top_trvae_residual']:.3f}",
        f"  trVAE (quantile)      {r['response_r_all_trvae_quantile']:.3f} / "
        f"{r['response_r_top_trvae_quantile']:.3f}",
        f"  other types' response {r['response_r_all_shift']:.3f} / "
        f"{r['response_r_top_shift']:.3f}",
        f"  real held-out cells   {r['response_r_all_real']:.3f} / {r['response_r_top_real']:.3f}",
    ]
    return "\n".join(lines)


def add_scale_parser(bench_parser: argparse.ArgumentParser) -> None:
    """Register ``trvae bench scale`` beside ``trvae bench speed``."""
    s = add_bench_subparser(
        bench_parser,
        "scale",
        help="out-of-core training/prediction on a synthetic 1M-cell count file",
        description=__doc__.split("\n\n")[0],
    )
    s.add_argument("--n-cells", type=int, default=N_CELLS, help=f"default {N_CELLS:,}")
    s.add_argument("--n-genes", type=int, default=N_GENES, help=f"default {N_GENES}")
    s.add_argument(
        "--path", help="synthetic .h5ad (reused if it exists; default trvae_scale_NxG.h5ad)"
    )
    s.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    s.add_argument("--n-hidden", type=int, nargs="+", metavar="N", help="default: 256 256")
    s.add_argument("--held-out-type", default=HELD_OUT_TYPE, help="default type0")
    s.add_argument("--alpha", type=float, help="KL weight (default: NB's, 0.1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    s.add_argument("--quiet", action="store_true", help="only the final report")
    s.add_argument("--precision", choices=("32", "bf16-mixed"), default="32")


def scale_command(args: argparse.Namespace) -> int:
    """Run ``trvae bench scale`` from parsed arguments."""
    result = run_scale_bench(
        n_cells=args.n_cells,
        n_genes=args.n_genes,
        path=args.path,
        batch_size=args.batch_size,
        n_threads=args.threads,
        model_kwargs={
            **({"n_hidden": tuple(args.n_hidden)} if args.n_hidden else {}),
            **({"alpha": args.alpha} if args.alpha is not None else {}),
        },
        held_out_type=args.held_out_type,
        seed=args.seed,
        verbose=not args.quiet,
        precision=args.precision,
    )
    if args.quiet:
        print(_report(result, args.held_out_type))
    return 0
