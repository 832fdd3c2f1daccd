"""fdpass_spawn(): the C helper that starts a child with fds on 3, 4, ... in one call."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sys
import threading
import time
import warnings

import pytest
from conftest import child_pids

from fdpass import _native

HELPERS = os.path.join(os.path.dirname(__file__), "helpers")
REPORT = os.path.join(HELPERS, "report_spawn.py")

SIGPIPE_BIT = 1 << (signal.SIGPIPE - 1)
SIGUSR1_BIT = 1 << (signal.SIGUSR1 - 1)
SIGHUP_BIT = 1 << (signal.SIGHUP - 1)



def reap(pid: int, timeout: float = 20.0) -> int:
    """Return the exit status of child pid, killing it if it outlives timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    raise AssertionError(f"spawned child {pid} still ran after {timeout} s; killed it")


def spawn_report(passed: list[int], env: dict[str, str] | None = None, **options: bool) -> dict:
    """Spawn the report helper with the pipe's write end plus passed, and return its report.

    The write end of the report pipe is the first passed fd, so it lands on 3.
    """
    read_end, write_end = os.pipe()
    environ = {"PATH": os.environ.get("PATH", ""), **(env or {})}
    envp = [f"{key}={value}".encode() for key, value in environ.items()]
    argv = [sys.executable.encode(), REPORT.encode()]
    try:
        pid = _native.spawn_with_fds(sys.executable.encode(), argv, envp, [write_end, *passed], **options)
    finally:
        os.close(write_end)

    try:
        with os.fdopen(read_end, "rb") as stream:
            data = stream.read()
    finally:
        status = reap(pid)
    assert status == 0, f"report helper exited with {status}"
    report = json.loads(data)
    report["fds"] = {int(fd): info for fd, info in report["fds"].items()}
    report["spawned_pid"] = pid
    return report


def test_spawn_places_fds_in_order():
    """Passed fds arrive on 3, 4, ... in order, open across execve, pointing at the same files."""
    a, b = socket.socketpair()
    read_end, write_end = os.pipe()
    try:
        expected = [os.readlink(f"/proc/self/fd/{fd}") for fd in (b.fileno(), read_end, a.fileno())]

        report = spawn_report([b.fileno(), read_end, a.fileno()])
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        a.close()
        b.close()

    for offset, target in enumerate(expected):
        fd = 4 + offset
        assert report["fds"][fd]["target"] == target
        assert report["fds"][fd]["inheritable"] is True


def test_spawn_handles_overlapping_targets(children):
    """fds that sit on each other's target slots are moved in a chain, and one stays in place."""
    child = children.helper("spawn_overlap.py")

    result = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert result["status"] == 0
    for slot, target in result["expected"].items():
        assert result["report"]["fds"][slot]["target"] == target, f"fd {slot}"
        assert result["report"]["fds"][slot]["inheritable"] is True, f"fd {slot}"


def test_spawn_keeps_unpassed_fds_from_child():
    """An inheritable fd that was not passed is closed by execve in the child."""
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, True)
    os.set_inheritable(write_end, True)
    leaked_target = os.readlink(f"/proc/self/fd/{read_end}")
    try:
        report = spawn_report([])
    finally:
        os.close(read_end)
        os.close(write_end)

    targets = [info["target"] for fd, info in report["fds"].items() if fd > 3]
    assert leaked_target not in targets
    assert sorted(fd for fd in report["fds"] if fd <= 3) == [0, 1, 2, 3]


def test_spawn_sets_child_listen_pid():
    """LISTEN_PID names the child itself, replacing any LISTEN_PID the caller had."""
    report = spawn_report([], env={"LISTEN_PID": "1", "LISTEN_FDS": "1", "MARKER": "kept"})

    assert report["env"]["LISTEN_PID"] == str(report["spawned_pid"])
    assert report["env"]["LISTEN_PID"] == str(report["pid"])
    assert report["env"]["LISTEN_FDS"] == "1"
    assert report["env"]["MARKER"] == "kept"


def test_spawn_without_listen_pid_keeps_environment():
    """Without set_listen_pid, envp reaches the child unchanged."""
    report = spawn_report([], env={"LISTEN_PID": "1"}, set_listen_pid=False)

    assert report["env"]["LISTEN_PID"] == "1"


def test_spawn_resets_signal_mask_and_dispositions():
    """The child starts with an empty mask, default SIGPIPE and USR1, and an ignored SIGHUP still ignored."""
    old_usr1 = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    try:
        report = spawn_report([])
        mask_after = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGUSR1, old_usr1)
        signal.signal(signal.SIGHUP, old_hup)

    assert report["signals"]["SigBlk"] == 0
    # CPython in the child ignores SIGPIPE again itself, so check that it did
    # not inherit a caught SIGUSR1 and that SIGHUP stays ignored.
    assert report["signals"]["SigCgt"] & SIGUSR1_BIT == 0
    assert report["signals"]["SigIgn"] & SIGHUP_BIT
    assert mask_after == {signal.SIGUSR1, signal.SIGTERM} | set(old_mask)


def test_spawn_resets_ignored_sigpipe():
    """SIGPIPE, which CPython ignores, reaches a non-Python child as SIG_DFL."""
    read_end, write_end = os.pipe()
    envp = [b"PATH=" + os.environ.get("PATH", "").encode()]
    try:
        pid = _native.spawn_with_fds(
            b"/bin/sh", [b"sh", b"-c", b"grep SigIgn /proc/self/status >&3"], envp, [write_end]
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as stream:
        line = stream.read().decode()
    assert reap(pid) == 0

    ignored = int(line.split(":")[1].strip(), 16)
    assert ignored & SIGPIPE_BIT == 0


def test_spawn_reports_exec_failure():
    """A failed execve raises OSError with its errno and the path, and leaves no child."""
    before = child_pids()

    with pytest.raises(OSError) as caught:
        _native.spawn_with_fds(b"/nonexistent/fdpass-test", [b"x"], [], [])

    assert caught.value.errno == errno.ENOENT
    assert caught.value.filename == "/nonexistent/fdpass-test"
    assert child_pids() == before


def test_spawn_rejects_closed_and_repeated_fds():
    """A closed or repeated fd raises SpawnFdError naming its index, before any child starts."""
    read_end, write_end = os.pipe()
    os.close(write_end)
    try:
        with pytest.raises(_native.SpawnFdError) as closed:
            _native.spawn_with_fds(b"/bin/true", [b"true"], [], [read_end, write_end])
        with pytest.raises(_native.SpawnFdError) as repeated:
            _native.spawn_with_fds(b"/bin/true", [b"true"], [], [read_end, read_end])
    finally:
        os.close(read_end)

    assert (closed.value.errno, closed.value.index) == (errno.EBADF, 1)
    assert (repeated.value.errno, repeated.value.index) == (errno.EINVAL, 1)


def test_spawn_from_busy_threads_warns_nothing():
    """Spawning while threads run raises no warning and does not hang.

    On Python 3.12 and later, os.fork() in this situation issues a
    DeprecationWarning that the record below would catch.
    """
    stop = threading.Event()
    counters = [0] * 4

    def spin(index: int) -> None:
        while not stop.is_set():
            counters[index] += 1
            os.getpid()

    threads = [threading.Thread(target=spin, args=(index,), daemon=True) for index in range(len(counters))]
    for thread in threads:
        thread.start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pids = [_native.spawn_with_fds(b"/bin/true", [b"true"], [], []) for _ in range(20)]
            statuses = [reap(pid) for pid in pids]
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)

    assert statuses == [0] * 20
    assert [str(w.message) for w in caught] == []
    assert all(counters)

