"""Exception types raised by trvae for bad input, and the option check that raises them."""


class TRVAEError(ValueError):
    """Invalid input given to trvae: a key, condition, gene set, value or file.

    Subclasses :class:`ValueError`, so code catching ``ValueError`` keeps working.
    """


def check_option(
    name: str, value: object, options: tuple, error: type[ValueError] = ValueError
) -> None:
    """Raise ``error`` naming ``name`` unless ``value`` is one of ``options``."""
    if value not in options:
        raise error(f"{name} must be one of {tuple(options)}, got {value!r}")


class ModelLoadError(TRVAEError):
    """A saved model directory is missing, corrupt, truncated or incompatible."""
