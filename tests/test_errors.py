"""The input checks, and optional dependencies: a missing extra stops with one line naming it."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from trvae._errors import (
    MissingDependencyError,
    TRVAEError,
    check_integer,
    check_number,
    require,
)
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


@pytest.mark.parametrize("value", [3, np.int64(3), 3.0, np.float32(3.0)])
def test_check_integer_accepts_whole_numbers(value):
    out = check_integer("n", value, minimum=3)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value", [2, 2.5, True, "3", None, math.nan, math.inf, [3]])
def test_check_integer_names_the_argument(value):
    with pytest.raises(TRVAEError, match=r"^n must be an integer >= 3, got "):
        check_integer("n", value, minimum=3)


def test_check_number_interval_ends():
    assert check_number("p", 0, 0, 1) == 0.0 and check_number("p", 1, 0, 1) == 1.0
    assert type(check_number("p", np.float32(0.5), 0, 1)) is float
    for value, high_open, message in [
        (0, False, r"^p must be a finite number in \(0, 1\], got 0$"),
        (1, True, r"^p must be a finite number in \(0, 1\), got 1$"),
        (math.nan, True, r"got nan$"),
        ("0.5", True, r"got '0.5'$"),
        (False, True, r"got False$"),
    ]:
        with pytest.raises(TRVAEError, match=message):
            check_number("p", value, 0, 1, low_open=True, high_open=high_open)
    with pytest.raises(TRVAEError, match=r"^lr must be a finite number > 0, got -1$"):
        check_number("lr", -1, low=0, low_open=True)
    with pytest.raises(TRVAEError, match=r"^alpha must be a finite number >= 0, got -inf$"):
        check_number("alpha", -math.inf, low=0)
