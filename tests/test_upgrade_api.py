"""fdpass.Upgrader in the test process itself: argument checks, states that refuse an upgrade, state handoff."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import socket
import tempfile
import threading
import warnings

import pytest
from conftest import child_pids

import fdpass
from fdpass import _native, rebuild, state, upgrade


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), pytest.param(10**400, id="int-beyond-float")])
def test_upgrader_rejects_bad_timeout(timeout):
    """A timeout that is not a positive, finite number of seconds raises ValueError naming it."""
    with pytest.raises(ValueError, match="upgrade_timeout"):
        fdpass.Upgrader(upgrade_timeout=timeout)


@pytest.mark.parametrize("timeout", [1e300, 3e6, 2**40])
def test_upgrader_accepts_huge_timeout(timeout):
    """A finite upgrade_timeout beyond poll()'s range of milliseconds is accepted as is."""
    with fdpass.Upgrader(upgrade_timeout=timeout) as upgrader:
        assert upgrader.upgrade_timeout == float(timeout)


@pytest.mark.parametrize(
    ("timeout", "error"),
    [("1", TypeError), (True, TypeError), (b"1", TypeError), (float("nan"), ValueError), (-1, ValueError)],
)
def test_wait_exit_rejects_bad_timeout(timeout, error):
    """wait_exit() raises TypeError or ValueError naming a timeout that is not seconds >= 0 or None."""
    with fdpass.Upgrader() as upgrader:
        with pytest.raises(error, match="wait_exit\\(\\) timeout") as caught:
            upgrader.wait_exit(timeout)

    assert repr(timeout) in str(caught.value)


@pytest.mark.parametrize("timeout", [1e300, float("inf"), None])
def test_wait_exit_huge_timeout_waits(timeout):
    """wait_exit() with a timeout beyond threading.TIMEOUT_MAX, or none, waits until stop()."""
    with fdpass.Upgrader() as upgrader:
        assert upgrader.wait_exit(0) is False
        assert upgrader.wait_exit(0.01) is False
        stopper = threading.Timer(0.05, upgrader.stop)
        stopper.start()
        try:
            assert upgrader.wait_exit(timeout) is True
        finally:
            stopper.cancel()
            stopper.join(10)


def test_upgrader_rejects_bad_types():
    """A non-numeric timeout or a non-path pid_file raises TypeError."""
    with pytest.raises(TypeError, match="upgrade_timeout"):
        fdpass.Upgrader(upgrade_timeout="5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pid_file"):
        fdpass.Upgrader(pid_file=3)  # type: ignore[arg-type]


def test_upgrade_before_ready_starts_nothing():
    """upgrade() before ready() raises UpgradeError and starts no process."""
    before = child_pids()

    with fdpass.Upgrader() as upgrader:
        with pytest.raises(fdpass.UpgradeError, match="ready\\(\\)") as caught:
            upgrader.upgrade()

    assert caught.value.pid is None
    assert child_pids() == before


def test_upgrade_in_forked_child_refused():
    """upgrade() in a child forked from the generation raises UpgradeError naming both PIDs."""
    read_end, write_end = os.pipe()
    with fdpass.Upgrader() as upgrader:
        upgrader.ready()
        with warnings.catch_warnings():
            # On Python 3.12 and later, os.fork() warns if another thread runs.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            try:
                upgrader.upgrade()
                outcome = "upgrade() returned"
            except BaseException as error:
                outcome = f"{type(error).__name__}: {error}"
            os.write(write_end, outcome.encode()[:4000])
            os._exit(0)

        os.close(write_end)
        with os.fdopen(read_end, "rb") as stream:
            outcome = stream.read().decode()
        _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert outcome.startswith("UpgradeError: "), outcome
    assert f"PID {pid} was forked from PID {os.getpid()}" in outcome


def test_stdin_program_upgrade_raises(children):
    """A program read from standard input gets UpgradeError from upgrade(), since a new run would read nothing."""
    child = children.python_stdin(
        b"import fdpass\n"
        b"upgrader = fdpass.Upgrader()\n"
        b"upgrader.ready()\n"
        b"try:\n"
        b"    upgrader.upgrade()\n"
        b"except fdpass.UpgradeError as error:\n"
        b"    print('UpgradeError', error, flush=True)\n"
    )

    line = child.readline()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert line.startswith("UpgradeError upgrade not started"), line
    assert "standard input" in line


def test_full_fd_table_upgrade_raises(children):
    """upgrade() with no free fd raises UpgradeError, not a bare OSError, and a retry with free fds succeeds."""
    code = (
        "import os, resource, socket, sys, fdpass\n"
        "upgrader = fdpass.Upgrader(upgrade_timeout=20)\n"
        "if upgrader.has_parent:\n"
        "    upgrader.ready()\n"
        "    sys.exit(0)\n"
        "upgrader.listen(('127.0.0.1', 0), name='http')\n"
        "upgrader.ready()\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "filler = []\n"
        "for _ in range(64):\n"
        "    try:\n"
        "        filler.append(os.open(os.devnull, os.O_RDONLY))\n"
        "    except OSError:\n"
        "        break\n"
        "try:\n"
        "    upgrader.upgrade()\n"
        "except fdpass.UpgradeError as error:\n"
        "    print('UpgradeError', error, flush=True)\n"
        "for fd in filler:\n"
        "    os.close(fd)\n"
        "print('upgraded', upgrader.upgrade(), flush=True)\n"
    )
    child = children.python("-c", code)

    failure = child.readline()
    retry = child.readline()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert failure.startswith("UpgradeError "), failure
    assert "Too many open files" in failure
    assert retry.startswith("upgraded "), retry


def test_first_generation_has_no_parent():
    """A process that no upgrade started has no parent to wait for."""
    with fdpass.Upgrader() as upgrader:
        assert upgrader.has_parent is False
        assert upgrader.parent_pid is None
        assert upgrader.wait_for_parent(timeout=0) is True


def test_ready_writes_pid_file_atomically(tmp_path):
    """ready() writes this PID and leaves no temporary file next to the PID file."""
    pid_file = tmp_path / "run" / "server.pid"
    pid_file.parent.mkdir()
    pid_file.write_text("stale\n")

    with fdpass.Upgrader(pid_file=pid_file) as upgrader:
        upgrader.ready()
        upgrader.ready()

    assert pid_file.read_text() == f"{os.getpid()}\n"
    assert sorted(path.name for path in pid_file.parent.iterdir()) == ["server.pid"]


def test_second_upgrader_rejected_until_stop():
    """Only one Upgrader may be active in a process; stop() frees the slot."""
    first = fdpass.Upgrader()
    try:
        with pytest.raises(fdpass.UpgradeError, match="another Upgrader"):
            fdpass.Upgrader()
    finally:
        first.stop()

    second = fdpass.Upgrader()
    second.stop()


def test_stop_ends_wait_exit_and_upgrades():
    """After stop(), wait_exit() returns True and upgrade() and ready() raise."""
    upgrader = fdpass.Upgrader()
    upgrader.ready()
    assert upgrader.wait_exit(timeout=0) is False

    upgrader.stop()

    assert upgrader.wait_exit(timeout=0) is True
    with pytest.raises(fdpass.UpgradeError, match="stop"):
        upgrader.upgrade()


def test_ready_again_after_stop_does_nothing():
    """ready() after ready() and stop() does nothing, as a repeated ready() does."""
    upgrader = fdpass.Upgrader()
    upgrader.ready()
    upgrader.stop()

    upgrader.ready()

    assert upgrader.wait_exit(timeout=0) is True


def test_ready_after_stop_raises():
    """A generation that stopped before ready() cannot become ready."""
    upgrader = fdpass.Upgrader()
    upgrader.stop()

    with pytest.raises(fdpass.UpgradeError, match="after stop"):
        upgrader.ready()


def test_wait_exit_async_wakes_on_stop_from_thread():
    """wait_exit_async() returns once another thread calls stop()."""
    upgrader = fdpass.Upgrader()

    stopper = threading.Thread(target=upgrader.stop)

    async def main() -> None:
        waiter = asyncio.ensure_future(upgrader.wait_exit_async())
        await asyncio.sleep(0)
        stopper.start()
        await asyncio.wait_for(waiter, 10)

    try:
        asyncio.run(main())
    finally:
        if stopper.is_alive():
            stopper.join(10)
        upgrader.stop()
    assert upgrader.wait_exit(timeout=0) is True


def test_listen_rejects_reserved_name():
    """The fd names fdpass uses for its own fds cannot name a listener, from fdpass.listen() or Upgrader.listen()."""
    before = fdpass.restart.listeners()

    with fdpass.Upgrader() as upgrader:
        for listen in (fdpass.listen, upgrader.listen):
            for name in (upgrade.READY_FD_NAME, upgrade.PARENT_FD_NAME, state.STATE_FD_NAME, "fdpass-standby"):
                with pytest.raises(ValueError, match="reserves for its own fds"):
                    listen(("127.0.0.1", 0), name=name)

    assert fdpass.restart.listeners() == before


def test_upgrade_rejects_bad_state_before_spawning():
    """A state that is not bytes raises TypeError and starts no process."""
    before = child_pids()

    with fdpass.Upgrader() as upgrader:
        upgrader.ready()
        with pytest.raises(TypeError, match="state"):
            upgrader.upgrade(state="text")  # type: ignore[arg-type]

    assert child_pids() == before


def test_state_fd_is_sealed_and_readable():
    """The state memfd returns the written bytes and refuses further writes."""
    fd = state.create_state_fd(b"hello state")
    try:
        assert state.read_state_fd(fd) == b"hello state"
        assert os.get_inheritable(fd) is False
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
    finally:
        os.close(fd)


def test_reexec_passes_large_state(children):
    """reexec(state=...) hands 3 MiB, more than the environment could hold, to the new run."""
    child = children.helper("reexec_state.py")

    first = child.read_json()
    second = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert second["pid"] == first["pid"]
    assert second["length"] == 3 * 1024 * 1024
    assert second["sha256"] == first["sha256"]
    assert second["same_again"] is True
    assert second["names"] == [state.STATE_FD_NAME]


@pytest.mark.parametrize("nonblocking", [False, True])
def test_rebuilt_socket_keeps_blocking_mode(nonblocking):
    """With socket.setdefaulttimeout() set, a rebuilt socket reports, and keeps, the fd's own O_NONBLOCK."""
    a, b = socket.socketpair()
    a.setblocking(not nonblocking)
    copy = os.dup(a.fileno())
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5.0)
    try:
        rebuilt = rebuild.rebuild(_native.inspect([copy])[0])
    finally:
        socket.setdefaulttimeout(previous)

    with a, b, rebuilt:
        flags = fcntl.fcntl(a.fileno(), fcntl.F_GETFL)
        assert bool(flags & os.O_NONBLOCK) is nonblocking
        assert rebuilt.gettimeout() == (0.0 if nonblocking else None)


def test_pid_file_error_names_pid_file(tmp_path):
    """A PID file in a missing directory raises OSError naming that path, not the temporary file."""
    path = tmp_path / "missing" / "server.pid"

    with pytest.raises(FileNotFoundError) as caught:
        upgrade.write_pid_file(str(path), 1234)

    assert caught.value.filename == str(path)
    assert "directory exists" in str(caught.value)


@pytest.mark.parametrize(
    ("pid_file", "error", "message"),
    [
        ("", ValueError, "pid_file must be a path to a file, not an empty string"),
        ("run/a\0b.pid", ValueError, "pid_file must not contain a NUL byte: 'run/a\\x00b.pid'"),
        (
            b"server.pid",
            TypeError,
            "pid_file must be a str or os.PathLike path, not bytes; pass os.fsdecode(b'server.pid')",
        ),
        ("run/", ValueError, "pid_file must name a file, not a directory: 'run/'"),
        ("run/..", ValueError, "pid_file must name a file, not a directory: 'run/..'"),
    ],
)
def test_upgrader_rejects_bad_pid_file(pid_file, error, message):
    """The constructor rejects an empty pid_file, a NUL byte, bytes or a directory path, naming the value."""
    with pytest.raises(error) as caught:
        fdpass.Upgrader(pid_file=pid_file)

    assert str(caught.value) == message


def test_pid_file_directory_names_path(tmp_path):
    """A pid_file that is a directory fails in ready() with an error naming it, and leaves no temporary file."""
    directory = tmp_path / "server.pid"
    directory.mkdir()

    with fdpass.Upgrader(pid_file=directory) as upgrader:
        with pytest.raises(IsADirectoryError) as caught:
            upgrader.ready()

    assert caught.value.filename == str(directory)
    assert "pid_file must name a file, not a directory" in str(caught.value)
    assert os.listdir(tmp_path) == ["server.pid"]


def test_pid_file_permission_error_hint(children):
    """A PID file in a directory this user may not write to names the path and the permission problem."""
    top = tempfile.mkdtemp(prefix="fdpass-test-pid-file-")
    try:
        os.chmod(top, 0o755)
        locked = os.path.join(top, "locked")
        os.mkdir(locked, 0o555)
        path = os.path.join(locked, "server.pid")
        # root may write anywhere, so a child started as root switches to
        # the user nobody (UID 65534) once it has imported fdpass, and then writes.
        code = (
            "import json, os, sys\n"
            "from fdpass import upgrade\n"
            "if os.geteuid() == 0:\n"
            "    os.setgroups([])\n"
            "    os.setgid(65534)\n"
            "    os.setuid(65534)\n"
            "try:\n"
            "    upgrade.write_pid_file(sys.argv[1], 1234)\n"
            "except OSError as error:\n"
            "    print(json.dumps([type(error).__name__, error.filename, str(error)]))\n"
        )
        child = children.python("-c", code, path)
        kind, filename, message = child.read_json()
    finally:
        shutil.rmtree(top)

    assert kind == "PermissionError"
    assert filename == path
    assert "may create files in its directory" in message
    assert "directory exists" not in message


def test_parent_exit_logged_once(caplog, monkeypatch):
    """Two Upgraders in one generation that both see the parent's exit log it once."""
    monkeypatch.setattr(upgrade, "_parent_exit_logged", False)

    # Only one Upgrader may be active at a time, so the first is stopped before the second exists.
    with caplog.at_level("INFO", logger="fdpass"):
        for _ in range(2):
            upgrader = fdpass.Upgrader()
            upgrader._parent_gone = False
            upgrader._parent_pid = 4242
            upgrader._mark_parent_gone()
            upgrader.stop()

    exits = [record.getMessage() for record in caplog.records if "has exited" in record.getMessage()]
    assert exits == ["previous generation PID 4242 has exited"]


def test_parent_pid_variable_with_huge_number(monkeypatch):
    """A 5000-digit FDPASS_PARENT_PID is no PID, so the parent is os.getppid(), with no error from int()'s limit."""
    monkeypatch.setenv(upgrade.PARENT_PID_VARIABLE, "9" * 5000)
    monkeypatch.setattr(upgrade, "_inherited_parent_pid", None)

    assert fdpass.restart._parent_generation_pid() == os.getppid()
    assert upgrade._parent_pid() == os.getppid()
