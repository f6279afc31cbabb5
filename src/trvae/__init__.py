"""trVAE: transfer variational autoencoder for out-of-distribution condition transfer."""

import importlib
from importlib.metadata import PackageNotFoundError, version

from trvae._errors import ModelLoadError, TRVAEError

try:
    __version__ = version("trvae-torch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

from trvae.model import TRVAE, TRVAEEnsemble
from trvae.module import TRVAEModule
from trvae.train.distributed import DistributedTrainingError

__all__ = [
    "TRVAE",
    "DistributedTrainingError",
    "ModelLoadError",
    "TRVAEEnsemble",
    "TRVAEError",
    "TRVAEModule",
    "__version__",
]

#: Submodules reachable as attributes after ``import trvae`` (scanpy style: ``trvae.pl``), each
#: imported on first use so that ``import trvae`` stays light (no matplotlib, no scanpy).
_SUBMODULES = ("datasets", "images", "metrics", "pl", "pp")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"trvae.{name}")
    raise AttributeError(f"module 'trvae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
