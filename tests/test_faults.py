"""Fault injection: reexec() under failures the kernel or the program can cause.

Each failure must leave the program running with every fd, fd flag and
signal setting as it was, so it can go on serving.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys

import pytest

import fdpass


def test_flush_output_survives_closed_stream(monkeypatch):
    """flush_output() skips a closed sys.stdout instead of raising, so reexec() goes on."""
    closed = open(os.devnull, "w")
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)

    fdpass.flush_output()


def start_and_connect(children, *args: str):
    """Start fault_restart.py with args, connect to its listener, and return (child, connection)."""
    child = children.helper("fault_restart.py", *args)
    port = child.read_json()["port"]
    client = socket.create_connection(("127.0.0.1", port), timeout=15)
    return child, client


def check_new_run(child, client) -> dict:
    """Check that the new run adopted both sockets, serves the listener and echoes on the connection."""
    second = child.read_json()
    with socket.create_connection(("127.0.0.1", client.getpeername()[1]), timeout=15) as visitor:
        greeting = visitor.makefile("rb").readline()
    client.sendall(b"echo me\n")
    echoed = client.makefile("rb").readline()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert second["run"] == "second"
    assert second["pid"] == child.pid
    assert second["names"] == ["conn", "listener"]
    assert second["signals"]["blocked"] == []
    assert greeting == b"alive\n"
    assert echoed == b"echo me\n"
    return second


def check_failed_attempt(attempt: dict, expected_errno: int) -> None:
    assert attempt.get("error") is None, attempt
    assert attempt["error_type"] == "OSError", attempt
    assert attempt["errno"] == expected_errno, attempt["message"]
    assert attempt["filename"] == sys.executable, attempt["message"]
    assert attempt["after"] == attempt["before"]


@pytest.mark.parametrize("free", [0, 1])
def test_emfile_restores_everything(children, free):
    """At the fd limit the moves fail with EMFILE, everything is restored, and a later restart works."""
    child, client = start_and_connect(children, "emfile", str(free))
    with client:
        attempt = child.read_json()
        full = child.read_json()
        check_failed_attempt(attempt, errno.EMFILE)
        assert full["full_after"] == full["full_before"]
        second = check_new_run(child, client)

    assert second["fds"] == [0, 1, 2, 3, 4]


def test_e2big_restores_everything(children):
    """An environment too large for execve raises E2BIG with everything restored, and a later restart works."""
    child, client = start_and_connect(children, "e2big")
    with client:
        attempt = child.read_json()
        check_failed_attempt(attempt, errno.E2BIG)
        assert f"the largest is 'FDPASS_FAULT_HUGE' with {len('FDPASS_FAULT_HUGE=') + 256 * 1024} bytes" in (
            attempt["message"]
        )
        second = check_new_run(child, client)

    assert second["fds"] == [0, 1, 2, 3, 4]


def test_reexec_from_signal_handler(children):
    """reexec() in a SIGHUP handler, run while the main thread waits in accept(), restarts cleanly."""
    child, client = start_and_connect(children, "signal")
    with client:
        assert child.read_json() == {"waiting": "SIGHUP"}
        os.kill(child.pid, signal.SIGHUP)
        second = check_new_run(child, client)

    assert second["fds"] == [0, 1, 2, 3, 4]


def test_reexec_with_threads_blocked(children):
    """reexec() while other threads wait in accept() and recv() on the passed sockets loses nothing."""
    child, client = start_and_connect(children, "threads")
    with client:
        assert child.read_json() == {"blocked": ["S", "S"]}
        second = check_new_run(child, client)

    assert second["fds"] == [0, 1, 2, 3, 4]
