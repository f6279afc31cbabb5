"""Optional dependencies: a missing extra stops with one line naming it."""

from __future__ import annotations

import sys

import pytest

from trvae._errors import MissingDependencyError, TRVAEError, require
from trvae.cli import main


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert require("math", "core").sqrt(4.0) == 2.0
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'trvae-torch\[images\]'"):
        require("skimage", "images", "scikit-image", "ssim")
    assert issubclass(MissingDependencyError, TRVAEError)
    assert issubclass(MissingDependencyError, ImportError)


def test_mnist_benchmark_without_scikit_image_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "skimage", None)
    assert main(["benchmark", "mnist", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("trvae: error: trvae benchmark mnist needs scikit-image")
    assert "trvae-torch[images]" in err
    assert not any(tmp_path.iterdir())
