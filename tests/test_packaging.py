"""What the installed distribution promises: one version, a typed package, an abi3 extension."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import pathlib

import fdpass
from fdpass import _fdpass


def test_version_matches_metadata():
    """fdpass.__version__ is the version the installed distribution declares."""
    assert fdpass.__version__ == importlib.metadata.version("fdpass")


def test_package_ships_py_typed():
    """The py.typed marker is installed, so type checkers read the inline hints."""
    assert importlib.resources.files("fdpass").joinpath("py.typed").is_file()


def test_extension_uses_stable_abi():
    """The compiled module is built for the stable ABI, so one wheel serves every CPython 3.10+."""
    assert _fdpass.__file__ is not None
    assert pathlib.Path(_fdpass.__file__).name == "_fdpass.abi3.so"
