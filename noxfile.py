"""Run the quick test suite on CPython 3.10, 3.11, 3.12 and 3.13 against one abi3 wheel.

    nox                  every interpreter
    nox -s tests-3.12    one interpreter
    nox -- -k listen     arguments after -- go to pytest

The interpreters are pyenv's builds under $(pyenv root)/versions, not the
pyenv shims. The wheel is FDPASS_WHEEL if it is set, or else one wheel that
the first session builds from this checkout. Every session installs that
same file, so the matrix tests the single cp310-abi3 wheel that is released.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import tempfile

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
ROOT = pathlib.Path(__file__).resolve().parent

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = False


def pyenv_root() -> pathlib.Path:
    if "PYENV_ROOT" in os.environ:
        return pathlib.Path(os.environ["PYENV_ROOT"])
    try:
        output = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return pathlib.Path.home() / ".pyenv"
    return pathlib.Path(output.strip())


def put_pyenv_interpreters_first_on_path() -> None:
    """Prepend the bin directory of the newest pyenv build of each version in PYTHONS to PATH.

    nox looks up "3.12" as python3.12 on PATH. The pyenv shim of that name
    runs a shell script on every call, and it fails unless 3.12 is among the
    versions pyenv has selected for the current directory.
    """
    versions = pyenv_root() / "versions"
    directories = []
    for version in PYTHONS:
        builds = [path for path in versions.glob(f"{version}.*") if re.fullmatch(rf"{version}\.\d+", path.name)]
        if builds:
            newest = max(builds, key=lambda path: int(path.name.rsplit(".", 1)[1]))
            directories.append(str(newest / "bin"))
    os.environ["PATH"] = os.pathsep.join([*directories, os.environ.get("PATH", "")])


put_pyenv_interpreters_first_on_path()

_built_wheel: str | None = None


def wheel_path(session: nox.Session) -> str:
    """Return FDPASS_WHEEL, or a wheel built from this checkout once per nox run."""
    global _built_wheel

    if os.environ.get("FDPASS_WHEEL"):
        return os.environ["FDPASS_WHEEL"]
    if _built_wheel is None:
        output = tempfile.mkdtemp(prefix="fdpass-nox-wheel-")
        session.run("python", "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", output, str(ROOT))
        (_built_wheel,) = (str(path) for path in pathlib.Path(output).glob("fdpass-*.whl"))
    return _built_wheel


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Install the wheel with the [test] extra and run the quick suite."""
    wheel = wheel_path(session)
    session.install(f"{wheel}[test]")

    # pytest's console script does not put the checkout on sys.path, so the
    # tests import the installed wheel.
    session.run("pytest", str(ROOT / "tests"), "-q", "-p", "no:cacheprovider", *session.posargs)
