"""Command line: ``trvae train``, ``trvae predict`` and ``trvae benchmark``.

Bad input (missing file, unknown key, condition or cell type, empty selection) ends with exit
code 2 and a one-line ``trvae: error: ...`` message on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from trvae._io import read_h5ad, write_h5ad

__all__ = ["main"]

#: Entry-point group through which other packages (the benchmarks) add subcommands: each entry
#: is a function ``register(subparsers)`` that adds parsers whose ``run(args, argv)`` is set.
ENTRY_POINT_GROUP = "trvae.cli"


def _extensions() -> list:
    from importlib.metadata import entry_points

    return [ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)]


def _select(adata, column: str, value: str, what: str):
    """Boolean mask of ``obs[column] == value``; errors name the known values."""
    from trvae._errors import TRVAEError
    from trvae.data import validation as V

    labels = V.check_obs_key(adata, column, what)
    if not (labels == str(value)).any():
        known = ", ".join(map(repr, sorted(labels.unique())))
        raise TRVAEError(f"no cells with {column} == {value!r} (values: {known})")
    return (labels == str(value)).to_numpy()


def arg_kwargs(args: argparse.Namespace, *names: str, given_only: bool = False) -> dict:
    """``{name: args.name}`` for each of ``names``: parsed options passed on under their names.

    ``given_only`` leaves out those that are ``None`` (not given, no default), so the callee's
    own defaults apply.
    """
    kwargs = {name: getattr(args, name) for name in names}
    return {k: v for k, v in kwargs.items() if v is not None} if given_only else kwargs


def _train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from trvae import TRVAE
    from trvae._errors import TRVAEError

    adata = read_h5ad(args.data)
    model_kwargs = arg_kwargs(
        args,
        *("layer", "likelihood", "n_latent", "n_hidden", "n_mmd", "alpha", "beta"),
        *("mmd_group_key", "decoder_conditioning", "mmd_estimator", "mmd_on", "mmd_grouping"),
        "anchor",
        given_only=True,
    )
    model_kwargs.update(dropout=args.dropout, seed=args.seed)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise TRVAEError(f"{out} exists; pass --overwrite to replace it")
    model = TRVAE(adata, condition_key=args.condition_key, **model_kwargs)
    start = time.perf_counter()
    budget = arg_kwargs(args, "max_epochs", "batch_size", "lr", "accelerator", "precision")
    budget.update(arg_kwargs(args, "lr_schedule", given_only=True))  # else the package default
    model.train(
        progress_bar=not args.quiet,
        **budget,
        **arg_kwargs(args, "seed", "checkpoint_dir", "resume", "devices", "strategy"),
    )
    model.save(out, overwrite=args.overwrite)
    best = model.history.attrs.get("best_epoch", "?")
    print(
        f"trained {model!r} on {adata.n_obs} cells in {time.perf_counter() - start:.0f}s "
        f"({len(model.history)} epochs, best {best}); saved to {out}"
    )
    if model.init_params["anchor"] == "auto":
        for row in model.anchor_weights().itertuples():
            ratio = (
                f"state ratio {row.state_ratio:.2f}"
                if row.state_ratio == row.state_ratio  # NaN: unknown
                else "state ratio unknown (needs --mmd-group-key and 3 groups with both)"
            )
            meaning = _anchor_meaning(row.anchor)
            if row.anchor > 0 and row.local_ratio < 1:  # NaN (unknown): the pooled shift
                meaning += f"; local mean shift, local ratio {row.local_ratio:.2f}"
            print(f"{row.source} -> {row.target}: {ratio}, anchor {row.anchor:g} ({meaning})")
    if args.group_key is not None:  # the self-assessment: n_groups more fits, same budget
        choose = args.anchor is None  # an --anchor given is kept
        table = model.assess(
            args.group_key, n_groups=args.assess_groups, seed=args.seed, choose_anchor=choose,
            **budget,
        )  # fmt: skip
        print(f"self-assessment ({args.group_key}): {table.attrs['verdict']}")
        if choose:
            model.save(out, overwrite=True)
            print(f"saved the chosen anchor {model.init_params['anchor']:g} with the model")
    return 0


def _anchor_meaning(weight: float) -> str:
    """What an anchor weight means for the predicted mean responses, in words."""
    if weight == 0:
        return "the groups respond by their state: trVAE's own response"
    if weight == 1:
        return "the groups' states say little of their responses: the mean shift's response"
    return f"{100 * (1 - weight):.0f} % trVAE's response, {100 * weight:.0f} % the mean shift's"


def _predict(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from trvae import TRVAE
    from trvae._errors import TRVAEError
    from trvae.data import validation as V

    training = None if args.training_data is None else read_h5ad(args.training_data)
    model = TRVAE.load(args.model_dir, adata=training)
    adata = read_h5ad(args.data)
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
    mode = args.mode
    if args.sample:
        if mode not in ("auto", "decode"):
            raise TRVAEError(f"--sample draws from the decoder: use it without --mode {mode}")
        mode = "decode"
    if args.group_key is None:
        _hint_group_key(model, adata)
    pred = model.predict(
        adata,
        args.target_condition,
        source_condition=args.source_condition,
        mode=mode,
        return_mean=not args.sample,
        **arg_kwargs(args, "seed", "accelerator", "precision", "group_key"),
        **arg_kwargs(args, "anchor", given_only=True),
    )
    write_h5ad(pred, Path(args.out))
    print(f"predicted {pred.n_obs} cells x {pred.n_vars} genes as {args.target_condition!r}")
    print(f"wrote {args.out}")
    return 0


def _hint_group_key(model, adata) -> None:
    """Say so when the cells hold several of the model's MMD groups and are predicted together."""
    key = model.init_params.get("mmd_group_key")
    if key is None or key not in adata.obs:
        return
    n_groups = adata.obs[key].nunique()
    if n_groups > 1:
        print(
            f"note: these cells hold {n_groups} groups of obs[{key!r}], predicted together (the "
            f"read-out's mean matching and anchor act on all of them at once); --group-key "
            f"{key} predicts each group on its own"
        )


def anchor_value(text: str) -> float | str:
    """``--anchor``: ``auto`` or a number (checked by the model)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        message = f"expected a number in [0, 1] or auto, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


#: ``--precision`` of ``trvae train`` / ``predict`` (:mod:`trvae.train.precision`).
PRECISION_ARG = {
    "choices": ("32", "bf16-mixed"),
    "default": "32",
    "help": "32 (default) or bf16-mixed: bfloat16 autocast, float32 weights and loss",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``trvae`` command."""
    parser = argparse.ArgumentParser(
        prog="trvae", description="trVAE: predict single cells under an unseen condition."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("train", help="train a model on an .h5ad file and save it")
    p.set_defaults(run=_train)
    p.add_argument("data", metavar="DATA.h5ad")
    p.add_argument("--condition-key", required=True, help="obs column with the condition")
    p.add_argument("--layer", help="use adata.layers[LAYER] instead of X")
    p.add_argument("--likelihood", choices=("mse", "nb", "zinb"), default="mse")
    p.add_argument("--max-epochs", type=positive, help="default: about 150,000 cells seen")
    p.add_argument("--batch-size", type=positive, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--lr-schedule", choices=("plateau", "cosine"),
        help="learning-rate schedule (default: the package's, plateau)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-latent", type=positive)
    p.add_argument("--n-hidden", type=positive, nargs="+", metavar="N")
    p.add_argument("--n-mmd", type=positive)
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
    p.add_argument(
        "--group-key",
        help="obs column of groups (e.g. cell_type): after training, hold out each of "
        "--assess-groups groups' perturbed cells in turn, refit, and print how the model did "
        "against the other groups' mean shift (TRVAE.assess)",
    )
    p.add_argument("--assess-groups", type=positive, default=3, help="groups to assess (3)")
    p.add_argument(
        "--anchor",
        type=anchor_value,
        help="weight in [0, 1] of the mean shift in predicted mean responses, or auto (TRVAE's "
        "anchor; default: the package's, or with --group-key the one the self-assessment "
        "chooses)",
    )
    p.add_argument("--out", required=True, metavar="MODEL_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an existing MODEL_DIR")
    p.add_argument("--checkpoint-dir", help="write the training state here after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    p.add_argument("--accelerator", default="auto", help="auto (default), cpu, gpu/cuda, mps")
    p.add_argument("--devices", default="auto", help="number of devices (DDP if >= 2) or auto")
    p.add_argument("--strategy", default="auto", help="auto (default) or ddp")
    p.add_argument("--precision", **PRECISION_ARG)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=positive, help="torch CPU threads (default: torch's)")

    p = sub.add_parser("predict", help="carry cells to another condition with a saved model")
    p.set_defaults(run=_predict)
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("data", metavar="DATA.h5ad")
    p.add_argument("--target-condition", required=True)
    p.add_argument("--source-condition", help="only cells of this condition, encoded with it")
    p.add_argument("--cell-type-key", help="obs column with the cell type")
    p.add_argument("--cell-type", help="only cells of this cell type")
    p.add_argument(
        "--group-key",
        help="obs column (e.g. the cell type) whose groups are predicted each on its own "
        "(TRVAE.predict's group_key)",
    )
    p.add_argument(
        "--mode",
        choices=["auto", "quantile", "residual", "decode"],
        default="auto",
        help="read-out (TRVAE.predict's mode; auto: quantile)",
    )
    p.add_argument(
        "--sample",
        action="store_true",
        help="one draw per cell from the decoder's likelihood (implies --mode decode)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --sample and of quantile levels")
    p.add_argument("--accelerator", default="auto", help="auto (default), cpu, gpu/cuda, mps")
    p.add_argument("--precision", **PRECISION_ARG)
    p.add_argument(
        "--anchor",
        type=anchor_value,
        help="weight of the mean shift, or auto (default: the model's anchor)",
    )
    p.add_argument(
        "--training-data",
        metavar="TRAIN.h5ad",
        help="the model's training data: with --mmd-group-key models, the target condition's "
        "read-out table is then matched to the cells' state (TRVAE.predict's match_state)",
    )
    p.add_argument("--out", required=True, metavar="PRED.h5ad")

    for register in _extensions():
        register(sub)
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
        return args.run(args, argv)
    except (TRVAEError, FileNotFoundError) as err:
        message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"trvae: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trvae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
