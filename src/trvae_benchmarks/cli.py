"""The benchmarks' commands, ``trvae benchmark ...`` and ``trvae bench ...``.

:func:`register` is the ``trvae.cli`` entry point: the ``trvae`` command calls it to add these
subcommands, so the library never imports this package.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

from trvae._errors import TRVAEError, require
from trvae._io import read_h5ad
from trvae.cli import positive as _positive
from trvae_benchmarks.baselines import METHODS
from trvae_benchmarks.calibration import add_calibration_arguments, calibration_command
from trvae_benchmarks.kang import DEFAULT_METHODS
from trvae_benchmarks.readout_speed import add_readout_parser
from trvae_benchmarks.scale import add_scale_parser
from trvae_benchmarks.speed import add_bench_parser

DATASETS = ("kang", "mnist", "kang-counts", "suite", "calibration")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``benchmark`` and ``bench`` to the ``trvae`` command's sub-parsers."""
    p = sub.add_parser("benchmark", help="hold out each cell type's stimulated cells, score")
    p.set_defaults(run=_benchmark)
    p.add_argument(
        "dataset",
        nargs="?",
        default="kang",
        metavar="DATASET_OR_PATH",
        help="'kang' (Kang et al. PBMCs, scGen preprocessing), 'mnist' (thin/normal/thick "
        "digits, image style transfer), 'kang-counts' (NB vs ZINB vs MSE trVAE on Kang raw "
        "counts), 'suite' (leave-one-group-out on every development set, trVAE vs mean shift; "
        "--data for your own file), 'calibration' (coverage of the TRVAEEnsemble's interval, "
        "leave-one-group-out on the suite's sets) or an .h5ad file",
    )
    p.add_argument("--condition-key", default="condition")
    p.add_argument("--cell-type-key", default="cell_type")
    p.add_argument("--control", default="control")
    p.add_argument("--stimulated", default="stimulated")
    p.add_argument("--cell-types", nargs="+", help="held-out cell types (default: all)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    p.add_argument("--out", help="output directory (default: results/<dataset>/)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="NK (or the first --cell-types) only, 15 epochs, 20 boots",
    )
    p.add_argument("--max-epochs", type=_positive)
    p.add_argument(
        "--held-out-digits", type=int, nargs="+", metavar="D", help="mnist: default 1 3 6 7"
    )
    p.add_argument("--n-boot", type=_positive)
    p.add_argument("--n-latent", type=_positive)
    p.add_argument("--n-hidden", type=_positive, nargs="+", metavar="N")
    p.add_argument(
        "--alpha", type=float, help="KL weight of the networks (default: each benchmark's)"
    )
    p.add_argument("--beta", type=float, help="trVAE's MMD weight (the CVAE keeps 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=_positive, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--precision",
        choices=("32", "bf16-mixed"),
        default="32",
        help="kang: precision of trVAE's training and prediction; kang-counts: of its training",
    )
    _add_suite_arguments(p)
    add_calibration_arguments(p)
    add_bench_parser(sub)
    add_scale_parser(sub.choices["bench"])
    add_readout_parser(sub.choices["bench"])
    sub.choices["bench"].set_defaults(run=_bench)


def _benchmark(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from trvae import datasets
    from trvae_benchmarks.kang import run_benchmark

    if args.dataset == "mnist":
        return _benchmark_mnist(args, argv)
    if args.dataset == "suite":
        return _benchmark_suite(args, argv)
    if args.dataset == "calibration":
        return calibration_command(args, argv)
    if args.dataset == "kang-counts":  # NB vs ZINB vs MSE on raw counts
        return _benchmark_counts(args, argv)
    if args.dataset in DATASETS:
        name, adata = args.dataset, datasets.kang_pbmc()
    elif not Path(args.dataset).exists() and not args.dataset.endswith(".h5ad"):
        raise TRVAEError(
            f"unknown dataset {args.dataset!r}: use {', '.join(DATASETS)} or an .h5ad file path"
        )
    else:
        name, adata = Path(args.dataset).stem, read_h5ad(args.dataset)
    run_benchmark(
        adata,
        out_dir=args.out or Path("results") / name,
        methods=tuple(args.methods),
        dataset_name=name,
        **_cell_benchmark_kwargs(args, argv),
    )
    return 0


def _benchmark_counts(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``trvae benchmark kang-counts``: NB, ZINB and MSE trVAE on the Kang raw counts."""
    from trvae import datasets
    from trvae_benchmarks.kang_counts import run_counts_benchmark

    if list(args.methods) != list(DEFAULT_METHODS):
        raise TRVAEError("--methods does not apply to kang-counts (it runs nb, zinb and mse)")
    run_counts_benchmark(
        datasets.kang_counts(),
        out_dir=args.out or Path("results") / "kang-counts",
        dataset_name="kang-counts (Kang et al. 2018 raw UMI counts)",
        **_cell_benchmark_kwargs(args, argv),
    )
    return 0


def _add_suite_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``trvae benchmark suite`` (it shares --condition-key, --quick, ...)."""
    from trvae_benchmarks.suite import CHECKS, SETS

    g = p.add_argument_group("suite")
    g.add_argument("--data", metavar="PATH", help="suite: your .h5ad file (log-normalised X)")
    g.add_argument("--group-key", help="suite: groups held out of --data (default: cell_type)")
    g.add_argument(
        "--sets",
        nargs="+",
        choices=[*SETS, *CHECKS],
        help=f"suite: development sets (default: all); checks, run only when named: "
        f"{', '.join(CHECKS)}",
    )
    g.add_argument("--assess", action="store_true", help="suite: also run model.assess per fold")
    g.add_argument("--min-cells", type=_positive, help="suite: cells per condition (default 30)")
    g.add_argument("--n-groups", type=_positive, help="suite: held-out groups per set")


def _benchmark_suite(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``trvae benchmark suite``: leave-one-group-out on every development set (or --data)."""
    from trvae_benchmarks.suite import MIN_CELLS, run_suite

    given = [k for k in ("n_latent", "n_hidden", "alpha", "beta") if getattr(args, k) is not None]
    if given or list(args.methods) != list(DEFAULT_METHODS) or args.cell_types:
        raise TRVAEError(
            "suite runs trVAE with the package defaults: --n-latent, --n-hidden, --alpha, "
            "--beta, --methods and --cell-types do not apply"
        )
    run_suite(
        sets=args.sets,
        data=args.data,
        condition_key=args.condition_key,
        group_key=args.group_key or args.cell_type_key,
        control=args.control,
        out_dir=args.out or Path("results") / "suite",
        quick=args.quick,
        assess=args.assess,
        max_epochs=args.max_epochs,
        n_boot=args.n_boot,
        seed=args.seed,
        min_cells=args.min_cells or MIN_CELLS,
        n_groups=args.n_groups,
        n_threads=args.threads,
        progress_bar=False,
        command=" ".join(["trvae", *map(shlex.quote, argv)]),
    )
    return 0


def _bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``trvae bench speed``, ``trvae bench scale`` or ``trvae bench readout``."""
    from trvae_benchmarks.readout_speed import readout_command
    from trvae_benchmarks.scale import scale_command
    from trvae_benchmarks.speed import bench_command

    commands = {"scale": scale_command, "readout": readout_command}
    return commands.get(args.bench, bench_command)(args)


def _benchmark_mnist(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``trvae benchmark mnist``: thin/normal/thick MNIST, held-out digits predicted."""
    require("skimage", "images", "scikit-image", "trvae benchmark mnist")
    from trvae_benchmarks.mnist import run_mnist_benchmark

    run_mnist_benchmark(
        out_dir=args.out or Path("results") / "mnist",
        held_out_digits=args.held_out_digits or (1, 3, 6, 7),
        max_epochs=args.max_epochs,
        model_kwargs=_benchmark_model_kwargs(args),
        seed=args.seed,
        quick=args.quick,
        progress_bar=not args.quiet,
        command=" ".join(["trvae", *map(shlex.quote, argv)]),
        n_threads=args.threads,
    )
    return 0


def _cell_benchmark_kwargs(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    """Arguments shared by the held-out-cell-type benchmarks (``kang`` and ``kang-counts``)."""
    return {
        "condition_key": args.condition_key,
        "cell_type_key": args.cell_type_key,
        "control": args.control,
        "stimulated": args.stimulated,
        "cell_types": args.cell_types,
        "max_epochs": args.max_epochs,
        "model_kwargs": _benchmark_model_kwargs(args),
        "train_kwargs": {"precision": args.precision} if args.precision != "32" else None,
        "n_boot": args.n_boot,
        "seed": args.seed,
        "progress_bar": not args.quiet,
        "quick": args.quick,
        "command": " ".join(["trvae", *map(shlex.quote, argv)]),
        "n_threads": args.threads,
    }


def _benchmark_model_kwargs(args: argparse.Namespace) -> dict:
    """The architecture options of ``trvae benchmark`` that were given (n_hidden as a tuple)."""
    keys = ("n_latent", "n_hidden", "alpha", "beta")
    kwargs = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if "n_hidden" in kwargs:
        kwargs["n_hidden"] = tuple(kwargs["n_hidden"])
    return kwargs
