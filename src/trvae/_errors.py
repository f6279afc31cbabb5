"""Exception types raised by trvae for bad input, and the checks that raise them."""

import math
import numbers


class TRVAEError(ValueError):
    """Invalid input given to trvae: a key, condition, gene set, value or file.

    Subclasses :class:`ValueError`, so code catching ``ValueError`` keeps working.

    Examples
    --------
    >>> import trvae
    >>> adata = trvae.datasets.simulate_perturbation("shared", n_genes=10, cells_per_group=5)
    >>> try:
    ...     trvae.TRVAE(adata, condition_key="batch")
    ... except trvae.TRVAEError as err:
    ...     print(type(err).__name__, isinstance(err, ValueError))
    TRVAEError True
    """


def check_option(
    name: str, value: object, options: tuple, error: type[ValueError] = ValueError
) -> None:
    """Raise ``error`` naming ``name`` unless ``value`` is one of ``options``."""
    if value not in options:
        raise error(f"{name} must be one of {tuple(options)}, got {value!r}")


def check_integer(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an ``int``; :class:`TRVAEError` naming ``name`` unless it is a whole number
    (an integral float such as ``20.0`` is accepted, ``True`` is not) of at least ``minimum``.

    Examples
    --------
    >>> check_integer("n_latent", 20.0)
    20
    >>> try:
    ...     check_integer("n_latent", 2.5)
    ... except TRVAEError as err:
    ...     print(err)
    n_latent must be an integer >= 1, got 2.5
    """
    whole = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()
    )
    if isinstance(value, bool) or not whole or value < minimum:
        raise TRVAEError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_number(
    name: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a ``float``; :class:`TRVAEError` naming ``name`` and the allowed interval
    unless it is a finite real number from ``low`` to ``high`` (ends excluded where ``*_open``).

    Examples
    --------
    >>> check_number("dropout", 0.2, 0, 1, high_open=True)
    0.2
    >>> try:
    ...     check_number("dropout", 1, 0, 1, high_open=True)
    ... except TRVAEError as err:
    ...     print(err)
    dropout must be a finite number in [0, 1), got 1
    """
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    inside = real and math.isfinite(value)
    if inside:
        inside = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not inside:
        if high == math.inf:
            interval = f"{'>' if low_open else '>='} {low:g}"
        else:
            interval = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise TRVAEError(f"{name} must be a finite number {interval}, got {value!r}")
    return float(value)


class ModelLoadError(TRVAEError):
    """A saved model directory is missing, corrupt, truncated or incompatible.

    Examples
    --------
    >>> import trvae
    >>> try:
    ...     trvae.TRVAE.load("no/such/model")
    ... except trvae.ModelLoadError as err:
    ...     print(err)
    no saved model directory at no/such/model
    """


class MissingDependencyError(TRVAEError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, extra: str, package: str | None = None, what: str = "this feature"):
    """Import and return ``module``, or raise :class:`MissingDependencyError` naming ``extra``.

    Examples
    --------
    >>> require("numpy", "core").__name__
    'numpy'
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{what} needs {package or module}, which is not installed; install the "
            f"{extra!r} extra: pip install 'trvae-torch[{extra}]'"
        ) from err
