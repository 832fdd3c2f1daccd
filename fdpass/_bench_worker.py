"""The program that fdpass.benchmarks restarts, run as ``python -m fdpass._bench_worker``.

One worker process is a chain of in-place restarts. The first image sets up
(opens the sockets to pass, or fills a TCP connection). Every later image
rebuilds what it was passed, writes one result line to stdout (fd 1, which
every restart keeps) and restarts again until no rounds are left.

Every mode runs this same program with the same imports, so the ratios
compare only the work done for the passed fds. The image before a restart
reads CLOCK_MONOTONIC, which is system-wide, and passes the reading in an
environment variable. CPU time (CLOCK_PROCESS_CPUTIME_ID) travels the same
way, because execve keeps counting it. Result lines hold nanoseconds.

Modes:
    fdpass    reexec() with the sockets, inherit() in the new image.
    python    os.set_inheritable() on each fd, os.execve(), then
              socket.socket(fileno=) on each fd in the new image.
    floor     os.execve() of the same program with no fds.
    read-restart
              fill a loopback TCP connection, reexec() with both ends, and
              read every buffered byte from the inherited socket.
    read-direct
              fill the connection and read it in the same image.
    read-python-restart
              fill the connection, restart the pure-Python way
              (os.set_inheritable(), os.execve(), socket.socket(fileno=))
              and read every buffered byte in the new image.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import fdpass
from fdpass import protocol

# NOTE: taken after the imports above, so the time from T0 to here covers the
# old image's preparation, execve and interpreter start-up together.
T_MAIN = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
# CPU time of this process, which execve keeps counting, so it measures the
# work of a restart without the time spent waiting for a busy CPU.
T_MAIN_CPU = time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID)

ENV_T0 = "FDPASS_BENCH_T0"
ENV_T0_CPU = "FDPASS_BENCH_T0_CPU"
ENV_ROUNDS_LEFT = "FDPASS_BENCH_ROUNDS_LEFT"
ENV_PASSED = "FDPASS_BENCH_PASSED"
ENV_BUFFERED = "FDPASS_BENCH_BUFFERED"

LATENCY_MODES = ("fdpass", "python", "floor")
READ_MODES = ("read-restart", "read-direct", "read-python-restart")

# Large enough for several MB in flight: the kernel doubles the value and
# caps it at net.core.rmem_max / wmem_max unless the FORCE options work.
SOCKET_BUFFER_BYTES = 8 << 20
# A prime length, so chunk boundaries never line up with the pattern.
PATTERN_LENGTH = 65521


def _monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _emit(*fields: object) -> None:
    os.write(1, (" ".join(str(field) for field in fields) + "\n").encode())


def _open_listeners(count: int) -> list[socket.socket]:
    sockets = []
    for index in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        # Passed fds sit on 3, 4, ... already, so the pure-Python path needs
        # no fd moves and is as fast as it can be.
        if sock.fileno() != protocol.FIRST_FD + index:
            raise RuntimeError(
                f"socket {index} opened on fd {sock.fileno()}; start the worker with only 0, 1 and 2 open"
            )
        sockets.append(sock)
    return sockets


def _restart(mode: str, sockets: list[socket.socket]) -> None:
    os.environ[ENV_PASSED] = str(len(sockets))
    os.environ[ENV_T0_CPU] = str(time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID))
    os.environ[ENV_T0] = str(_monotonic_ns())

    if mode == "fdpass":
        fdpass.reexec(sockets)
    if mode == "python":
        for sock in sockets:
            os.set_inheritable(sock.fileno(), True)
    os.execve(sys.executable, sys.orig_argv, os.environ)


def _rebuild(mode: str) -> list[socket.socket]:
    if mode == "fdpass":
        return list(fdpass.inherit().objects)  # type: ignore[arg-type]
    if mode == "python":
        count = int(os.environ[ENV_PASSED])
        first = protocol.FIRST_FD
        return [socket.socket(fileno=fd) for fd in range(first, first + count)]
    return []


def run_latency(mode: str, count: int, rounds_left: int) -> None:
    """Rebuild the passed sockets, report the timings, and restart again."""
    t0 = os.environ.pop(ENV_T0, None)
    t0_cpu = os.environ.pop(ENV_T0_CPU, None)

    if t0 is None:
        sockets = [] if mode == "floor" else _open_listeners(count)
    else:
        sockets = _rebuild(mode)
        t_ready = _monotonic_ns()
        t_ready_cpu = time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID)
        if len(sockets) != (0 if mode == "floor" else count):
            raise RuntimeError(f"{mode}: rebuilt {len(sockets)} sockets, expected {count}")
        _emit(t0, T_MAIN, t_ready, t0_cpu, T_MAIN_CPU, t_ready_cpu)
        rounds_left -= 1

    if rounds_left <= 0:
        return
    os.environ[ENV_ROUNDS_LEFT] = str(rounds_left)
    _restart(mode, sockets)


def _connected_pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    for sock, option, force in (
        (listener, socket.SO_RCVBUF, getattr(socket, "SO_RCVBUFFORCE", None)),
        (sender, socket.SO_SNDBUF, getattr(socket, "SO_SNDBUFFORCE", None)),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force if force is not None else option, SOCKET_BUFFER_BYTES)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)

    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sender.connect(listener.getsockname())
    receiver, _ = listener.accept()
    listener.close()
    return receiver, sender


def expected_stream(length: int) -> bytes:
    """Return the first length bytes that fill() sends: one pattern, repeated."""
    pattern = bytes((i * 131 + i // 251) & 0xFF for i in range(PATTERN_LENGTH))
    return (pattern * (length // PATTERN_LENGTH + 1))[:length]


# After a fill, the kernel keeps moving bytes from the send queue into the
# receive queue for a while. Both read modes wait this long, so both start
# reading from the same state.
SETTLE_SECONDS = 0.05


def fill(sender: socket.socket) -> int:
    """Send expected_stream() until the kernel buffers are full, wait SETTLE_SECONDS; return the bytes sent."""
    stream = memoryview(expected_stream(4 * SOCKET_BUFFER_BYTES))
    sent = 0

    sender.setblocking(False)
    try:
        # Bounded: the stream is larger than both buffers together.
        while sent < len(stream):
            try:
                sent += sender.send(stream[sent:sent + (1 << 20)])
            except BlockingIOError:
                break
    finally:
        sender.setblocking(True)

    time.sleep(SETTLE_SECONDS)
    return sent


def read_all(receiver: socket.socket, length: int) -> tuple[int, bytearray]:
    """Read exactly length bytes; return (nanoseconds spent, the bytes)."""
    data = bytearray(length)
    view = memoryview(data)
    received = 0

    start = _monotonic_ns()
    while received < length:
        chunk = receiver.recv_into(view[received:], length - received)
        if chunk == 0:
            raise RuntimeError(f"connection closed after {received} of {length} bytes")
        received += chunk
    elapsed = _monotonic_ns() - start

    return elapsed, data


def _check_and_emit(elapsed: int, data: bytearray) -> None:
    expected = expected_stream(len(data))
    if data != expected:
        first_bad = next(i for i, (got, sent) in enumerate(zip(data, expected, strict=True)) if got != sent)
        raise RuntimeError(f"byte {first_bad} of {len(data)} differs from what was sent")
    _emit(len(data), elapsed)


def run_read(mode: str, rounds_left: int) -> None:
    """Fill a loopback connection, restart or not, and read every byte back."""
    if mode == "read-direct":
        receiver, sender = _connected_pair()
        for _ in range(rounds_left):
            length = fill(sender)
            _check_and_emit(*read_all(receiver, length))
        return

    if ENV_BUFFERED in os.environ:
        receiver, sender = _rebuild_pair(mode)
        _check_and_emit(*read_all(receiver, int(os.environ.pop(ENV_BUFFERED))))
        rounds_left -= 1
    else:
        receiver, sender = _connected_pair()

    if rounds_left <= 0:
        return
    os.environ[ENV_ROUNDS_LEFT] = str(rounds_left)
    os.environ[ENV_BUFFERED] = str(fill(sender))
    if mode == "read-restart":
        fdpass.reexec({"receiver": receiver, "sender": sender})

    for sock in (receiver, sender):
        os.set_inheritable(sock.fileno(), True)
    os.environ[ENV_PASSED] = f"{receiver.fileno()},{sender.fileno()}"
    os.execve(sys.executable, sys.orig_argv, os.environ)


def _rebuild_pair(mode: str) -> tuple[socket.socket, socket.socket]:
    """Return (receiver, sender) as the restart of mode passed them."""
    if mode == "read-python-restart":
        receiver_fd, sender_fd = (int(fd) for fd in os.environ.pop(ENV_PASSED).split(","))
        return socket.socket(fileno=receiver_fd), socket.socket(fileno=sender_fd)

    inherited = fdpass.inherit()
    receiver, sender = inherited["receiver"], inherited["sender"]
    if not isinstance(receiver, socket.socket) or not isinstance(sender, socket.socket):
        raise RuntimeError(f"inherited {inherited!r}, expected two sockets")
    return receiver, sender


def main(argv: list[str]) -> int:
    mode, count, rounds = argv[0], int(argv[1]), int(argv[2])
    rounds_left = int(os.environ.pop(ENV_ROUNDS_LEFT, rounds))

    if mode in LATENCY_MODES:
        run_latency(mode, count, rounds_left)
    elif mode in READ_MODES:
        run_read(mode, rounds_left)
    else:
        raise SystemExit(f"unknown mode {mode!r}; expected one of {', '.join(LATENCY_MODES + READ_MODES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
