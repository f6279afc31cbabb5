"""Persistence: save a model to a directory atomically and load it back, checked."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from anndata import AnnData

from trvae._errors import ModelLoadError
from trvae._io import atomic_directory, atomic_write_text, directory_backup, torch_load_error

if TYPE_CHECKING:  # the class these mixins end up in
    from typing_extensions import Self

FORMAT_VERSION = 1
_WEIGHTS, _CONFIG, _HISTORY = "model.pt", "config.json", "history.csv"


def _package_version() -> str:
    from trvae import __version__

    return __version__


class SaveLoadMixin:
    """:meth:`save` and :meth:`load` for :class:`~trvae.TRVAE`."""

    def _config(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "trvae_version": _package_version(),
            "torch_version": torch.__version__,
            "anndata_version": metadata.version("anndata"),
            "init_params": self.init_params,
            "condition_key": self.condition_key,
            "layer": self.layer,
            "conditions": self.conditions_,
            "var_names": self.var_names,
            "is_trained": self.is_trained,
        }

    def _write_config(self, directory: Path) -> None:
        atomic_write_text(directory / _CONFIG, json.dumps(self._config(), indent=1))

    def save(self, path: str | Path, overwrite: bool = False) -> None:
        """Write the model to directory ``path`` atomically.

        Everything is written to a temporary directory beside ``path`` and then renamed, so an
        interrupted save leaves any previous model at ``path`` intact.

        Examples
        --------
        >>> import tempfile, trvae
        >>> adata = trvae.datasets.simulate_perturbation(n_genes=20, cells_per_group=10)
        >>> folder = tempfile.mkdtemp()
        >>> trvae.TRVAE(adata, "condition").save(f"{folder}/model")
        >>> trvae.TRVAE.load(f"{folder}/model").conditions_
        ['control', 'stimulated']
        """
        with atomic_directory(path, overwrite) as tmp:
            torch.save(self.module.state_dict(), tmp / _WEIGHTS)
            self._write_config(tmp)
            self.history.to_csv(tmp / _HISTORY, index=False)

    @classmethod
    def load(cls, path: str | Path, adata: AnnData | None = None) -> Self:
        """Load a model saved with :meth:`save`; ``adata`` (optional) becomes its training data.

        Raises :class:`~trvae.ModelLoadError` naming the file or field that is missing,
        corrupt or incompatible. Weights are loaded with ``weights_only=True``. See
        :meth:`save` for an example.
        """
        path = Path(path)
        backup = directory_backup(path)
        if not path.exists() and backup.exists():  # a save was interrupted between two renames
            path = backup
        if not path.is_dir():
            raise ModelLoadError(f"no saved model directory at {path}")
        for name in (_CONFIG, _WEIGHTS):
            if not (path / name).is_file():
                raise ModelLoadError(f"{path} is not a complete trvae model: {name} is missing")
        try:
            config = json.loads((path / _CONFIG).read_text())
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"{path / _CONFIG} is corrupt: {err}") from err
        if not isinstance(config, dict):
            raise ModelLoadError(
                f"{path / _CONFIG} is corrupt: expected a JSON object, got {type(config).__name__}"
            )
        if config.get("format_version") != FORMAT_VERSION:
            raise ModelLoadError(
                f"{path} was written in model format {config.get('format_version')!r} by trvae "
                f"{config.get('trvae_version')!r}; this trvae ({_package_version()}) reads "
                f"format {FORMAT_VERSION}"
            )
        model = cls.__new__(cls)
        try:
            model.init_params = dict(config["init_params"])
            model.condition_key, model.layer = config["condition_key"], config["layer"]
            if not isinstance(config["conditions"], list) or not isinstance(
                config["var_names"], list
            ):
                raise TypeError("'conditions' and 'var_names' must be lists")
            model.conditions_, model.var_names = list(config["conditions"]), config["var_names"]
            model.is_trained = bool(config["is_trained"])
            model.module = model._build_module()
        except (KeyError, TypeError, ValueError, RuntimeError) as err:  # RuntimeError: bad sizes
            raise ModelLoadError(f"{path / _CONFIG} lacks or mangles a field: {err}") from err
        try:
            state = torch.load(path / _WEIGHTS, weights_only=True, map_location="cpu")
            model.module.load_state_dict(state)
        except Exception as err:
            raise ModelLoadError(
                f"{path / _WEIGHTS} is corrupt or does not match the configuration "
                f"(saved with trvae {config.get('trvae_version')}, torch "
                f"{config.get('torch_version')}): {torch_load_error(err)}"
            ) from err
        model.module.eval()
        history = path / _HISTORY
        try:
            model.history = pd.read_csv(history) if history.exists() else pd.DataFrame()
        except (OSError, ValueError):  # empty, unparsable or undecodable: history is optional
            model.history = pd.DataFrame()
        model.adata = adata
        if adata is not None:
            model._cell_data(adata)
        return model
