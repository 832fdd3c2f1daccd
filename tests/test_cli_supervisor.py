"""``fdpass run --restart-on``: the supervisor's restarts, failures, signals and exit status."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from conftest import HELPERS, zombie_or_gone
from loadgen import group_is_gone, wait_until

pytestmark = pytest.mark.timeout(60)


def start_supervisor(children, tmp_path, *modes: str, options: tuple[str, ...] = ()):
    return children.start([
        sys.executable, "-m", "fdpass", "-v", "run",
        "--listen", "web=127.0.0.1:0", "--listen", "ctl=unix:" + str(tmp_path / "ctl.sock"),
        "--restart-on", "USR2", "--stop-timeout", "5", *options,
        "--", sys.executable, str(HELPERS / "supervised_child.py"), str(tmp_path / "counter"), *modes,
    ])


def pid_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); its state in /proc says it has exited.
    return zombie_or_gone(pid)


def wait_for_log(supervisor, text: str, count: int = 1) -> None:
    wait_until(
        lambda: supervisor.stderr_text().count(text) >= count,
        20,
        lambda: f"{text!r} not logged {count} times; stderr:\n{supervisor.stderr_text()[-3000:]}",
    )


def test_child_gets_own_listen_pid(children, tmp_path, seen_groups):
    """Each child gets LISTEN_PID equal to its own PID, the names, NOTIFY_SOCKET and its own process group."""
    supervisor = start_supervisor(children, tmp_path, "ready")
    first = supervisor.read_json()
    seen_groups.add(first["pgid"])
    wait_for_log(supervisor, "is ready (READY=1")
    supervisor.popen.send_signal(signal.SIGUSR2)
    second = supervisor.read_json()
    seen_groups.add(second["pgid"])
    wait_for_log(supervisor, f"old PID {first['pid']} exited with status 0")

    for report in (first, second):
        assert report["listen_pid"] == str(report["pid"])
        assert report["listen_fds"] == "2"
        assert report["listen_fdnames"] == "web:ctl"
        assert report["notify_socket"].startswith("@fdpass-")
        assert report["fd3_listening"] is True
        assert report["pgid"] == report["pid"]
    assert second["pid"] != first["pid"]

    supervisor.popen.send_signal(signal.SIGTERM)
    assert supervisor.wait() == 0


def test_failed_restart_keeps_old_child(children, tmp_path, seen_groups):
    """A new child that exits before READY=1 is logged as a failed restart, and the old one keeps running."""
    supervisor = start_supervisor(children, tmp_path, "ready", "exit:5", "ready")
    first = supervisor.read_json()
    seen_groups.add(first["pgid"])
    wait_for_log(supervisor, "is ready (READY=1")

    supervisor.popen.send_signal(signal.SIGUSR2)
    failed = supervisor.read_json()
    wait_for_log(supervisor, f"restart failed: new PID {failed['pid']} exited with status 5")
    assert not pid_is_gone(first["pid"])

    supervisor.popen.send_signal(signal.SIGUSR2)
    third = supervisor.read_json()
    seen_groups.add(third["pgid"])
    wait_for_log(supervisor, f"old PID {first['pid']} exited with status 0")

    supervisor.popen.send_signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert f"restart complete: PID {third['pid']}" in supervisor.stderr_text()


def test_ready_timeout_stops_new_child(children, tmp_path, seen_groups):
    """A new child that sends no READY=1 within --ready-timeout is stopped, and the old one keeps running."""
    supervisor = start_supervisor(children, tmp_path, "ready", "silent", options=("--ready-timeout", "0.5"))
    first = supervisor.read_json()
    seen_groups.add(first["pgid"])
    wait_for_log(supervisor, "is ready (READY=1")

    supervisor.popen.send_signal(signal.SIGUSR2)
    silent = supervisor.read_json()
    seen_groups.add(silent["pgid"])
    wait_for_log(supervisor, f"new PID {silent['pid']} sent no READY=1 within 0.5 s")
    wait_until(lambda: pid_is_gone(silent["pid"]), 20, lambda: f"PID {silent['pid']} still runs")
    assert not pid_is_gone(first["pid"])
    wait_for_log(supervisor, f"new PID {silent['pid']}, stopped before it served, exited with status")
    assert f"old PID {silent['pid']}" not in supervisor.stderr_text()

    supervisor.popen.send_signal(signal.SIGTERM)
    assert supervisor.wait() == 0


def test_ready_after_seconds(children, tmp_path, seen_groups):
    """With --ready SECONDS, a child that sends nothing counts as ready once it has run that long."""
    supervisor = start_supervisor(children, tmp_path, "silent", options=("--ready", "0.2"))
    first = supervisor.read_json()
    seen_groups.add(first["pgid"])
    # A restart signal before the first child is ready would be ignored.
    wait_for_log(supervisor, f"PID {first['pid']} is ready (still running after 0.2 s)")
    supervisor.popen.send_signal(signal.SIGUSR2)
    second = supervisor.read_json()
    seen_groups.add(second["pgid"])

    wait_for_log(supervisor, f"restart complete: PID {second['pid']} is ready (still running after 0.2 s)")
    wait_for_log(supervisor, f"old PID {first['pid']} exited with status 0")
    supervisor.popen.send_signal(signal.SIGTERM)
    assert supervisor.wait() == 0


def test_exit_status_of_child(children, tmp_path, seen_groups):
    """When the child exits on its own, fdpass run exits with the child's status."""
    supervisor = start_supervisor(children, tmp_path, "exit:7")
    report = supervisor.read_json()
    seen_groups.add(report["pgid"])

    assert supervisor.wait() == 7


def test_signal_status_of_child(children, tmp_path, seen_groups):
    """A child ended by SIGKILL makes fdpass run exit with 128 + 9."""
    supervisor = start_supervisor(children, tmp_path, "silent")
    report = supervisor.read_json()
    seen_groups.add(report["pgid"])
    os.kill(report["pid"], signal.SIGKILL)

    assert supervisor.wait() == 128 + signal.SIGKILL


def test_orphans_are_reaped(children, tmp_path, seen_groups):
    """A process that the child left behind is ended and reaped before fdpass run exits."""
    supervisor = start_supervisor(children, tmp_path, "orphan:3")
    report = supervisor.read_json()
    seen_groups.add(report["pgid"])

    assert supervisor.wait() == 3
    assert pid_is_gone(report["orphan"])
    assert f"PID {report['orphan']}, left behind by a child, still runs" in supervisor.stderr_text()


def test_children_die_with_supervisor(children, tmp_path, seen_groups):
    """SIGKILL to the supervisor ends its child through PR_SET_PDEATHSIG."""
    supervisor = start_supervisor(children, tmp_path, "ready")
    report = supervisor.read_json()
    seen_groups.add(report["pgid"])
    wait_for_log(supervisor, "is ready (READY=1")

    supervisor.popen.send_signal(signal.SIGKILL)
    supervisor.wait()
    wait_until(lambda: group_is_gone(report["pgid"]), 20, lambda: f"group {report['pgid']} still runs")


def test_restart_while_starting_is_ignored(children, tmp_path, seen_groups):
    """A restart signal while a new child is still starting is logged and ignored."""
    supervisor = start_supervisor(children, tmp_path, "ready", "silent", options=("--ready-timeout", "30"))
    first = supervisor.read_json()
    seen_groups.add(first["pgid"])
    wait_for_log(supervisor, "is ready (READY=1")
    supervisor.popen.send_signal(signal.SIGUSR2)
    starting = supervisor.read_json()
    seen_groups.add(starting["pgid"])
    time.sleep(0.1)

    supervisor.popen.send_signal(signal.SIGUSR2)
    wait_for_log(supervisor, f"while PID {starting['pid']} is still starting; ignored")
    supervisor.popen.send_signal(signal.SIGTERM)
    assert supervisor.wait() == 0


def test_restart_before_first_ready_ignored(children, tmp_path, seen_groups):
    """A restart signal before the first child is ready is logged and ignored, and starts no second child."""
    supervisor = start_supervisor(children, tmp_path, "silent", "ready")
    first = supervisor.read_json()
    seen_groups.add(first["pgid"])

    supervisor.popen.send_signal(signal.SIGUSR2)
    wait_for_log(supervisor, f"while PID {first['pid']} is still starting; ignored")
    supervisor.popen.send_signal(signal.SIGTERM)
    assert supervisor.wait() == 0

    # supervised_child.py appends one byte to the counter file per child started.
    assert (tmp_path / "counter").read_text() == "x"
    assert "restart requested by SIGUSR2" not in supervisor.stderr_text()


def test_sigterm_is_forwarded(children, tmp_path, seen_groups):
    """SIGTERM to fdpass run reaches the child, which exits 0, and fdpass exits 0."""
    supervisor = start_supervisor(children, tmp_path, "ready")
    report = supervisor.read_json()
    seen_groups.add(report["pgid"])
    wait_for_log(supervisor, "is ready (READY=1")

    supervisor.popen.send_signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert f"SIGTERM received; forwarding it to PIDs {report['pid']}" in supervisor.stderr_text()
    assert pid_is_gone(report["pid"])


def test_missing_command_under_supervisor(children):
    """--restart-on with a command missing from PATH exits 127 before anything starts."""
    supervisor = children.start([
        sys.executable, "-m", "fdpass", "run", "-l", "127.0.0.1:0", "--restart-on", "HUP",
        "--", "fdpass-no-such-command",
    ])
    status, _, stderr = supervisor.finish()

    assert status == 127
    assert "not found in PATH" in stderr


@pytest.mark.parametrize("value", ["KILL", "TERM", "NOPE", "99"])
def test_bad_restart_signal(children, value):
    """--restart-on rejects signals it cannot catch or already uses, and unknown ones, with exit 2."""
    supervisor = children.start([sys.executable, "-m", "fdpass", "run", "-l", "127.0.0.1:0",
                                 "--restart-on", value, "--", "true"])
    status, _, stderr = supervisor.finish()

    assert status == 2
    assert "--restart-on" in stderr


def test_sighup_is_forwarded_when_not_restart_signal(children, tmp_path, seen_groups):
    """With --restart-on USR2, SIGHUP stops the child like SIGTERM instead of killing fdpass."""
    supervisor = start_supervisor(children, tmp_path, "ready")
    report = supervisor.read_json()
    seen_groups.add(report["pgid"])
    wait_for_log(supervisor, "is ready (READY=1")

    supervisor.popen.send_signal(signal.SIGHUP)
    assert supervisor.wait() == 0
    assert f"SIGHUP received; forwarding it to PIDs {report['pid']}" in supervisor.stderr_text()


def test_stop_timeout_sends_sigkill(children, tmp_path, seen_groups):
    """An old child that ignores SIGTERM gets SIGKILL after --stop-timeout, and the new one serves."""
    supervisor = start_supervisor(children, tmp_path, "stubborn", "ready", options=("--stop-timeout", "0.5"))
    first = supervisor.read_json()
    seen_groups.add(first["pgid"])
    wait_for_log(supervisor, "is ready (READY=1")

    supervisor.popen.send_signal(signal.SIGUSR2)
    second = supervisor.read_json()
    seen_groups.add(second["pgid"])
    wait_for_log(supervisor, f"PID {first['pid']} still runs 0.5 s after SIGTERM; sending SIGKILL")
    wait_for_log(supervisor, f"old PID {first['pid']} exited with status {128 + signal.SIGKILL}")
    assert not pid_is_gone(second["pid"])

    supervisor.popen.send_signal(signal.SIGTERM)
    assert supervisor.wait() == 0
