"""One upgrade per test, run by tests/helpers/upgrade_cases.py with a NOTIFY_SOCKET bound here.

Each test checks what upgrade() returned or raised, what the service
manager received, and what fdpass logged at WARNING.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest
from conftest import HELPERS, Child, clean_environment

#: Seconds the helper may take to print its outcome.
OUTCOME_TIMEOUT = 30.0


def run_case(
    children, mode: str, child: str, *extra: str, inherited: dict[str, socket.socket] | None = None
) -> tuple[dict, list[str], Child]:
    """Run the helper; return its outcome, the first line of each datagram sent to NOTIFY_SOCKET, and its Child.

    inherited maps names to sockets that the helper inherits on fds 3, 4, ...
    with LISTEN_* set, as from a service manager.
    """
    name = f"fdpass-test-upgrade-outcome-{os.getpid()}-{os.urandom(4).hex()}"
    env = clean_environment({"NOTIFY_SOCKET": "@" + name})
    command = [HELPERS / "upgrade_cases.py", mode, child, *extra]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(b"\0" + name.encode())
        if inherited:
            sockets = list(inherited.values())
            config = {
                "layout": {str(3 + index): sock.fileno() for index, sock in enumerate(sockets)},
                "env": {"LISTEN_FDS": str(len(sockets)), "LISTEN_PID": "$PID", "LISTEN_FDNAMES": ":".join(inherited)},
            }
            process = children.python(
                HELPERS / "listen_launcher.py",
                json.dumps(config),
                sys.executable,
                *command,
                env=env,
                pass_fds=[sock.fileno() for sock in sockets],
            )
        else:
            process = children.python(*command, env=env)
        outcome = process.read_json(timeout=OUTCOME_TIMEOUT)

        # The helper printed its outcome after upgrade() ended, so every
        # datagram of that upgrade is already queued.
        notifications = queued_notifications(manager)
    return outcome, notifications, process


def queued_notifications(manager: socket.socket) -> list[str]:
    """Return the first line of each datagram queued on manager, without waiting for more."""
    manager.setblocking(False)
    notifications = []
    for _ in range(100):
        try:
            notifications.append(manager.recv(4096).decode().partition("\n")[0])
        except BlockingIOError:
            break
    return notifications


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


def test_unclaimed_inherited_socket_is_logged(children):
    """An inherited socket that listen() never returned is not passed on, and upgrade() logs it at INFO."""
    web = socket.create_server(("127.0.0.1", 0))
    other = socket.create_server(("127.0.0.1", 0))
    with web, other:
        outcome, _, _ = run_case(children, "wait", "ready", inherited={"web": web, "other": other})

    assert outcome["error"] is None
    assert "other" not in outcome["probe"]["names"]
    unpassed = [message for message in outcome["info"] if "does not pass inherited socket" in message]
    assert any("fd 4 (name 'other')" in message for message in unpassed), outcome["info"]
    assert all("listen() never returned it" in message for message in unpassed)


def test_fds_name_of_listener_rejected(children):
    """upgrade(fds=...) with a listener's name raises ValueError naming both, and starts nothing."""
    outcome, notifications, _ = run_case(children, "name-of-listener", "hang")

    assert outcome["error"].startswith("ValueError: upgrade not started: fd 'http' (<socket.socket ")
    assert "has the name of listener 'http' (<socket.socket " in outcome["error"]
    assert outcome["probe"] is None
    assert notifications == ["READY=1"]


def test_listener_passed_twice_names_it(children):
    """A listener passed again in fds raises UpgradeError naming that listener."""
    outcome, notifications, _ = run_case(children, "listener-twice", "hang")

    assert outcome["error"].startswith("UpgradeError: upgrade not started: fd 'admin' (<socket.socket ")
    assert "is passed twice: fd " in outcome["error"]
    assert "is also listener 'http' (<socket.socket " in outcome["error"]
    assert outcome["error"].endswith("every socket from listen() is passed already, so leave it out of fds")
    assert outcome["probe"] is None
    assert notifications == ["READY=1", "RELOADING=1", "READY=1"]
    assert len(outcome["warnings"]) == 1


SECOND_UPGRADER_AFTER_REEXEC_PROGRAM = r"""
import json, os, sys, time, fdpass
upgrader = fdpass.Upgrader(upgrade_timeout=20)
state = fdpass.inherited_state()
if state is None:
    upgrader.listen(("127.0.0.1", 0))
    upgrader.ready()
    new_pid = upgrader.upgrade(state=b"second")
    time.sleep(0.5)
    print(json.dumps({"new_pid": new_pid}), flush=True)
    sys.exit(0)
if state == b"second":
    upgrader.ready()
    upgrader.stop()
    fdpass.reexec(state=b"after reexec")
upgrader.stop()
second = fdpass.Upgrader()
second.ready()
second.wait_for_parent(timeout=20)
second.stop()
"""


def test_second_upgrader_after_reexec_sends_nothing(children):
    """After ready() and reexec(), a second Upgrader's ready() sends no READY=1 of its own, as without reexec()."""
    name = f"fdpass-test-second-upgrader-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(b"\0" + name.encode())
        child = children.python(
            "-c", SECOND_UPGRADER_AFTER_REEXEC_PROGRAM, env=clean_environment({"NOTIFY_SOCKET": "@" + name})
        )
        outcome = child.read_json(timeout=OUTCOME_TIMEOUT)
        status, _, stderr = child.finish()
        notifications = queued_notifications(manager)

    assert status == 0, stderr
    assert notifications == ["READY=1", "RELOADING=1", f"MAINPID={outcome['new_pid']}"]
