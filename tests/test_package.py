"""The package namespace: public names and the submodules reachable after ``import trvae``."""

from __future__ import annotations

import importlib

import pytest

import trvae


@pytest.mark.parametrize("name", ["datasets", "images", "metrics", "pl", "pp"])
def test_submodules_are_attributes(name):
    assert getattr(trvae, name) is importlib.import_module(f"trvae.{name}")
    assert name in dir(trvae)


def test_public_names_and_unknown_attribute():
    for name in trvae.__all__:
        assert hasattr(trvae, name)
    assert issubclass(trvae.TRVAEError, ValueError)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        trvae.nope  # noqa: B018


@pytest.mark.parametrize("name", ["baselines", "benchmark"])
def test_benchmarks_are_not_library_attributes(name):
    """The benchmarks and their baselines live in trvae_benchmarks, outside the library."""
    with pytest.raises(AttributeError):
        getattr(trvae, name)
    assert importlib.import_module(f"trvae_benchmarks.{name.replace('benchmark', 'kang')}")
