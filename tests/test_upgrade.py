"""Supervised upgrades with fdpass.Upgrader, with real generations of a server on loopback.

Every generation after the first is a child of the one before, not of the
test. The `reaper` fixture makes the test process a child subreaper, so
generations whose parent has exited are reparented here and can be reaped
by PID at teardown.
"""

from __future__ import annotations

import ctypes
import json
import os
import pathlib
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import child_pids, clean_environment, zombie_or_gone

PR_SET_CHILD_SUBREAPER = 36

#: Seconds to wait for one event from the generations.
EVENT_TIMEOUT = 20.0



def group_processes(pgid: int) -> list[str]:
    """Describe every process in process group pgid: PID, state, wchan and command line."""
    described = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stream:
                fields = stream.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            with open(f"/proc/{entry}/wchan") as stream:
                wchan = stream.read()
            with open(f"/proc/{entry}/cmdline", "rb") as stream:
                cmdline = stream.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        described.append(f"{entry} {fields[0]} {wchan} {cmdline[:120]}")
    return described


@pytest.fixture
def reaper() -> Iterator[None]:
    """Adopt orphaned generations, and reap every child left at teardown."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
    before = child_pids()
    try:
        yield
    finally:
        deadline = time.monotonic() + 10
        for pid in child_pids() - before:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.01)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def outcome_of(pid: int) -> Callable[[dict], bool]:
    """Match the "upgraded" or "upgrade-failed" event of generation pid."""
    return lambda event: event["pid"] == pid and event["event"] in ("upgraded", "upgrade-failed")


class Generations:
    """The first generation's Child, plus the JSON events that all generations write to its stdout."""

    def __init__(self, child, address: object, control: pathlib.Path) -> None:
        self.child = child
        self.address = address
        self.control = control
        self.events: list[dict] = []
        self.current = child.pid
        self._unread: list[dict] = []

    def set_control(self, **settings: object) -> None:
        temporary = self.control.with_suffix(".tmp")
        temporary.write_text(json.dumps(settings))
        temporary.replace(self.control)

    def wait_event(self, match: Callable[[dict], bool], what: str, timeout: float = EVENT_TIMEOUT) -> dict:
        """Return the first event, seen or new, for which match() is true."""
        for event in self._unread:
            if match(event):
                self._unread.remove(event)
                return event

        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {what} event within {timeout} s; events so far: {self.events}")
            try:
                event = self.child.read_json(timeout=remaining)
            except (TimeoutError, EOFError) as error:
                raise AssertionError(
                    f"no {what} event: {error}; events so far: {self.events}; "
                    f"processes in the group: {group_processes(self.child.pid)}"
                ) from None
            self.events.append(event)
            if match(event):
                return event
            self._unread.append(event)

    def upgrade(self) -> tuple[dict, dict]:
        """Send SIGHUP to the current generation; return its "upgraded" event and the new "ready" one.

        Waits until the old generation has exited, as the new one sees it.
        """
        old = self.current
        os.kill(old, signal.SIGHUP)

        upgraded = self.wait_event(outcome_of(old), "upgraded")
        assert upgraded["event"] == "upgraded", upgraded
        new = upgraded["new_pid"]
        ready = self.wait_event(lambda e: e["pid"] == new and e["event"] == "ready", "ready")
        self.wait_event(lambda e: e["pid"] == new and e["event"] == "parent-gone", "parent-gone")
        self.current = new
        return upgraded, ready

    def failed_upgrade(self) -> dict:
        """Send SIGHUP to the current generation and return its "upgrade-failed" event."""
        old = self.current
        os.kill(old, signal.SIGHUP)

        event = self.wait_event(outcome_of(old), "outcome")
        assert event["event"] == "upgrade-failed", event
        return event

    def request(self, text: str = "ping") -> str:
        """Send one request on a new connection and return the response line."""
        return send_request(self.address, text)


def send_request(address: object, text: str, timeout: float = 10.0) -> str:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
    else:
        sock = socket.create_connection(address, timeout=timeout)
    with sock:
        sock.sendall(text.encode() + b"\n")
        response = b""
        while not response.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"connection closed after {response!r}, before a full response to {text!r}")
            response += chunk
    return response.decode().rstrip("\n")


class LoadClient:
    """A thread that keeps opening connections and sending one request on each, until stopped."""

    MAX_REQUESTS = 200_000
    MAX_SECONDS = 50.0

    def __init__(self, address: object) -> None:
        self.address = address
        self.answered: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.MAX_SECONDS
        for number in range(self.MAX_REQUESTS):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            text = f"request {number}"
            try:
                response = send_request(self.address, text)
            except OSError as error:
                self.errors.append(f"{text}: {error!r}")
                continue
            self.answered.append((text, response))

    def __enter__(self) -> LoadClient:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(20)


@pytest.fixture
def start_generations(reaper, children, tmp_path) -> Callable[..., Generations]:
    """Start the first generation of tests/helpers/upgrade_server.py and wait until it is ready."""

    def start(
        *options: str, address: object = None, env: dict[str, str] | None = None, **control: object
    ) -> Generations:
        control_path = tmp_path / "control.json"
        control_path.write_text(json.dumps(control))
        # Port 0 lets the kernel pick a free port; listen() in later
        # generations matches the inherited socket on any port.
        text = "127.0.0.1:0" if address is None else str(address)

        child = children.helper(
            "upgrade_server.py", "--address", text, "--control", str(control_path), *options, env=env
        )
        generations = Generations(child, address, control_path)
        ready = generations.wait_event(lambda e: e["pid"] == child.pid and e["event"] == "ready", "first ready")
        if address is None:
            generations.address = tuple(ready["address"])
        return generations

    return start


def test_upgrades_under_load_answer_every_request(start_generations, tmp_path):
    """20 upgrades in a row while a client keeps connecting: no refusal, every request answered."""
    pid_file = tmp_path / "server.pid"
    generations = start_generations("--pid-file", str(pid_file))
    pids = [generations.current]

    with LoadClient(generations.address) as client:
        for _ in range(20):
            upgraded, ready = generations.upgrade()
            pids.append(ready["pid"])

            assert ready["has_parent"] is True
            assert ready["parent_pid"] == upgraded["pid"]
            assert ready["listen_pid"] == str(ready["pid"])
            assert ready["state"] == upgraded["sent_state"]
            assert pid_file.read_text() == f"{ready['pid']}\n"
            assert generations.request().split()[0] == str(ready["pid"])

    assert client.errors == []
    assert len(client.answered) > 0
    for text, response in client.answered:
        pid, _, echoed = response.partition(" ")
        assert echoed == text
        assert int(pid) in pids
    assert [e for e in generations.events if e["event"] == "warning"] == []


def test_crash_and_hang_keep_parent_serving(start_generations):
    """A child that crashes and one that never gets ready both fail; the parent serves on, then upgrades."""
    generations = start_generations("--timeout", "2", startup="crash")
    first = generations.current

    with LoadClient(generations.address) as client:
        crashed = generations.failed_upgrade()
        assert crashed["status"] == 3
        assert "exited with status 3" in crashed["error"]
        assert generations.request().split()[0] == str(first)

        generations.set_control(startup="hang")
        hung = generations.failed_upgrade()
        assert hung["status"] == -signal.SIGKILL
        assert "not ready within upgrade_timeout=2 s" in hung["error"]
        assert not os.path.exists(f"/proc/{hung['new_pid']}")
        assert generations.request().split()[0] == str(first)

        generations.set_control(startup="ok")
        _, ready = generations.upgrade()
        assert generations.request().split()[0] == str(ready["pid"])

    assert client.errors == []
    assert len(client.answered) > 0


def wait_reaped(pid: int, timeout: float = EVENT_TIMEOUT) -> bool:
    """Reap pid if it is this process's child; return True once it no longer runs, False after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        if zombie_or_gone(pid) or time.monotonic() >= deadline:
            return zombie_or_gone(pid)
        time.sleep(0.01)


def test_hung_generation_ends_after_parent_dies(start_generations):
    """A new generation that hangs before ready() kills itself at its deadline, though its parent died mid-upgrade.

    Otherwise it would keep the listening socket, with connections queued
    and never accepted, because its dead parent can no longer kill it.
    """
    generations = start_generations("--timeout", "2", startup="hang")
    first = generations.current

    os.kill(first, signal.SIGHUP)
    hanging = generations.wait_event(lambda e: e["event"] == "hanging", "hanging")
    os.kill(first, signal.SIGKILL)

    assert wait_reaped(hanging["pid"])
    with pytest.raises(ConnectionRefusedError):
        generations.request()


def test_interpreter_exit_kills_unready_generation(start_generations):
    """Ctrl-C in the old generation during an upgrade kills the new generation that is not ready yet."""
    generations = start_generations("--timeout", "30", startup="hang")
    first = generations.current

    os.kill(first, signal.SIGHUP)
    hanging = generations.wait_event(lambda e: e["event"] == "hanging", "hanging")
    os.kill(first, signal.SIGINT)

    assert wait_reaped(hanging["pid"])
    generations.child.wait(EVENT_TIMEOUT)
    with pytest.raises(ConnectionRefusedError):
        generations.request()


ORPHANED_TIMEOUT_PROGRAM = r"""
import json, os, signal, sys, threading, time, fdpass
if "FDPASS_PARENT_PID" in os.environ:
    time.sleep(0.6)  # inherit() comes after the old generation has died
upgrader = fdpass.Upgrader(upgrade_timeout=10)
listener = upgrader.listen(("127.0.0.1", 0), name="http")
if upgrader.has_parent:
    print(json.dumps({"pid": os.getpid(), "timeout": listener.gettimeout()}), flush=True)
    upgrader.ready()
    sys.exit(0)
listener.settimeout(5.0)
upgrader.ready()
print(json.dumps({"pid": os.getpid(), "timeout": listener.gettimeout()}), flush=True)
threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGKILL)).start()
upgrader.upgrade()
"""


def test_timeout_kept_after_parent_died(reaper, children):
    """A new generation whose parent died before it called inherit() still gets the listener's timeout."""
    child = children.python("-c", ORPHANED_TIMEOUT_PROGRAM)

    old = child.read_json()
    new = child.read_json()
    status, _, _ = child.finish()

    assert status == -signal.SIGKILL
    assert old["timeout"] == 5.0
    assert new["pid"] != old["pid"]
    assert new["timeout"] == 5.0
    assert wait_reaped(new["pid"])


# Both print {"pid", "parent", "port"} from the new generation, then
# {"pid", "new_pid", "port"} from the old one.
REEXEC_BEFORE_READY_PROGRAM = r"""
import json, os, sys, fdpass
upgrader = fdpass.Upgrader(upgrade_timeout=20)
listener = upgrader.listen(("127.0.0.1", 0), name="http")
port = listener.getsockname()[1]
if upgrader.has_parent:
    if os.environ.get("FDPASS_TEST_REEXECED") != "1":
        os.environ["FDPASS_TEST_REEXECED"] = "1"
        fdpass.reexec()
    print(json.dumps({"pid": os.getpid(), "parent": upgrader.parent_pid, "port": port}), flush=True)
    upgrader.ready()
    upgrader.wait_for_parent(timeout=20)
    sys.exit(0)
upgrader.ready()
print(json.dumps({"pid": os.getpid(), "new_pid": upgrader.upgrade(), "port": port}), flush=True)
"""

REEXEC_BEFORE_UPGRADER_PROGRAM = r"""
import json, os, sys, fdpass
listener = fdpass.listen(("127.0.0.1", 0), name="http")
if "FDPASS_PARENT_PID" in os.environ and os.environ.get("FDPASS_TEST_REEXECED") != "1":
    os.environ["FDPASS_TEST_REEXECED"] = "1"
    fdpass.reexec()
upgrader = fdpass.Upgrader(upgrade_timeout=20)
port = listener.getsockname()[1]
if upgrader.has_parent:
    print(json.dumps({"pid": os.getpid(), "parent": upgrader.parent_pid, "port": port}), flush=True)
    upgrader.ready()
    upgrader.wait_for_parent(timeout=20)
    sys.exit(0)
upgrader.ready()
print(json.dumps({"pid": os.getpid(), "new_pid": upgrader.upgrade(), "port": port}), flush=True)
"""

# Like REEXEC_BEFORE_UPGRADER_PROGRAM, but reexec(env=...) replaces the
# environment, which still contains FDPASS_PARENT_PID and the deadline.
REEXEC_ENV_BEFORE_UPGRADER_PROGRAM = REEXEC_BEFORE_UPGRADER_PROGRAM.replace(
    "fdpass.reexec()",
    "fdpass.reexec(env={k: v for k, v in os.environ.items() if not k.startswith(('FDPASS_P', 'FDPASS_R'))})",
).replace(
    '"parent": upgrader.parent_pid,',
    '"parent": upgrader.parent_pid, "deadline": fdpass.upgrade._ready_deadline_ns is not None,',
)

# inherit() contains fdpass's own pipes too, under reserved names, so passing it
# whole must leave them to reexec(), not raise ValueError for their names.
REEXEC_INHERITED_PROGRAM = REEXEC_BEFORE_READY_PROGRAM.replace("fdpass.reexec()", "fdpass.reexec(fdpass.inherit())")


@pytest.mark.parametrize(
    "program",
    [
        REEXEC_BEFORE_READY_PROGRAM,
        REEXEC_BEFORE_UPGRADER_PROGRAM,
        REEXEC_INHERITED_PROGRAM,
        REEXEC_ENV_BEFORE_UPGRADER_PROGRAM,
    ],
    ids=["after Upgrader()", "before Upgrader()", "reexec(inherit())", "reexec(env=...) before Upgrader()"],
)
def test_reexec_before_ready_stays_new_generation(reaper, children, program):
    """A new generation that restarts in place before ready() is still the one the old generation waits for."""
    child = children.python("-c", program)

    new = child.read_json()
    old = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert new["parent"] == old["pid"] == child.pid
    assert old["new_pid"] == new["pid"]
    assert new["port"] == old["port"]
    assert new.get("deadline", True)
    assert wait_reaped(new["pid"])


REEXEC_AFTER_READY_PROGRAM = r"""
import json, os, sys, time, fdpass
upgrader = fdpass.Upgrader(upgrade_timeout=20)
listener = upgrader.listen(("127.0.0.1", 0), name="http")
if not upgrader.has_parent:
    upgrader.ready()
    print(json.dumps({"pid": os.getpid(), "new_pid": upgrader.upgrade()}), flush=True)
    upgrader.wait_exit()
    time.sleep(3)
    sys.exit(0)
if os.environ.get("FDPASS_TEST_REEXECED") != "1":
    upgrader.ready()
    os.environ["FDPASS_TEST_REEXECED"] = "1"
    fdpass.reexec()
upgrader.ready()
try:
    upgrader.upgrade()
except fdpass.UpgradeError as upgrade_error:
    error = str(upgrade_error)
else:
    error = None
print(json.dumps({"pid": os.getpid(), "has_parent": upgrader.has_parent, "parent": upgrader.parent_pid,
                  "error": error}), flush=True)
upgrader.wait_for_parent(timeout=20)
"""


def test_reexec_after_ready_keeps_parent(reaper, children):
    """After ready() and reexec(), the new image still has its parent, so upgrade() waits for the parent's exit."""
    child = children.python("-c", REEXEC_AFTER_READY_PROGRAM)

    old = child.read_json()
    new = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert new["pid"] == old["new_pid"]
    assert new["has_parent"] is True
    assert new["parent"] == old["pid"]
    assert "still" in new["error"]
    assert wait_reaped(new["pid"])


STOP_THEN_REEXEC_PROGRAM = r"""
import json, os, sys, fdpass
upgrader = fdpass.Upgrader(upgrade_timeout=20)
upgrader.listen(("127.0.0.1", 0), name="http")
if not upgrader.has_parent:
    upgrader.ready()
    try:
        upgrader.upgrade()
    except fdpass.UpgradeError as error:
        print(json.dumps({"old_error": str(error)}), flush=True)
    sys.exit(0)
if os.environ.get("FDPASS_TEST_REEXECED") != "1":
    upgrader.stop()
    os.environ["FDPASS_TEST_REEXECED"] = "1"
    fdpass.reexec()
try:
    upgrader.ready()
except fdpass.UpgradeError as error:
    print(json.dumps({"new_error": str(error)}), flush=True)
else:
    print(json.dumps({"new_error": None}), flush=True)
"""


def test_stop_then_reexec_still_fails_ready(reaper, children):
    """After stop() and reexec() before ready(), the new image's ready() raises UpgradeError, as without reexec()."""
    child = children.python("-c", STOP_THEN_REEXEC_PROGRAM)

    reports = [child.read_json(), child.read_json()]
    status, _, stderr = child.finish()

    assert status == 0, stderr
    new_error = next(report["new_error"] for report in reports if "new_error" in report)
    old_error = next(report["old_error"] for report in reports if "old_error" in report)
    assert new_error is not None
    assert "stop()" in new_error
    # The new image may exit before or after the old generation reads EOF on the readiness pipe.
    assert "before" in old_error
    assert "ready()" in old_error


OWN_PIPE_PASSED_PROGRAM = r"""
import json, os, sys, fdpass
upgrader = fdpass.Upgrader(upgrade_timeout=20)
upgrader.listen(("127.0.0.1", 0), name="http")
if not upgrader.has_parent:
    upgrader.ready()
    print(json.dumps({"new_pid": upgrader.upgrade()}), flush=True)
    sys.exit(0)
try:
    fdpass.reexec({"x": fdpass.inherit()["fdpass-ready"]})
except ValueError as error:
    print(json.dumps({"error": str(error)}), flush=True)
upgrader.ready()
"""


def test_reexec_names_own_pipe_passed(reaper, children):
    """Passing fdpass's readiness pipe to reexec() raises ValueError that names it, and ready() still works after."""
    child = children.python("-c", OWN_PIPE_PASSED_PROGRAM)

    reported = child.read_json()
    upgraded = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert "fdpass's 'fdpass-ready' pipe" in reported["error"]
    assert "leave it out of fds" in reported["error"]
    assert wait_reaped(upgraded["new_pid"])


REEXEC_DURING_UPGRADE_PROGRAM = r"""
import json, os, sys, threading, time, fdpass
upgrader = fdpass.Upgrader(upgrade_timeout=20)
upgrader.listen(("127.0.0.1", 0))
if upgrader.has_parent:
    time.sleep(1.0)
    upgrader.ready()
    upgrader.wait_for_parent(timeout=20)
    sys.exit(0)
upgrader.ready()
result = {}
upgrading = threading.Thread(target=lambda: result.update(new_pid=upgrader.upgrade()))
upgrading.start()
time.sleep(0.3)
try:
    fdpass.reexec()
except fdpass.UpgradeError as error:
    result["error"] = str(error)
upgrading.join(20)
print(json.dumps(result), flush=True)
"""


def test_reexec_during_upgrade_raises(reaper, children):
    """reexec() while another thread's upgrade() waits raises UpgradeError, and the upgrade still succeeds."""
    child = children.python("-c", REEXEC_DURING_UPGRADE_PROGRAM)

    result = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert "upgrade() is running" in result["error"]
    assert result["new_pid"] > 0
    assert wait_reaped(result["new_pid"])


# Defines send_signal_inside(module, name, signum): the next call of
# module.name first sends signum to this process, so that the handler runs
# inside that call, in the same thread.
SIGNAL_INSIDE_FUNCTION = r"""
def send_signal_inside(module, name, signum):
    original = getattr(module, name)
    def call_after_signal(*args):
        setattr(module, name, original)
        os.kill(os.getpid(), signum)
        return original(*args)
    setattr(module, name, call_after_signal)
"""

# argv[1] names the call that the SIGUSR1 handler interrupts:
# "write_pid_file" runs in ready() under the Upgrader's lock, and "start"
# in the standby start, under the standby lock.
REEXEC_IN_HANDLER_PROGRAM = r"""
import json, os, signal, sys, fdpass
from fdpass import prestart, upgrade
""" + SIGNAL_INSIDE_FUNCTION + r"""
if os.environ.get("FDPASS_TEST_IMAGE") == "2":
    print(json.dumps({"new_image": os.getpid()}), flush=True)
    sys.exit(0)
def restart(signum, frame):
    os.environ["FDPASS_TEST_IMAGE"] = "2"
    fdpass.reexec()
signal.signal(signal.SIGUSR1, restart)
interrupted = sys.argv[1]
send_signal_inside(prestart if interrupted == "start" else upgrade, interrupted, signal.SIGUSR1)
upgrader = fdpass.Upgrader(pid_file=sys.argv[2], prestart=interrupted == "start")
upgrader.listen(("127.0.0.1", 0))
upgrader.ready()
"""


@pytest.mark.parametrize(
    "interrupted",
    [pytest.param("write_pid_file", id="ready() under the lock"), pytest.param("start", id="standby start")],
)
def test_reexec_in_handler_restarts(children, tmp_path, interrupted):
    """reexec() in a signal handler that interrupts a call holding an Upgrader lock restarts, instead of deadlocking."""
    child = children.python("-c", REEXEC_IN_HANDLER_PROGRAM, interrupted, str(tmp_path / "app.pid"))

    report = child.read_json(timeout=10)
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["new_image"] == child.pid


def test_ready_generation_outlives_its_deadline(start_generations):
    """ready() deletes the deadline timer: the new generation serves on past upgrade_timeout plus the grace."""
    generations = start_generations("--timeout", "1")

    _, ready = generations.upgrade()
    assert ready["upgrade_variables"] == []
    time.sleep(2.5)

    assert generations.request().split()[0] == str(ready["pid"])


def test_unpassed_fds_never_reach_child(start_generations, tmp_path):
    """An inheritable fd the old generation opened, and its private pipes, are not open in the new one."""
    marker = tmp_path / "not-passed.txt"
    marker.write_text("private")
    generations = start_generations(extra_fd=str(marker))
    first_ready = generations.events[0]
    assert str(marker) in first_ready["fds"].values()

    _, ready = generations.upgrade()

    # 0, 1 and 2 are shared on purpose: every generation writes to the test's
    # stdout pipe. Every epoll instance reads "anon_inode:[eventpoll]", so
    # those targets name no particular file.
    old_targets = {target for fd, target in first_ready["fds"].items() if int(fd) > 2 and "anon_inode" not in target}
    new_targets = {target for fd, target in ready["fds"].items() if int(fd) > 2 and "anon_inode" not in target}
    assert str(marker) not in new_targets
    shared = old_targets & new_targets
    assert len(shared) == 1
    assert next(iter(shared)).startswith("socket:")
    assert ready["listen_pid"] == str(ready["pid"])


def test_upgrade_passes_extra_fds(start_generations, tmp_path):
    """upgrade(fds=...) hands more fds to the new generation under their names."""
    passed = tmp_path / "passed.txt"
    passed.write_text("handed over")
    generations = start_generations(pass_file=str(passed))
    assert generations.events[0]["passed_file"] is None

    _, ready = generations.upgrade()

    assert ready["passed_file"] == "handed over"
    assert str(passed) in ready["fds"].values()


def test_busy_threads_upgrade_without_warning(start_generations):
    """Upgrades from a program with four busy threads raise no warning and do not deadlock."""
    generations = start_generations("--busy-threads", "4")

    for _ in range(3):
        upgraded, _ = generations.upgrade()
        assert all(count > 0 for count in upgraded["busy"])

    assert [e for e in generations.events if e["event"] == "warning"] == []


def test_concurrent_upgrade_is_refused(start_generations):
    """A second upgrade while one is running raises UpgradeError, and the first one completes."""
    generations = start_generations(startup="slow", slow_seconds=1.0, double=True)
    first = generations.current

    os.kill(first, signal.SIGHUP)
    outcomes = [
        generations.wait_event(outcome_of(first), "outcome")
        for _ in range(2)
    ]

    kinds = sorted(event["event"] for event in outcomes)
    assert kinds == ["upgrade-failed", "upgraded"]
    refused = next(event for event in outcomes if event["event"] == "upgrade-failed")
    assert "already running" in refused["error"]
    assert refused["new_pid"] is None


def test_upgrade_refused_while_parent_alive(start_generations):
    """The new generation cannot upgrade until the previous one has exited."""
    generations = start_generations(linger=1.5)
    first = generations.current
    os.kill(first, signal.SIGHUP)
    upgraded = generations.wait_event(lambda e: e["pid"] == first and e["event"] == "upgraded", "upgraded")
    generations.wait_event(lambda e: e["pid"] == upgraded["new_pid"] and e["event"] == "ready", "ready")
    generations.current = upgraded["new_pid"]

    refused = generations.failed_upgrade()
    assert f"previous generation (PID {first}) is still running" in refused["error"]

    generations.set_control()
    generations.wait_event(lambda e: e["pid"] == generations.current and e["event"] == "parent-gone", "parent-gone")
    _, ready = generations.upgrade()
    assert ready["parent_pid"] == upgraded["new_pid"]


def test_unix_socket_path_survives_upgrades(start_generations, tmp_path):
    """The socket file stays in place across upgrades, and the new generation answers on it."""
    path = str(tmp_path / "server.sock")
    generations = start_generations(address=path)

    for _ in range(2):
        _, ready = generations.upgrade()
        assert os.path.exists(path)
        assert generations.request().split()[0] == str(ready["pid"])


def test_blocking_listener_stays_blocking(start_generations):
    """A listener the old generation left blocking arrives blocking; a non-blocking one arrives non-blocking."""
    generations = start_generations(nonblocking=False)
    assert generations.events[0]["initial_blocking"] is True

    _, ready = generations.upgrade()
    assert ready["initial_blocking"] is True

    generations.set_control(nonblocking=True)
    _, ready = generations.upgrade()
    assert ready["initial_blocking"] is True
    _, ready = generations.upgrade()
    assert ready["initial_blocking"] is False


@pytest.mark.parametrize(
    "control, timeout",
    [
        pytest.param({"listener_timeout": 2.5}, 2.5, id="settimeout 2.5"),
        pytest.param({"listener_timeout": None}, None, id="settimeout None"),
        pytest.param({"nonblocking": True}, 0.0, id="setblocking False"),
    ],
)
def test_listener_timeout_survives_upgrade(start_generations, control, timeout):
    """The new generation's listener has the gettimeout() that the old generation set."""
    generations = start_generations(**control)
    assert generations.events[0]["initial_timeout"] is None

    _, ready = generations.upgrade()

    assert ready["initial_timeout"] == timeout
    assert generations.request().split()[0] == str(ready["pid"])


def test_asyncio_variants_upgrade_and_time_out(start_generations):
    """upgrade_async(), wait_exit_async() and wait_for_parent_async() drive the same outcomes."""
    generations = start_generations("--asyncio", "--timeout", "1.0")
    first = generations.current

    with LoadClient(generations.address) as client:
        _, ready = generations.upgrade()
        assert ready["parent_pid"] == first

        generations.set_control(startup="hang")
        hung = generations.failed_upgrade()
        assert "not ready within upgrade_timeout=1 s" in hung["error"]

        generations.set_control()
        _, ready = generations.upgrade()
        assert generations.request().split()[0] == str(ready["pid"])

    assert client.errors == []


def receive_with_sender(sock: socket.socket) -> tuple[str, int]:
    """Return one datagram and the sender's PID from SCM_CREDENTIALS."""
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _, _ = struct.unpack("3i", payload[: struct.calcsize("3i")])
            return data.decode(), pid
    raise AssertionError(f"datagram {data!r} came without SCM_CREDENTIALS")


def test_upgrade_notifies_service_manager(start_generations):
    """READY=1 at start, RELOADING=1 during the upgrade, MAINPID= from the old generation at hand-over."""
    name = f"fdpass-test-upgrade-notify-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        manager.bind(b"\0" + name.encode())
        manager.settimeout(EVENT_TIMEOUT)

        generations = start_generations(env=clean_environment({"NOTIFY_SOCKET": "@" + name}))
        first = generations.current
        started = receive_with_sender(manager)
        _, ready = generations.upgrade()
        reloading = receive_with_sender(manager)
        handed_over = receive_with_sender(manager)

    assert started == ("READY=1\n", first)
    reload_lines = reloading[0].splitlines()
    assert reloading[1] == first
    assert reload_lines[0] == "RELOADING=1"
    assert reload_lines[1].startswith("MONOTONIC_USEC=")
    assert handed_over == (f"MAINPID={ready['pid']}\nREADY=1\n", first)
