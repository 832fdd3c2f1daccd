"""fdpass.protocol: encoding and decoding LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES, without processes."""

from __future__ import annotations

import os
import subprocess

import pytest

from fdpass import protocol

PID = 4242


def env(fds=None, pid=str(PID), names=None):
    environ = {}
    if fds is not None:
        environ["LISTEN_FDS"] = fds
    if pid is not None:
        environ["LISTEN_PID"] = pid
    if names is not None:
        environ["LISTEN_FDNAMES"] = names
    return environ


@pytest.mark.parametrize(
    ("environ", "fds", "names"),
    [
        (env("2", names="web:admin"), (3, 4), ("web", "admin")),
        (env("3", names="web::web"), (3, 4, 5), ("web", "", "web")),
        (env("1", names=""), (3,), ("",)),
        (env("2"), (3, 4), ("unknown", "unknown")),
        (env("002", names="a:b"), (3, 4), ("a", "b")),
        (env("0"), (), ()),
        (env("2", pid=str(PID + 1)), (), ()),
        (env("2", pid=None), (), ()),
        (env(None), (), ()),
        ({}, (), ()),
    ],
)
def test_decode_valid(environ, fds, names):
    assert protocol.decode(environ, PID) == protocol.ListenEnv(fds, names)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        (env("two"), "LISTEN_FDS='two'"),
        (env("-1"), "LISTEN_FDS='-1'"),
        (env("+1"), "LISTEN_FDS='+1'"),
        (env(" 1"), "LISTEN_FDS=' 1'"),
        (env(""), "LISTEN_FDS=''"),
        (env("\u0663"), "LISTEN_FDS"),
        (env(str(protocol.MAX_FDS + 1)), "LISTEN_FDS"),
        (env("9" * 5000), "LISTEN_FDS"),
        (env("2", pid="me"), "LISTEN_PID='me'"),
        (env("2", pid="9" * 5000), "LISTEN_PID"),
        (env("2", names="a"), "LISTEN_FDNAMES"),
        (env("2", names="a:b:c"), "LISTEN_FDNAMES"),
        (env("1", names="a:"), "LISTEN_FDNAMES"),
    ],
)
def test_decode_malformed(environ, named):
    """A malformed variable raises ValueError naming the variable, never another exception."""
    with pytest.raises(ValueError, match="LISTEN_") as error:
        protocol.decode(environ, PID)

    assert named in str(error.value)


def test_decode_pid_checked_before_count():
    """LISTEN_PID is checked first, so a malformed LISTEN_FDS meant for another process is ignored."""
    assert protocol.decode(env("garbage", pid=str(PID + 1)), PID) == protocol.ListenEnv((), ())


def test_encode_names():
    encoded = protocol.encode(["web", "", "web"], PID)

    assert encoded == {"LISTEN_FDS": "3", "LISTEN_PID": str(PID), "LISTEN_FDNAMES": "web::web"}
    assert protocol.decode(encoded, PID) == protocol.ListenEnv((3, 4, 5), ("web", "", "web"))


def test_encode_no_names():
    assert protocol.encode([], PID) == {"LISTEN_FDS": "0", "LISTEN_PID": str(PID), "LISTEN_FDNAMES": ""}


@pytest.mark.parametrize("pid", [0, -1, True, "42", None])
def test_encode_bad_pid(pid):
    with pytest.raises(ValueError, match="LISTEN_PID"):
        protocol.encode(["a"], pid)


@pytest.mark.parametrize(
    "name",
    ["", "web", "a" * protocol.MAX_NAME_LENGTH, " ~!#", "with space"],
)
def test_validate_name_accepts(name):
    assert protocol.validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("a:b", ValueError),
        ("tab\there", ValueError),
        ("new\nline", ValueError),
        ("nul\0", ValueError),
        ("del\x7f", ValueError),
        ("caf\u00e9", ValueError),
        ("a" * (protocol.MAX_NAME_LENGTH + 1), ValueError),
        (b"web", TypeError),
        (5, TypeError),
        (None, TypeError),
    ],
)
def test_validate_name_rejects(name, error):
    with pytest.raises(error) as raised:
        protocol.validate_name(name)

    if isinstance(name, str) and len(name) < 40:
        assert repr(name) in str(raised.value)


def test_apply_replaces_stale_variables():
    """apply() sets the three variables and drops a stale LISTEN_PIDFDID."""
    environ = {"LISTEN_FDS": "9", "LISTEN_PIDFDID": "77", "LISTEN_FDNAMES": "old", "PATH": "/bin"}

    protocol.apply(environ, ["a", "b"], PID)

    assert environ == {"LISTEN_FDS": "2", "LISTEN_PID": str(PID), "LISTEN_FDNAMES": "a:b", "PATH": "/bin"}


def test_clear_os_environ_reaches_c_environment(monkeypatch):
    """clear() on os.environ also unsets the variables for child processes."""
    for variable in protocol.VARIABLES:
        monkeypatch.setenv(variable, "1")

    protocol.clear(os.environ)

    assert not any(variable in os.environ for variable in protocol.VARIABLES)
    child_env = subprocess.run(["/usr/bin/env"], capture_output=True, text=True, check=True, timeout=20).stdout
    assert "LISTEN_" not in child_env
