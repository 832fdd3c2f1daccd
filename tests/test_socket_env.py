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
    assert value == f"1234:5:{tcp}.0*3,{udp}.0*1,{udp}.1/2.5*1"


def test_encode_blocking_modes():
    """A blocking socket gets 0, a non-blocking one 1, and one with a timeout 1 and its seconds."""
    sockets = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(4)]
    sockets[1].setblocking(False)
    sockets[2].settimeout(2.5)
    sockets[3].settimeout(None)
    try:
        value = _socket_env.encode(sockets, 1234)
    finally:
        for sock in sockets:
            sock.close()

    assert value == f"1234:4:{UNIX_STREAM}*1,{UNIX_STREAM[:-1]}1*1,{UNIX_STREAM[:-1]}1/2.5*1,{UNIX_STREAM}*1"


def test_encode_marks_undescribed_fds():
    """An int, a file or None in the list gets a "-" run, and a list without a socket gets no variable."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert _socket_env.encode([sock, 0, None], 1234) == f"1234:3:{UNIX_STREAM}*1,-*2"
        assert _socket_env.encode([0, sock], 1234) == f"1234:2:-*1,{UNIX_STREAM}*1"
        assert _socket_env.encode([0, None], 1234) is None
        assert _socket_env.encode([], 1234) is None
    finally:
        sock.close()


def test_encode_for_child():
    """child=True marks the PID as the parent's, for a child whose PID is not known yet."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        value = _socket_env.encode([sock], 1234, child=True)
    finally:
        sock.close()

    assert value == f"^1234:1:{UNIX_STREAM}*1"


@pytest.mark.parametrize("seconds", [2.5, 0.134, 1e-06, 86400.000001, 7.0])
def test_timeout_round_trip(seconds):
    """A socket rebuilt from encode() and decode() has the gettimeout() of the original."""
    first, second = socket.socketpair()
    first.settimeout(seconds)
    environ = {_socket_env.VARIABLE: _socket_env.encode([first], 77)}
    families, types, protocols, timeouts = _socket_env.decode(environ, 77, 1, 1)
    copy = os.dup(first.fileno())

    (rebuilt,) = rebuild.rebuild_sockets([copy], families, types, protocols, timeouts)

    with first, second, rebuilt:
        assert rebuilt.gettimeout() == first.gettimeout()


def test_decode_round_trip():
    """decode() expands the runs that encode() wrote."""
    environ = {_socket_env.VARIABLE: "77:3:2.1.6.0*2,10.2.17.1*1"}

    assert _socket_env.decode(environ, 77, 1, 3) == ([2, 2, 10], [1, 1, 2], [6, 6, 17], [None, None, 0.0])


def test_decode_timeouts_and_undescribed_fds():
    """A "/seconds" suffix gives the timeout, and a "-" run gives family, type and protocol -1."""
    environ = {_socket_env.VARIABLE: "77:4:2.1.6.1/2.5*2,-*1,1.1.0.1/1e-05*1"}

    assert _socket_env.decode(environ, 77, 1, 4) == (
        [2, 2, -1, 1], [1, 1, -1, 1], [6, 6, -1, 0], [2.5, 2.5, None, 1e-05]
    )


def test_decode_for_child():
    """A value marked with ^ is for a child of that PID, so it matches the parent PID, not this one."""
    environ = {_socket_env.VARIABLE: "^5:1:2.1.6.1/2.5*1"}

    assert _socket_env.decode(environ, 77, 5, 1) == ([2], [1], [6], [2.5])
    assert _socket_env.decode(environ, 5, 1, 1) is None


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
        pytest.param("77:2:2.1.6.0/2.5*2", 77, 2, id="timeout on a blocking socket"),
        pytest.param("77:2:2.1.6.1/*2", 77, 2, id="empty timeout"),
        pytest.param("77:2:2.1.6.1/0*2", 77, 2, id="zero timeout"),
        pytest.param("77:2:2.1.6.1/-2.5*2", 77, 2, id="negative timeout"),
        pytest.param("77:2:2.1.6.1/nan*2", 77, 2, id="NaN timeout"),
        pytest.param("77:2:2.1.6.1/inf*2", 77, 2, id="infinite timeout"),
        pytest.param("77:2:2.1.6.1/1e300*2", 77, 2, id="timeout beyond int64 nanoseconds"),
        pytest.param("77:2:2.1.6.1/2.5/3*2", 77, 2, id="two timeouts"),
        pytest.param("77:2:2.1.6.1/x*2", 77, 2, id="timeout not a number"),
        pytest.param("77:2:-*2", 77, 2, id="no fd described"),
        pytest.param("77:2:-.1*2", 77, 2, id="dash with fields"),
        pytest.param("^78:2:2.1.6.0*2", 77, 2, id="other parent"),
        pytest.param("^77:2:2.1.6.0*2", 77, 2, id="own PID marked as parent"),
        pytest.param("^:2:2.1.6.0*2", 77, 2, id="mark without PID"),
    ],
)
def test_decode_rejects(value, pid, count):
    """A value that does not fit this process and fd count is ignored."""
    environ = {} if value is None else {_socket_env.VARIABLE: value}

    assert _socket_env.decode(environ, pid, 1, count) is None


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


@pytest.mark.parametrize(
    "spec, nonblocking, timeouts",
    [
        pytest.param(f"$PID:2:{UNIX_STREAM[:-1]}1/2.5*2", True, [2.5, 2.5], id="timeout"),
        pytest.param(f"$PID:2:{UNIX_STREAM[:-1]}1/2.5*2", False, [None, None], id="timeout on blocking fds"),
        pytest.param(f"$PID:2:{UNIX_STREAM}*2", False, [None, None], id="blocking"),
        pytest.param(f"$PID:2:{UNIX_STREAM[:-1]}1/2.5*1,-*1", False, [None, None], id="timeout without O_NONBLOCK"),
        pytest.param(f"$PID:2:{UNIX_STREAM[:-1]}1/x*2", False, [None, None], id="malformed timeout"),
    ],
)
def test_inherit_socket_spec_timeouts(children, spec, nonblocking, timeouts):
    """inherit() gives the written timeout to an fd with O_NONBLOCK, and the kernel's blocking mode otherwise.

    With a "-" run, or a timeout written for a blocking fd, inherit() reads
    the fds from the kernel, and a blocking fd keeps timeout None.
    """
    env = {**listen_env("2", "a:b"), _socket_env.VARIABLE: spec}

    report = launch(children, env, nonblocking=nonblocking)

    assert report["error_type"] is None
    assert [entry["timeout"] for entry in report["adopted"]] == timeouts


def test_restore_timeouts_checks_the_kernel():
    """Only a socket whose fd has O_NONBLOCK and the given family and type gets its timeout."""
    pairs = [socket.socketpair() for _ in range(4)]
    for first, _ in pairs[1:]:
        first.setblocking(False)
    copies = [os.dup(first.fileno()) for first, _ in pairs]
    columns = _native.inspect_columns(copies)
    rebuilt = rebuild.rebuild_columns(columns)
    families = [socket.AF_UNIX, socket.AF_UNIX, socket.AF_INET, socket.AF_UNIX]
    types = [socket.SOCK_STREAM, socket.SOCK_STREAM, socket.SOCK_STREAM, socket.SOCK_DGRAM]

    rebuild.restore_timeouts(rebuilt, columns, families, types, [2.5] * 4)

    timeouts = [sock.gettimeout() for sock in rebuilt]
    for sock in rebuilt:
        sock.close()
    for first, second in pairs:
        first.close()
        second.close()
    assert timeouts == [None, 2.5, 0.0, 0.0]


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
            (rebuilt,) = rebuild.rebuild_sockets(
                [copy], [socket.AF_UNIX], [socket.SOCK_STREAM], [0], [0.0 if nonblocking else None]
            )
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
        rebuild.rebuild_sockets([copy], [socket.AF_INET], [socket.SOCK_STREAM], [0], [None])

    assert os.fstat(copy) is not None
    os.close(copy)
    first.close()
    second.close()


def test_timeout_for_blocking_fd_rejected():
    """A timeout given for an fd without O_NONBLOCK raises ValueError and leaves the fd blocking and open."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        fd = listener.fileno()

        with pytest.raises(ValueError, match=f"fd {fd} is blocking"):
            rebuild.rebuild_sockets([fd], [socket.AF_INET], [socket.SOCK_STREAM], [socket.IPPROTO_TCP], [5.0])

        assert os.get_blocking(fd)
        assert listener.getsockname()[0] == "127.0.0.1"
