"""One upgrade per test, run by tests/helpers/upgrade_cases.py with a NOTIFY_SOCKET bound here.

Each test checks what upgrade() returned or raised, what the service
manager received, and what fdpass logged at WARNING.
"""

from __future__ import annotations

import os
import socket

import pytest
from conftest import Child, clean_environment

#: Seconds the helper may take to print its outcome.
OUTCOME_TIMEOUT = 30.0


def run_case(children, mode: str, child: str, *extra: str) -> tuple[dict, list[str], Child]:
    """Run the helper; return its outcome, the first line of each datagram sent to NOTIFY_SOCKET, and its Child."""
    name = f"fdpass-test-upgrade-outcome-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(b"\0" + name.encode())
        process = children.helper(
            "upgrade_cases.py", mode, child, *extra, env=clean_environment({"NOTIFY_SOCKET": "@" + name})
        )
        outcome = process.read_json(timeout=OUTCOME_TIMEOUT)

        # The helper printed its outcome after upgrade() ended, so every
        # datagram of that upgrade is already queued.
        manager.setblocking(False)
        notifications = []
        for _ in range(100):
            try:
                notifications.append(manager.recv(4096).decode().partition("\n")[0])
            except BlockingIOError:
                break
    return outcome, notifications, process


@pytest.mark.parametrize(
    ("mode", "exception"), [("cancel", "CancelledError"), ("interrupt", "KeyboardInterrupt")]
)
def test_interrupted_upgrade_ends_reload(children, mode, exception):
    """Cancellation or KeyboardInterrupt kills the new generation, sends READY=1 and logs a warning."""
    outcome, notifications, _ = run_case(children, mode, "hang")

    assert outcome["outcome"] == "raised"
    assert outcome["error"].startswith(exception)
    assert outcome["probe"]["step"] == "hanging"
    assert outcome["reaped"] is True
    assert notifications == ["READY=1", "RELOADING=1", "READY=1"]
    assert len(outcome["warnings"]) == 1
    assert f"interrupted by {exception}" in outcome["warnings"][0]
    assert f"new generation PID {outcome['probe']['pid']} was killed" in outcome["warnings"][0]


def test_timed_out_upgrade_ends_reload(children):
    """A new generation that never calls ready() is killed at upgrade_timeout; READY=1 follows RELOADING=1."""
    outcome, notifications, _ = run_case(children, "wait", "hang", "0.5")

    assert outcome["outcome"] == "raised"
    assert "not ready within upgrade_timeout=0.5 s" in outcome["error"]
    assert outcome["reaped"] is True
    assert notifications == ["READY=1", "RELOADING=1", "READY=1"]
    assert len(outcome["warnings"]) == 1


@pytest.mark.parametrize("mode", ["wait", "async"])
def test_upgrade_with_huge_timeout(children, mode):
    """An upgrade_timeout beyond poll()'s int range of milliseconds waits for ready() as any other."""
    outcome, notifications, _ = run_case(children, mode, "ready", "3e6")

    assert outcome["error"] is None
    assert outcome["outcome"] == "returned"
    assert outcome["new_pid"] == outcome["probe"]["pid"]
    assert notifications[:2] == ["READY=1", "RELOADING=1"]
    assert notifications[2] == f"MAINPID={outcome['new_pid']}"
    assert outcome["warnings"] == []


def test_wait_for_parent_checks_timeout(children):
    """wait_for_parent() rejects malformed timeouts naming them, and waits with one beyond poll()'s range."""
    outcome, _, process = run_case(children, "wait", "parent-timeouts")
    results = outcome["probe"]["results"]

    assert results["'1'"] == (
        "TypeError: wait_for_parent() timeout must be a number of seconds >= 0, or None, not '1' (str)"
    )
    assert results["True"].startswith("TypeError: ")
    assert results["b'1'"].startswith("TypeError: ")
    assert results["float('nan')"] == (
        "ValueError: wait_for_parent() timeout must be a number of seconds >= 0, or None, not nan"
    )
    assert results["-1"].startswith("ValueError: ")
    assert "not -1" in results["-1"]
    assert results["0"] == "False"
    assert process.read_json(timeout=OUTCOME_TIMEOUT) == {"event": "parent-gone", "returned": True}


@pytest.mark.parametrize("mode", ["wait", "async"])
def test_stop_before_ready_fails_upgrade(children, mode):
    """stop() in the new generation before ready() ends the parent's upgrade() at once; the parent serves on."""
    outcome, notifications, _ = run_case(children, mode, "stop")
    new_pid = outcome["probe"]["pid"]

    assert outcome["outcome"] == "raised"
    assert outcome["error"] == (
        f"UpgradeError: new generation PID {new_pid} closed its readiness pipe before ready() "
        "(it called stop() or exited) and was killed"
    )
    assert outcome["new_pid"] == new_pid
    assert outcome["reaped"] is True
    assert outcome["serving"] is True
    assert notifications == ["READY=1", "RELOADING=1", "READY=1"]
    assert len(outcome["warnings"]) == 1


def test_second_upgrader_after_ready(children):
    """A second Upgrader after the first one's ready() and stop() can call ready(); the parent upgraded once."""
    outcome, notifications, _ = run_case(children, "wait", "second")

    assert outcome["error"] is None
    assert outcome["new_pid"] == outcome["probe"]["pid"]
    assert outcome["probe"]["error"] is None
    assert notifications == ["READY=1", "RELOADING=1", f"MAINPID={outcome['new_pid']}"]


def test_second_upgrader_after_stop(children):
    """After stop() before ready() closed the readiness pipe, a second Upgrader's ready() raises UpgradeError."""
    outcome, _, process = run_case(children, "wait", "second-after-stop", "1")

    assert outcome["outcome"] == "raised"
    assert outcome["probe"]["error"].startswith(
        f"UpgradeError: ready() cannot notify the previous generation (PID {process.pid}): "
    )
    assert "an earlier Upgrader's stop() in this process closed the readiness pipe before ready()" in (
        outcome["probe"]["error"]
    )
