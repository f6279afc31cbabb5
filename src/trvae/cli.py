"""Command line: ``trvae train``, ``trvae predict`` and ``trvae benchmark``.

Bad input (missing file, unknown key, condition or cell type, empty selection) ends with exit
code 2 and a one-line ``trvae: error: ...`` message on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

DATASETS = ("kang", "mnist", "kang-counts")


def _read_h5ad(path: str | os.PathLike):
    """Read an ``.h5ad`` file, with clear errors for a missing, misnamed or unreadable file."""
    import anndata as ad

    from trvae._errors import TRVAEError

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


def _write_h5ad(adata, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.h5ad")
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _select(adata, column: str, value: str, what: str):
    """Boolean mask of ``obs[column] == value``; errors name the known values."""
    from trvae import _validation as V
    from trvae._errors import TRVAEError

    labels = V.check_obs_key(adata, column, what)
    if not (labels == str(value)).any():
        known = ", ".join(map(repr, sorted(labels.unique())))
        raise TRVAEError(f"no cells with {column} == {value!r} (values: {known})")
    return (labels == str(value)).to_numpy()


def _train(args: argparse.Namespace) -> int:
    from trvae import TRVAE
    from trvae._errors import TRVAEError

    adata = _read_h5ad(args.data)
    model_kwargs = {
        k: getattr(args, k)
        for k in (
            *("layer", "likelihood", "n_latent", "n_hidden", "n_mmd", "alpha", "beta"),
            *("mmd_group_key", "decoder_conditioning", "mmd_estimator", "mmd_on", "mmd_grouping"),
        )
        if getattr(args, k) is not None
    }
    model_kwargs.update(dropout=args.dropout, seed=args.seed)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise TRVAEError(f"{out} exists; pass --overwrite to replace it")
    model = TRVAE(adata, condition_key=args.condition_key, **model_kwargs)
    start = time.perf_counter()
    model.train(
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress_bar=not args.quiet,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
    )
    model.save(out, overwrite=args.overwrite)
    best = model.history.attrs.get("best_epoch", "?")
    print(
        f"trained {model!r} on {adata.n_obs} cells in {time.perf_counter() - start:.0f}s "
        f"({len(model.history)} epochs, best {best}); saved to {out}"
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from trvae import TRVAE
    from trvae import _validation as V
    from trvae._errors import TRVAEError

    model = TRVAE.load(args.model_dir)
    adata = _read_h5ad(args.data)
    V.check_condition_value(args.target_condition, model.conditions_)
    mask = None
    if args.source_condition is not None:
        V.check_condition_value(args.source_condition, model.conditions_, "source condition")
        if model.condition_key in adata.obs:  # else every cell is taken as the source
            mask = _select(adata, model.condition_key, args.source_condition, "condition_key")
    if (args.cell_type_key is None) != (args.cell_type is None):
        raise TRVAEError("--cell-type-key and --cell-type must be given together")
    if args.cell_type is not None:
        types = _select(adata, args.cell_type_key, args.cell_type, "cell_type_key")
        mask = types if mask is None else mask & types
    if mask is not None:
        if not mask.any():
            raise TRVAEError(
                f"empty selection: no cells with {model.condition_key} == "
                f"{args.source_condition!r} and {args.cell_type_key} == {args.cell_type!r}"
            )
        adata = adata[mask].copy()
    pred = model.predict(
        adata,
        args.target_condition,
        source_condition=args.source_condition,
        return_mean=not args.sample,
        seed=args.seed,
        accelerator=args.accelerator,
    )
    _write_h5ad(pred, Path(args.out))
    print(f"predicted {pred.n_obs} cells x {pred.n_vars} genes as {args.target_condition!r}")
    print(f"wrote {args.out}")
    return 0


def _benchmark(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from trvae import datasets
    from trvae._errors import TRVAEError
    from trvae.benchmark import run_benchmark

    if args.dataset == "mnist":
        return _benchmark_mnist(args, argv)
    if args.dataset == "kang-counts":  # NB vs ZINB vs MSE on raw counts
        from trvae.benchmark_counts import benchmark_command

        return benchmark_command(args, argv)
    if args.dataset in DATASETS:
        name, adata = args.dataset, datasets.kang_pbmc()
    elif not Path(args.dataset).exists() and not args.dataset.endswith(".h5ad"):
        raise TRVAEError(
            f"unknown dataset {args.dataset!r}: use {', '.join(DATASETS)} or an .h5ad file path"
        )
    else:
        name, adata = Path(args.dataset).stem, _read_h5ad(args.dataset)
    run_benchmark(
        adata,
        out_dir=args.out or Path("results") / name,
        methods=tuple(args.methods),
        dataset_name=name,
        **_cell_benchmark_kwargs(args, argv),
    )
    return 0


def _benchmark_mnist(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``trvae benchmark mnist``: thin/normal/thick MNIST, held-out digits predicted."""
    from trvae.benchmark_mnist import run_mnist_benchmark

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


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``trvae`` command."""
    from trvae.baselines import METHODS
    from trvae.benchmark import DEFAULT_METHODS

    parser = argparse.ArgumentParser(
        prog="trvae", description="trVAE: predict single cells under an unseen condition."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="{train,predict,benchmark,bench}")

    p = sub.add_parser("train", help="train a model on an .h5ad file and save it")
    p.add_argument("data", metavar="DATA.h5ad")
    p.add_argument("--condition-key", required=True, help="obs column with the condition")
    p.add_argument("--layer", help="use adata.layers[LAYER] instead of X")
    p.add_argument("--likelihood", choices=("mse", "nb", "zinb"), default="mse")
    p.add_argument("--max-epochs", type=_positive, default=200)
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-latent", type=_positive)
    p.add_argument("--n-hidden", type=_positive, nargs="+", metavar="N")
    p.add_argument("--n-mmd", type=_positive)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--alpha", type=float, help="KL weight (default 10 for mse, 0.1 for nb/zinb)")
    p.add_argument("--beta", type=float, help="MMD weight (default 100; 1000 for mse with groups)")
    p.add_argument(
        "--mmd-group-key",
        help="obs column (e.g. cell_type): the MMD compares the conditions within each group",
    )
    p.add_argument("--decoder-conditioning", choices=("mmd_layer", "all_layers"))
    p.add_argument("--mmd-estimator", choices=("biased", "unbiased"))
    p.add_argument("--mmd-on", choices=("y", "z"), help="layer the MMD acts on (default y)")
    p.add_argument(
        "--mmd-grouping",
        choices=("within", "shared"),
        help="with --mmd-group-key: compare within each group (default) or pooled over shared ones",
    )
    p.add_argument("--out", required=True, metavar="MODEL_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an existing MODEL_DIR")
    p.add_argument("--checkpoint-dir", help="write the training state here after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    p.add_argument("--accelerator", default="auto", help="auto (default), cpu, gpu/cuda, mps")
    p.add_argument("--devices", default="auto", help="number of devices (DDP if >= 2) or auto")
    p.add_argument("--strategy", default="auto", help="auto (default) or ddp")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=_positive, help="torch CPU threads (default: torch's)")

    p = sub.add_parser("predict", help="carry cells to another condition with a saved model")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("data", metavar="DATA.h5ad")
    p.add_argument("--target-condition", required=True)
    p.add_argument("--source-condition", help="only cells of this condition, encoded with it")
    p.add_argument("--cell-type-key", help="obs column with the cell type")
    p.add_argument("--cell-type", help="only cells of this cell type")
    p.add_argument("--sample", action="store_true", help="sample from the likelihood")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    p.add_argument("--accelerator", default="auto", help="auto (default), cpu, gpu/cuda, mps")
    p.add_argument("--out", required=True, metavar="PRED.h5ad")

    p = sub.add_parser("benchmark", help="hold out each cell type's stimulated cells, score")
    p.add_argument(
        "dataset",
        nargs="?",
        default="kang",
        metavar="DATASET_OR_PATH",
        help="'kang' (Kang et al. PBMCs, scGen preprocessing), 'mnist' (thin/normal/thick "
        "digits, image style transfer), 'kang-counts' (NB vs ZINB vs MSE trVAE on Kang raw "
        "counts) or an .h5ad file",
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
    from trvae.bench_scale import add_scale_parser
    from trvae.bench_speed import add_bench_parser

    add_bench_parser(sub)
    add_scale_parser(sub.choices["bench"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trvae`` command; returns the exit code (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return int(exit_.code or 0)
    if args.version:
        from trvae import __version__

        print(f"trvae {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    from trvae._errors import TRVAEError

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "predict":
            return _predict(args)
        if args.command == "bench":
            from trvae.bench_speed import bench_command

            if args.bench == "scale":
                from trvae.bench_scale import scale_command

                return scale_command(args)
            return bench_command(args)
        return _benchmark(args, argv)
    except (TRVAEError, FileNotFoundError) as err:
        message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"trvae: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trvae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
