"""sd_notify over NOTIFY_SOCKET, received on real datagram sockets."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from fdpass import notify


@pytest.fixture
def path_socket(tmp_path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a file path, and its NOTIFY_SOCKET value."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    with sock:
        yield sock, path


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a Linux abstract name, and its '@' NOTIFY_SOCKET value."""
    name = f"fdpass-test-notify-{os.getpid()}-{os.urandom(4).hex()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(10)
    with sock:
        yield sock, "@" + name


def test_ready_reaches_path_socket(path_socket):
    """READY=1 arrives as one datagram on a socket named by its path."""
    sock, value = path_socket

    sent = notify.ready(environ={notify.NOTIFY_SOCKET: value})

    assert sent is True
    assert sock.recv(4096) == b"READY=1\n"


def test_ready_reaches_abstract_socket(abstract_socket):
    """An '@' address reaches the abstract socket whose name follows the '@'."""
    sock, value = abstract_socket

    sent = notify.ready(environ={notify.NOTIFY_SOCKET: value})

    assert sent is True
    assert sock.recv(4096) == b"READY=1\n"


def test_reloading_carries_monotonic_usec(abstract_socket):
    """RELOADING=1 comes with MONOTONIC_USEC read from CLOCK_MONOTONIC at the call."""
    sock, value = abstract_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    notify.reloading(environ={notify.NOTIFY_SOCKET: value})
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    lines = sock.recv(4096).decode().splitlines()
    assert lines[0] == "RELOADING=1"
    key, _, usec = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after


def test_main_pid_sends_pid_and_ready(path_socket):
    """main_pid() sends MAINPID= and READY=1 in one datagram."""
    sock, value = path_socket

    notify.main_pid(4242, environ={notify.NOTIFY_SOCKET: value})

    assert sock.recv(4096) == b"MAINPID=4242\nREADY=1\n"


def test_notify_without_socket_returns_false():
    """Without NOTIFY_SOCKET, or with it empty, nothing is sent and notify() returns False."""
    assert notify.notify("READY=1", environ={}) is False
    assert notify.notify("READY=1", environ={notify.NOTIFY_SOCKET: ""}) is False


@pytest.mark.parametrize("value", ["relative/path", "vsock:2:1234", "@"])
def test_notify_rejects_unsupported_address(value):
    """An address that is neither absolute nor '@name' raises ValueError naming it."""
    with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
        notify.notify("READY=1", environ={notify.NOTIFY_SOCKET: value})


def test_notify_rejects_empty_abstract_name():
    """A bare '@' raises ValueError naming the missing abstract name."""
    with pytest.raises(ValueError, match="needs a character after '@'"):
        notify.notify("READY=1", environ={notify.NOTIFY_SOCKET: "@"})


@pytest.mark.parametrize("assignment", ["READY", "=1", "STATUS=two\nlines"])
def test_notify_rejects_malformed_assignment(assignment):
    """An assignment without KEY=, or with a newline, raises ValueError before anything is sent."""
    with pytest.raises(ValueError, match="KEY=VALUE"):
        notify.notify(assignment, environ={notify.NOTIFY_SOCKET: "/nonexistent"})


def test_notify_reports_missing_socket(tmp_path):
    """sendto() to a path where nothing listens raises OSError."""
    with pytest.raises(OSError):
        notify.ready(environ={notify.NOTIFY_SOCKET: str(tmp_path / "absent.sock")})
