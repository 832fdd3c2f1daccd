"""FDPASS_SOCKETS, which lets inherit() rebuild passed sockets without asking the kernel for their type.

The encoding tests need no process. The adoption tests start
tests/helpers/listen_launcher.py with Unix socketpair ends on 3 and 4 and a
FDPASS_SOCKETS value, true or false, and check that inherit() reports the
kernel's facts either way.
"""

from __future__ import annotations

import fcntl
import os
import socket

import pytest
from test_inherit import launch, listen_env

from fdpass import _native, _socket_env, rebuild

UNIX_STREAM = f"{int(socket.AF_UNIX)}.{int(socket.SOCK_STREAM)}.0.0"
INET_STREAM = f"{int(socket.AF_INET)}.{int(socket.SOCK_STREAM)}.0.0"


def test_encode_runs_of_equal_sockets():
    """Consecutive sockets with the same family, type and protocol share one run."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(3)]
    sockets.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sockets.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sockets[-1].settimeout(2.5)
    try:
        value = _socket_env.encode(sockets, 1234)
    finally:
        for sock in sockets:
            sock.close()

    tcp = f"{int(socket.AF_INET)}.{int(socket.SOCK_STREAM)}.{socket.IPPROTO_TCP}"
    udp = f"{int(socket.AF_INET)}.{int(socket.SOCK_DGRAM)}.{socket.IPPROTO_UDP}"
    assert value == f"1234:5:{tcp}.0*3,{udp}.0*1,{udp}.1*1"


def test_encode_needs_every_item_a_socket():
    """A list with an int or a file in it gets no variable, so inherit() asks the kernel."""
    sock = socket.socket()
    try:
        assert _socket_env.encode([sock, 0], 1234) is None
        assert _socket_env.encode([], 1234) is None
    finally:
        sock.close()


def test_decode_round_trip():
    """decode() expands the runs that encode() wrote."""
    environ = {_socket_env.VARIABLE: "77:3:2.1.6.0*2,10.2.17.1*1"}

    assert _socket_env.decode(environ, 77, 3) == ([2, 2, 10], [1, 1, 2], [6, 6, 17], [False, False, True])


@pytest.mark.parametrize(
    "value, pid, count",
    [
        pytest.param(None, 77, 2, id="missing"),
        pytest.param("78:2:2.1.6.0*2", 77, 2, id="other pid"),
        pytest.param("77:3:2.1.6.0*3", 77, 2, id="other count"),
        pytest.param("77:2:2.1.6.0*3", 77, 2, id="runs longer than count"),
        pytest.param("77:2:2.1.6.0*1", 77, 2, id="runs shorter than count"),
        pytest.param("77:2:2.1.6.0*0,2.1.6.0*2", 77, 2, id="empty run"),
        pytest.param("77:2:2.1.6.2*2", 77, 2, id="blocking flag not 0 or 1"),
        pytest.param("77:2:2.1.6*2", 77, 2, id="three fields"),
        pytest.param("77:2:x.1.6.0*2", 77, 2, id="not a number"),
        pytest.param("77:2", 77, 2, id="no runs"),
        pytest.param("77:2:2.1.99999999999999999999.0*2", 77, 2, id="protocol beyond C int"),
        pytest.param("77:2:2.4294967297.6.0*2", 77, 2, id="type beyond C int"),
        pytest.param("77:2:-2.1.6.0*2", 77, 2, id="negative family"),
    ],
)
def test_decode_rejects(value, pid, count):
    """A value that does not fit this process and fd count is ignored."""
    environ = {} if value is None else {_socket_env.VARIABLE: value}

    assert _socket_env.decode(environ, pid, count) is None


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(f"$PID:2:{UNIX_STREAM}*2", id="true"),
        pytest.param(f"$PID:2:{INET_STREAM}*2", id="false family"),
        pytest.param(f"$PID:3:{UNIX_STREAM}*3", id="false count"),
        pytest.param("garbage", id="malformed"),
    ],
)
def test_inherit_with_socket_spec(children, spec):
    """inherit() reports each socket's real family whatever FDPASS_SOCKETS says, and removes it."""
    env = {**listen_env("2", "a:b"), _socket_env.VARIABLE: spec}

    report = launch(children, env)

    assert report["error_type"] is None
    assert [entry["fd"] for entry in report["adopted"]] == [3, 4]
    assert [entry["kind"] for entry in report["adopted"]] == ["socket", "socket"]
    assert [entry["family"] for entry in report["adopted"]] == [socket.AF_UNIX, socket.AF_UNIX]
    assert [entry["type"] for entry in report["adopted"]] == [socket.SOCK_STREAM, socket.SOCK_STREAM]
    assert [entry["object"] for entry in report["adopted"]] == ["socket", "socket"]


@pytest.mark.parametrize("nonblocking", [False, True])
@pytest.mark.parametrize("builder", ["rebuild_sockets", "rebuild_columns"])
def test_batch_rebuild_default_timeout(builder, nonblocking):
    """With socket.setdefaulttimeout() set, batch rebuilds keep the fd's own O_NONBLOCK, as rebuild() does."""
    first, second = socket.socketpair()
    first.setblocking(not nonblocking)
    copy = os.dup(first.fileno())
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5.0)
    try:
        if builder == "rebuild_sockets":
            (rebuilt,) = rebuild.rebuild_sockets([copy], [socket.AF_UNIX], [socket.SOCK_STREAM], [0], [nonblocking])
        else:
            (rebuilt,) = rebuild.rebuild_columns(_native.inspect_columns([copy]))
    finally:
        socket.setdefaulttimeout(previous)

    with first, second, rebuilt:
        flags = fcntl.fcntl(first.fileno(), fcntl.F_GETFL)
        assert bool(flags & os.O_NONBLOCK) is nonblocking
        assert rebuilt.gettimeout() == (0.0 if nonblocking else None)


def test_rebuild_sockets_wrong_family_detaches():
    """A family that differs from the fd's raises ValueError and leaves the fd open."""
    first, second = socket.socketpair()
    copy = os.dup(first.fileno())

    with pytest.raises(ValueError, match="family"):
        rebuild.rebuild_sockets([copy], [socket.AF_INET], [socket.SOCK_STREAM], [0], [False])

    assert os.fstat(copy) is not None
    os.close(copy)
    first.close()
    second.close()
