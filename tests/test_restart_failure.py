"""A failed exec raises OSError and leaves the program as it was, still serving."""

from __future__ import annotations

import errno
import os
import signal
import socket

import pytest


@pytest.fixture
def bad_executables(tmp_path):
    not_executable = tmp_path / "not-executable"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    not_executable.chmod(0o644)
    directory = tmp_path / "a-directory"
    directory.mkdir()
    return {
        str(tmp_path / "missing"): errno.ENOENT,
        str(not_executable): errno.EACCES,
        str(directory): errno.EACCES,
    }


@pytest.mark.parametrize("stdin_closed", [False, True], ids=["stdio-open", "stdin-closed"])
def test_exec_failure_keeps_serving(children, bad_executables, stdin_closed):
    """Each failed exec raises OSError naming the path, and fds, flags and signals stay as they were."""
    options = {"preexec_fn": lambda: os.close(0)} if stdin_closed else {}
    child = children.helper("exec_failure.py", *bad_executables, **options)
    report = child.read_json()

    with socket.create_connection(("127.0.0.1", report["port"]), timeout=15) as client:
        greeting = client.makefile("rb").readline().decode()
    checks = child.read_json()
    second = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert [attempt["executable"] for attempt in report["attempts"]] == list(bad_executables)
    for attempt in report["attempts"]:
        path = attempt["executable"]
        assert attempt["errno"] == bad_executables[path], attempt
        assert attempt["filename"] == path
        assert path in attempt["message"]
        assert attempt["state_kept"] is True, (report["before"], report["after"])
        assert attempt["listen_env"] == []
    assert report["after"] == report["before"]
    assert report["before"]["signals"]["SigBlk"] != "0000000000000000"
    assert greeting == f"alive {child.pid}\n"
    assert checks == {"pair": "pair works", "pipe": "pipe works"}
    assert second["pid"] == child.pid
    assert second["names"] == ["listener", "pair", "pipe"]
    # The successful exec kept SIGUSR1 blocked, since it had no handler, and
    # unblocked SIGUSR2, which had one.
    assert second["signals"]["SigBlk"] == f"{1 << (signal.SIGUSR1 - 1):016x}"


def test_listener_on_fd0_restored(children, bad_executables):
    """With stdin closed the listener is fd 0, and a failed exec puts it back there."""
    child = children.helper("exec_failure.py", *bad_executables, preexec_fn=lambda: os.close(0))
    report = child.read_json()
    with socket.create_connection(("127.0.0.1", report["port"]), timeout=15):
        pass
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["before"]["fds"]["0"][0].startswith("socket:")
    assert report["after"]["fds"]["0"] == report["before"]["fds"]["0"]
