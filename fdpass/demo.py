"""``fdpass demo``: restart in place while a response waits in the kernel buffer.

The first run binds a listening socket on 127.0.0.1, hands it to a small HTTP
server in a child process, connects, sends a request and waits until the
response is in its receive buffer. Then it calls fdpass.reexec() without
reading it. The new run, same PID, adopts the connection with
fdpass.inherit(), reads the whole response, checks its SHA-256 and prints it
with the restart latency. Everything runs on loopback and ends with the demo.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time

import fdpass

CONNECTION_NAME = "demo-connection"
BODY_SIZE = 256 * 1024

# Environment variables that carry the demo's own state across the restart.
_STARTED_NS = "FDPASS_DEMO_STARTED_NS"
_SERVER_PID = "FDPASS_DEMO_SERVER_PID"
_ROUND = "FDPASS_DEMO_ROUND"
_PID_BEFORE = "FDPASS_DEMO_PID_BEFORE"
_DEMO_VARIABLES = (_STARTED_NS, _SERVER_PID, _ROUND, _PID_BEFORE)

_TIMEOUT = 10.0


def response_body(round_number: int) -> bytes:
    """Return the deterministic body the server sends for round_number."""
    seed = hashlib.sha256(f"fdpass demo round {round_number}".encode()).digest()
    blocks = BODY_SIZE // len(seed) + 1
    return (seed * blocks)[:BODY_SIZE]


def serve(listen_fd: int) -> None:
    """Serve one connection, sending a response to each ``GET /round/N`` until EOF.

    Runs in the server child process. It exits when the client closes the
    connection or after _TIMEOUT seconds without a request.
    """
    listener = socket.socket(fileno=listen_fd)
    listener.settimeout(_TIMEOUT)
    connection, _ = listener.accept()
    connection.settimeout(_TIMEOUT)
    listener.close()

    buffered = b""
    while True:
        try:
            chunk = connection.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            break
        buffered += chunk

        while b"\r\n\r\n" in buffered:
            head, buffered = buffered.split(b"\r\n\r\n", 1)
            path = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            round_number = int(path.rsplit("/", 1)[1])
            body = response_body(round_number)
            header = (
                "HTTP/1.1 200 OK\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"X-SHA256: {hashlib.sha256(body).hexdigest()}\r\n"
                "\r\n"
            ).encode()
            connection.sendall(header + body)

    connection.close()


def _start_server() -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    # "python -c" puts the working directory first on sys.path. Dropping it
    # keeps the server on the installed fdpass when the demo runs in a checkout.
    code = f"import sys; del sys.path[0]; from fdpass import demo; demo.serve({listener.fileno()})"
    server = subprocess.Popen(
        [sys.executable, "-c", code],
        pass_fds=[listener.fileno()],
    )
    listener.close()
    return server, address


def _bytes_waiting(sock: socket.socket) -> int:
    raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    return int(struct.unpack("i", raw)[0])


def _send_request_and_restart(sock: socket.socket, round_number: int, server_pid: int, pid_before: int) -> None:
    sock.sendall(f"GET /round/{round_number} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())

    # Wait until the response has reached this socket's receive buffer, but
    # read none of it, because the new run must find it there.
    readable, _, _ = select.select([sock], [], [], _TIMEOUT)
    if not readable:
        raise TimeoutError(f"the demo server sent no response within {_TIMEOUT} s")
    time.sleep(0.05)
    print(f"[pid {os.getpid()}] round {round_number}: request sent, "
          f"{_bytes_waiting(sock)} response bytes wait in the kernel buffer; restarting with fdpass.reexec()")

    os.environ[_SERVER_PID] = str(server_pid)
    os.environ[_ROUND] = str(round_number)
    os.environ[_PID_BEFORE] = str(pid_before)
    os.environ[_STARTED_NS] = str(time.monotonic_ns())
    fdpass.reexec({CONNECTION_NAME: sock})


def _read_response(sock: socket.socket) -> tuple[bytes, str]:
    sock.settimeout(_TIMEOUT)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the demo server closed the connection before the response header")
        data += chunk

    head, body = data.split(b"\r\n\r\n", 1)
    headers = dict(
        line.split(": ", 1) for line in head.decode().split("\r\n")[1:]
    )
    length = int(headers["Content-Length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the demo server closed the connection after {len(body)} of {length} body bytes")
        body += chunk
    return body, headers["X-SHA256"]


def _stop_server(server_pid: int) -> None:
    # The server is this process's child, before and after exec, so it can be
    # reaped here. It exits by itself on EOF, so SIGKILL is only for a stuck server.
    deadline = time.monotonic() + _TIMEOUT
    while time.monotonic() < deadline:
        pid, _ = os.waitpid(server_pid, os.WNOHANG)
        if pid == server_pid:
            return
        time.sleep(0.01)
    os.kill(server_pid, signal.SIGKILL)
    os.waitpid(server_pid, 0)


def _continue_after_restart(sock: socket.socket, rounds: int) -> int:
    started_ns = int(os.environ.pop(_STARTED_NS))
    latency_ms = (time.monotonic_ns() - started_ns) / 1e6
    server_pid = int(os.environ.pop(_SERVER_PID))
    round_number = int(os.environ.pop(_ROUND))
    pid_before = int(os.environ.pop(_PID_BEFORE))

    body, expected_digest = _read_response(sock)
    digest = hashlib.sha256(body).hexdigest()
    intact = digest == expected_digest and body == response_body(round_number)
    print(f"[pid {os.getpid()}] round {round_number}: new image adopted the connection "
          f"{sock.getsockname()} -> {sock.getpeername()} in {latency_ms:.1f} ms "
          f"(reexec() call to inherit() return, same PID: {os.getpid() == pid_before})")
    print(f"[pid {os.getpid()}] round {round_number}: read {len(body)} body bytes from the connection, "
          f"SHA-256 {digest[:16]}..., {'intact' if intact else 'CORRUPTED'}")
    if not intact:
        sock.close()
        _stop_server(server_pid)
        return 1

    if round_number < rounds:
        _send_request_and_restart(sock, round_number + 1, server_pid, pid_before)

    sock.close()
    _stop_server(server_pid)
    print(f"done: {rounds} restart(s), every response byte read after the restart")
    return 0


def main(rounds: int = 1) -> int:
    """Run the demo and return the process exit status."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")

    inherited = fdpass.inherit()
    sock = inherited.get(CONNECTION_NAME)
    if isinstance(sock, socket.socket) and _STARTED_NS in os.environ:
        return _continue_after_restart(sock, rounds)

    for variable in _DEMO_VARIABLES:
        os.environ.pop(variable, None)
    server, address = _start_server()
    try:
        sock = socket.create_connection(address, timeout=_TIMEOUT)
        print(f"[pid {os.getpid()}] connected to the demo server on {address[0]}:{address[1]}")
        _send_request_and_restart(sock, 1, server.pid, os.getpid())
    finally:
        # Reached only when reexec() failed or something before it raised.
        if server.poll() is None:
            server.kill()
        server.wait()
    return 1
