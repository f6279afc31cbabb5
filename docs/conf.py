"""Sphinx configuration of the trvae documentation site (``make docs``).

The site is built offline: no intersphinx inventories, no downloads. The tutorials in
``tutorials/`` are MyST markdown notebooks that myst-nb executes during the build; executed
notebooks are cached in ``_build/.jupyter_cache`` and rerun only when their code changes.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path

HERE = Path(__file__).resolve().parent

project = "trvae"
author = "the trvae developers"
copyright = "the trvae developers"
try:
    release = _dist_version("trvae-torch")
except PackageNotFoundError:  # pragma: no cover - building without the package installed
    release = "0.0.0"
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", ".gitignore"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# ------------------------------------------------------------------------------ API reference
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"
autodoc_mock_imports: list[str] = []
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
napoleon_use_param = True
python_use_unqualified_type_names = True

# --------------------------------------------------------------------------------- notebooks
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("TRVAE_DOCS_EXECUTE", "cache")  # "force" reruns everything
nb_execution_cache_path = str(HERE / "_build" / ".jupyter_cache")
nb_execution_timeout = 900  # seconds per cell
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_show_tb = True
nb_merge_streams = True
nb_execution_excludepatterns: list[str] = []

# -------------------------------------------------------------------------------------- HTML
html_theme = "furo"
html_title = f"trvae {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
html_theme_options = {"navigation_with_keys": True}
html_last_updated_fmt = None
