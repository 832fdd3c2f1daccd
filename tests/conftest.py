"""Shared fixtures: start real child processes and always end them.

Tests start child programs through the ``children`` fixture. Each child runs
in its own session, so it leads a process group. At teardown the fixture
sends SIGKILL to every group it started and reaps every child, even when the
test failed. Reads from a child's stdout have a deadline, so a hung child
fails the test with its stderr attached instead of hanging the suite.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence

import pytest

#: Child programs that tests run, one file each.
HELPERS = pathlib.Path(__file__).parent / "helpers"

#: Seconds a single read or wait may take before the test fails.
DEFAULT_TIMEOUT = 20.0

_LISTEN_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "LISTEN_PIDFDID")


def child_pids() -> set[int]:
    """Return the PIDs of this process's children, zombies included, from /proc/self/task/*/children."""
    pids: set[int] = set()
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        try:
            with open(path) as stream:
                pids.update(int(pid) for pid in stream.read().split())
        except FileNotFoundError:
            # The thread exited after glob() listed it, and its children moved to another thread.
            continue
    return pids


def zombie_or_gone(pid: int) -> bool:
    """Return True if pid names no process or a zombie, from its state in /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rpartition(")")[2].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        # read() fails with ESRCH when the process is reaped after open().
        return True


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return os.environ without LISTEN_* variables, updated with extra."""
    env = {key: value for key, value in os.environ.items() if key not in _LISTEN_VARIABLES}
    env.update(extra or {})
    return env


class Child:
    """A started child process with a line reader on its stdout and its stderr in a file."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stderr_file: tempfile._TemporaryFileWrapper[bytes],
        leads_group: bool,
    ) -> None:
        self.popen = popen
        self.leads_group = leads_group
        self._stderr_file = stderr_file
        self._buffer = b""
        self._eof = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr_text(self) -> str:
        """Return everything the child has written to stderr so far."""
        self._stderr_file.flush()
        with open(self._stderr_file.name, "rb") as stream:
            return stream.read().decode(errors="replace")

    def _fill(self, deadline: float) -> bool:
        # Return False on EOF or deadline; the caller decides which error fits.
        stdout = self.popen.stdout
        if stdout is None:
            raise RuntimeError("this child was started without stdout=PIPE")
        remaining = deadline - time.monotonic()
        if self._eof or remaining <= 0:
            return False

        with selectors.DefaultSelector() as selector:
            selector.register(stdout.fileno(), selectors.EVENT_READ)
            if not selector.select(remaining):
                return False
        chunk = os.read(stdout.fileno(), 65536)
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def readline(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Return the next line of stdout without its newline.

        Raises:
            TimeoutError: no full line arrived within timeout seconds.
            EOFError: stdout closed before a full line arrived.
        """
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if not self._fill(deadline):
                kind = EOFError if self._eof else TimeoutError
                raise kind(
                    f"child {self.pid} wrote no full line within {timeout} s; "
                    f"partial stdout {self._buffer[-500:]!r}, exit status {self.popen.poll()}, "
                    f"stderr:\n{self.stderr_text()[-3000:]}"
                )

        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def read_json(self, timeout: float = DEFAULT_TIMEOUT) -> object:
        """Return the next stdout line parsed as JSON."""
        line = self.readline(timeout)
        try:
            return json.loads(line)
        except ValueError:
            raise AssertionError(
                f"child {self.pid} wrote {line!r}, expected JSON; stderr:\n{self.stderr_text()}"
            ) from None

    def read_rest(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Return all remaining stdout, reading until EOF or raising TimeoutError."""
        deadline = time.monotonic() + timeout
        while not self._eof:
            if not self._fill(deadline) and not self._eof:
                raise TimeoutError(f"child {self.pid} kept stdout open for {timeout} s; stderr:\n{self.stderr_text()}")

        rest, self._buffer = self._buffer, b""
        return rest.decode(errors="replace")

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Return the exit status, waiting at most timeout seconds."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"child {self.pid} still runs after {timeout} s; stderr:\n{self.stderr_text()}"
            ) from None

    def finish(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str, str]:
        """Return (exit status, remaining stdout, stderr) once the child has exited."""
        rest = self.read_rest(timeout) if self.popen.stdout is not None else ""
        status = self.wait(timeout)
        return status, rest, self.stderr_text()

    def kill(self) -> None:
        """Send SIGKILL to the child's process group (or the child alone) and reap it."""
        # The group outlives its leader while grandchildren remain, and Linux
        # does not reuse a PID that is still a process group ID.
        if self.leads_group:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.popen.poll() is None:
            self.popen.kill()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass


class ChildProcesses:
    """Starts child processes for one test and ends all of them at teardown."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    def start(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = subprocess.PIPE,
        new_session: bool = True,
        **popen_options: object,
    ) -> Child:
        """Start argv and return its Child.

        env defaults to this process's environment without LISTEN_*. stdout
        is a pipe read through Child.readline(). Other keyword arguments go
        to subprocess.Popen (cwd, pass_fds, preexec_fn, ...).
        """
        stderr_file = tempfile.NamedTemporaryFile(prefix="fdpass-child-stderr-")
        popen = subprocess.Popen(
            [os.fspath(arg) for arg in argv],
            env=clean_environment() if env is None else dict(env),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr_file,
            start_new_session=new_session,
            **popen_options,  # type: ignore[arg-type]
        )
        child = Child(popen, stderr_file, leads_group=new_session)
        self._children.append(child)
        return child

    def python(self, *args: str | os.PathLike[str], **options: object) -> Child:
        """Start this interpreter (sys.executable) with args."""
        return self.start([sys.executable, *args], **options)  # type: ignore[arg-type]

    def python_stdin(self, code: bytes, **options: object) -> Child:
        """Start this interpreter as `python -`, write code to its stdin and close it."""
        child = self.python("-", stdin=subprocess.PIPE, **options)
        assert child.popen.stdin is not None
        child.popen.stdin.write(code)
        child.popen.stdin.close()
        return child

    def helper(self, name: str, *args: str, **options: object) -> Child:
        """Start tests/helpers/NAME with this interpreter and args."""
        return self.python(HELPERS / name, *args, **options)

    def end_all(self) -> None:
        for child in reversed(self._children):
            child.kill()
            for stream in (child.popen.stdin, child.popen.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except BrokenPipeError:
                        pass  # stdin still held unwritten bytes for a child that is gone
            child._stderr_file.close()
        self._children.clear()


@pytest.fixture
def children() -> Iterator[ChildProcesses]:
    """Start child processes; every one of them is killed and reaped at teardown."""
    processes = ChildProcesses()
    try:
        yield processes
    finally:
        processes.end_all()


@pytest.fixture(scope="module")
def module_children() -> Iterator[ChildProcesses]:
    """Like children, for module-scoped fixtures that run one child for many tests."""
    processes = ChildProcesses()
    try:
        yield processes
    finally:
        processes.end_all()


@pytest.fixture
def seen_groups() -> Iterator[set[int]]:
    """Process groups that a test's servers reported; each gets SIGKILL at teardown.

    Servers started through ``fdpass run --restart-on`` lead process groups
    that the test did not create itself, so the test collects their PGIDs
    from the servers' answers and this fixture ends them. It never signals
    the test's own group or init's.
    """
    groups: set[int] = set()
    try:
        yield groups
    finally:
        own = os.getpgid(0)
        for pgid in groups:
            if pgid > 1 and pgid != own:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


@pytest.fixture(autouse=True, scope="session")
def run_outside_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run every test, and every child it starts, from an empty directory.

    ``python -m`` and ``python -c`` put the working directory first on
    sys.path. Run from a checkout, children would import the fdpass source
    tree, which has no compiled extension, in place of the installed package
    under test.
    """
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(previous)
