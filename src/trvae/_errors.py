"""Exception types raised by trvae for bad input, and the option check that raises them."""


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
