"""The package layout: every subpackage's docstring lists each of its modules, one line each."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import vaelib

SUBPACKAGES = [name for _, name, is_pkg in pkgutil.walk_packages(vaelib.__path__, "vaelib.") if is_pkg]


def test_the_stages_are_packages():
    assert {"vaelib.data", "vaelib.model", "vaelib.analysis", "vaelib.report", "vaelib.cli"} <= set(SUBPACKAGES)


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_package_docstring_lists_its_modules(package):
    mod = importlib.import_module(package)
    doc = mod.__doc__ or ""
    children = [name for _, name, _ in pkgutil.iter_modules(mod.__path__)]
    missing = [c for c in children if f"- ``{c}``" not in doc]
    assert not missing, f"{package}.__init__ docstring does not list {missing}"
