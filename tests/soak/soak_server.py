"""A server that restarts itself in place RESTARTS times while it serves.

Usage: soak_server.py RESTARTS GENERATION_SECONDS

The first run binds a listener on 127.0.0.1 (port chosen by the kernel),
prints {"port": N}, and accepts one "stream" connection. Every run echoes
each byte it reads from the stream connection back to the sender, replies to
each new connection on the listener with "pong GENERATION\\n", and after
GENERATION_SECONDS calls fdpass.reexec() with the listener and the stream
connection. Before each restart it prints {"generation": N, "fds": [...]},
the open fd numbers, so the caller can check that the fd table stays flat.

After RESTARTS restarts it prints {"done": N} and echoes until the sender
shuts down its side of the stream, then exits 0.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time

import fdpass

GENERATION_VARIABLE = "FDPASS_SOAK_GENERATION"


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def open_fds() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc/self/fd"))


def answer_client(listener: socket.socket, generation: int) -> None:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return
    with conn:
        conn.settimeout(10)
        request = b""
        while not request.endswith(b"\n"):
            chunk = conn.recv(64)
            if not chunk:
                return
            request += chunk
        conn.sendall(f"pong {generation}\n".encode())


def echo_once(stream: socket.socket) -> bool:
    """Echo what one recv() returns; return False once the sender has shut down its side."""
    data = stream.recv(1 << 16)
    if not data:
        return False
    stream.sendall(data)
    return True


def first_run() -> tuple[socket.socket, socket.socket]:
    listener = fdpass.listen(("127.0.0.1", 0), name="listener")
    report(port=listener.getsockname()[1])
    listener.settimeout(30)
    stream, _ = listener.accept()
    return listener, stream


def main() -> None:
    restarts = int(sys.argv[1])
    generation_seconds = float(sys.argv[2])
    generation = int(os.environ.get(GENERATION_VARIABLE, "0"))

    if generation == 0:
        listener, stream = first_run()
    else:
        inherited = fdpass.inherit()
        listener = fdpass.listen(("127.0.0.1", 0), name="listener")
        stream = inherited["stream"]
    listener.setblocking(False)
    stream.settimeout(30)

    finishing = generation >= restarts
    if finishing:
        report(done=generation)
    deadline = time.monotonic() + generation_seconds
    while finishing or time.monotonic() < deadline:
        readable, _, _ = select.select([listener, stream], [], [], 0.01)
        if listener in readable:
            answer_client(listener, generation)
        if stream in readable and not echo_once(stream):
            stream.close()
            return

    report(generation=generation, fds=open_fds())
    fdpass.reexec(
        {"listener": listener, "stream": stream},
        env={**os.environ, GENERATION_VARIABLE: str(generation + 1)},
    )


if __name__ == "__main__":
    main()
