"""One upgrade per test, run by tests/helpers/upgrade_cases.py with a NOTIFY_SOCKET bound here.

Each test checks what upgrade() returned or raised, what the service
manager received, and what fdpass logged at WARNING.
"""

from __future__ import annotations

import os
import socket

import pytest
from conftest import clean_environment

#: Seconds the helper may take to print its outcome.
OUTCOME_TIMEOUT = 30.0


def run_case(children, mode: str, child: str, *extra: str) -> tuple[dict, list[str]]:
    """Run the helper; return its outcome and the first line of each datagram sent to NOTIFY_SOCKET."""
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
    return outcome, notifications


@pytest.mark.parametrize(
    ("mode", "exception"), [("cancel", "CancelledError"), ("interrupt", "KeyboardInterrupt")]
)
def test_interrupted_upgrade_ends_reload(children, mode, exception):
    """Cancellation or KeyboardInterrupt kills the new generation, sends READY=1 and logs a warning."""
    outcome, notifications = run_case(children, mode, "hang")

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
    outcome, notifications = run_case(children, "wait", "hang", "0.5")

    assert outcome["outcome"] == "raised"
    assert "not ready within upgrade_timeout=0.5 s" in outcome["error"]
    assert outcome["reaped"] is True
    assert notifications == ["READY=1", "RELOADING=1", "READY=1"]
    assert len(outcome["warnings"]) == 1
