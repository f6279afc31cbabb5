"""Exception types raised by trvae for bad input."""


class TRVAEError(ValueError):
    """Invalid input given to trvae: a key, condition, gene set, value or file.

    Subclasses :class:`ValueError`, so code catching ``ValueError`` keeps working.
    """


class ModelLoadError(TRVAEError):
    """A saved model directory is missing, corrupt, truncated or incompatible."""
