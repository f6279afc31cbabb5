"""trVAE: transfer variational autoencoder for out-of-distribution condition transfer."""

from importlib.metadata import PackageNotFoundError, version

from trvae._errors import ModelLoadError, TRVAEError

try:
    __version__ = version("trvae")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

from trvae._distributed import DistributedTrainingError
from trvae.model import TRVAE
from trvae.module import TRVAEModule

__all__ = [
    "TRVAE",
    "DistributedTrainingError",
    "ModelLoadError",
    "TRVAEError",
    "TRVAEModule",
    "__version__",
]
