"""A bounded HTTP client load on loopback, and the restart check built on it.

The servers under test respond to every request with one line, "SERVER [PGID]":
SERVER names the process and generation that served it (its PID, or PID.N
for the Nth run of a program that restarts in place), and PGID its process
group, so the client can tell generations apart and knows which process
groups to end at teardown.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

#: Requests each client thread may send before it stops on its own.
MAX_REQUESTS_PER_THREAD = 20000

#: Seconds the load may run before it stops on its own.
MAX_SECONDS = 40.0

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


LISTENING = re.compile(r"fdpass: listening on 127\.0\.0\.1:(\d+) as fd 3\b")


def logged_port(stderr_text: Callable[[], str], timeout: float = 20.0) -> int:
    """Return the port that `fdpass -v run --listen 127.0.0.1:0` logged for fd 3.

    Binding port 0 and reading the port back leaves no window in which
    another socket, such as a client's ephemeral port, can take it.
    """
    wait_until(lambda: LISTENING.search(stderr_text()) is not None, timeout, lambda: stderr_text()[-3000:])
    match = LISTENING.search(stderr_text())
    assert match is not None
    return int(match.group(1))


class ConnectionClosedEarly(ConnectionError):
    """The server accepted the connection and closed it before it sent any response."""


#: What ASGI servers do to a connection they accepted but had not read a
#: request from when a graceful shutdown began: uvicorn resets it, hypercorn
#: closes it. Neither is a refused connection.
SHUTDOWN_DROPS = ("ConnectionResetError", "ConnectionClosedEarly")


def fetch(port: int, timeout: float = 10.0) -> tuple[str, int]:
    """Send one HTTP request and return the (SERVER, PGID) line of the response body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(REQUEST)
        response = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            response += chunk

    if not response:
        raise ConnectionClosedEarly("the server closed the connection without a response")
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
        raise ValueError(f"unexpected response {response[:200]!r}")
    # PGID is optional: a server that gives none reports group 0, which no test signals.
    fields = body.split()
    return fields[0].decode(), int(fields[1]) if len(fields) > 1 else 0


class Load:
    """Client threads that send requests in a loop until stopped, and record every response and error."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.responses: list[tuple[str, int]] = []
        # started[i]: time.monotonic() when the request of responses[i] began.
        self.started: list[float] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + MAX_SECONDS
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        for _ in range(MAX_REQUESTS_PER_THREAD):
            if self._stop.is_set() or time.monotonic() > self._deadline:
                return
            started = time.monotonic()
            try:
                response = fetch(self.port)
            except (OSError, ValueError) as error:
                with self._lock:
                    self.errors.append(f"{type(error).__name__}: {error}")
                continue
            with self._lock:
                self.responses.append(response)
                self.started.append(started)

    def refused(self) -> list[str]:
        """Return the errors that are refused connections."""
        with self._lock:
            return [error for error in self.errors if error.startswith("ConnectionRefusedError")]

    def errors_other_than(self, kinds: tuple[str, ...]) -> list[str]:
        """Return the errors whose exception type is not one of kinds."""
        with self._lock:
            return [error for error in self.errors if error.partition(":")[0] not in kinds]

    def count(self) -> int:
        with self._lock:
            return len(self.responses)

    def servers_since(self, index: int) -> set[str]:
        with self._lock:
            return {server for server, _ in self.responses[index:]}

    def servers_started_after(self, moment: float) -> set[str]:
        """Return the servers that sent the responses to requests begun after moment (a time.monotonic() value)."""
        with self._lock:
            pairs = zip(self.responses, self.started, strict=True)
            return {server for (server, _), started in pairs if started > moment}

    def process_groups(self) -> set[int]:
        with self._lock:
            return {pgid for _, pgid in self.responses if pgid > 0}

    def wait_for_responses(self, count: int, timeout: float = 20.0) -> None:
        """Wait until count responses have arrived in total; raise TimeoutError naming the errors seen."""
        wait_until(
            lambda: self.count() >= count, timeout, lambda: f"{self.count()} responses, errors {self.errors[:5]}"
        )

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(15)


def wait_until(condition: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> None:
    """Poll condition every 20 ms until it holds; raise TimeoutError with describe() after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {describe()}")
        time.sleep(0.02)


def wait_for_server(port: int, timeout: float = 20.0) -> None:
    """Wait until a request to port gets a response."""
    def responded() -> bool:
        try:
            fetch(port, timeout=5)
        except (OSError, ValueError):
            return False
        return True

    wait_until(responded, timeout, lambda: f"no response on 127.0.0.1:{port}")


def group_is_gone(pgid: int) -> bool:
    """Return True if no process is left in process group pgid."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


OLD_EXITED = re.compile(r"old PID (\d+) exited")


def supervisor_restarted(stderr_text: Callable[[], str], number: int) -> bool:
    """Return True once the supervisor's log shows that number old generations have exited."""
    return len(OLD_EXITED.findall(stderr_text())) >= number


def restart_under_load(
    send_restart: Callable[[], None],
    restarted: Callable[[int], bool],
    describe: Callable[[], str],
    load: Load,
    restarts: int = 2,
) -> None:
    """Restart the server restarts times while load runs, and check that each new generation serves.

    send_restart() starts a restart and restarted(n) returns True once the
    nth restart has finished. After each one, every response must come from a
    server that did not respond before it.
    """
    for number in range(1, restarts + 1):
        before = load.servers_since(0)
        send_restart()
        wait_until(
            functools.partial(restarted, number),
            30,
            functools.partial(lambda n: f"restart {n} did not finish: {describe()}", number),
        )

        # A request begun before the old generation exited may still get its
        # response from it and be counted after this point, so only requests
        # begun later show which generation serves now.
        moment = time.monotonic()
        load.wait_for_responses(load.count() + 50)
        after = load.servers_started_after(moment)
        assert after, "no responses after the restart"
        assert not after & before, f"restart {number}: old servers {after & before} still respond"


# Moves fd N to 3, sets LISTEN_PID to this PID and execs argv[2:], like a
# service manager passing one socket. The PID survives the exec.
_PASS_SOCKET = (
    "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); fd != 3 and os.close(fd); "
    "os.environ['LISTEN_PID'] = str(os.getpid()); os.execvp(sys.argv[2], sys.argv[2:])"
)


def socket_activation(sock: socket.socket, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Return (argv, environment additions) that start argv with sock passed as fd 3 in LISTEN_FDS=1.

    The test binds the socket itself, on port 0, so no other socket can take
    the port between choosing and binding it. Start the result with
    pass_fds=(sock.fileno(),).
    """
    wrapper = [sys.executable, "-I", "-c", _PASS_SOCKET, str(sock.fileno()), *argv]
    return wrapper, {"LISTEN_FDS": "1"}
