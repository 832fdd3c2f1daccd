"""A program started by systemd-socket-activate finds its socket through fdpass."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest
from conftest import HELPERS

ACTIVATE = "/usr/bin/systemd-socket-activate"

pytestmark = pytest.mark.skipif(not os.access(ACTIVATE, os.X_OK), reason=f"{ACTIVATE} is not installed")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ask(port: int, request: str, attempts: int = 1) -> str:
    """Send one line to 127.0.0.1:port and return the reply line, retrying refused connections."""
    for attempt in range(attempts):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=15) as client:
                client.sendall(f"{request}\n".encode())
                return client.makefile("rb").readline().decode().strip()
        except ConnectionRefusedError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("order", ["inherit-first", "listen-first"])
def test_activated_program_finds_socket_by_name(children, order):
    """inherit()["web"] is the activated listener, listen() returns it, and it survives reexec()."""
    port = free_port()
    server = [sys.executable, str(HELPERS / "activated_server.py"), str(port), order]
    child = children.start([ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=web", *server])

    # systemd-socket-activate binds first and executes the program on the
    # first connection, so connections are refused only until it has bound.
    first_reply = ask(port, "hello", attempts=200)
    first = child.read_json()
    second_reply = ask(port, "again")
    second = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert first["pid"] == second["pid"] == child.pid
    assert first["descriptions"] == [[3, "web", "socket", socket.AF_INET, socket.SOCK_STREAM, True]]
    assert first["inherit_by_name"] == 3
    assert first["listen_is_inherited"] is True
    assert first["sockname"] == ["127.0.0.1", port]
    assert first_reply == f"hello first {child.pid}"
    assert second["descriptions"] == [[3, "web", "socket", socket.AF_INET, socket.SOCK_STREAM, True]]
    assert second["listen_is_inherited"] is True
    assert second_reply == f"again second {child.pid}"
