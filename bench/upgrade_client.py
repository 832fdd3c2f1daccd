"""The client of bench_upgrade.py: one connection per request, timed, in a process of its own.

It runs apart from the driver so that the driver's waits and reads never
hold the GIL that the timed loop needs. Commands arrive on stdin, one byte
each: "r" resumes sending, "p" pauses it, and "q" quits. After "p" the client
finishes the request in flight and writes "p\\n" to stdout. After "q" it
writes one JSON line: the latency in seconds of every request, the
CLOCK_MONOTONIC time at which each one started, and every error.

Usage: python upgrade_client.py PORT
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time

#: No run of the benchmark lasts this long, so the loop stops here even if the driver is gone.
MAX_SECONDS = 1800.0


def request(port: int, number: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"request {number}\n".encode())
        response = b""
        while not response.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed after {response!r}")
            response += chunk


def main(port: int) -> None:
    control = sys.stdin.fileno()
    os.set_blocking(control, False)
    latencies: list[float] = []
    starts: list[float] = []
    errors: list[str] = []
    active = False
    deadline = time.monotonic() + MAX_SECONDS
    number = 0

    while time.monotonic() < deadline:
        # A paused client sleeps in select(). A sending one only checks for a command.
        readable, _, _ = select.select([control], [], [], 0 if active else 1.0)
        commands = os.read(control, 64) if readable else b""
        if readable and not commands:
            return
        for command in commands.decode():
            if command == "r":
                active = True
            elif command == "p":
                active = False
                os.write(1, b"p\n")
            elif command == "q":
                report = {"latencies": latencies, "starts": starts, "errors": errors}
                os.write(1, json.dumps(report).encode() + b"\n")
                return
        if not active:
            continue

        number += 1
        started = time.perf_counter()
        try:
            request(port, number)
        except OSError as error:
            errors.append(repr(error))
            continue
        latencies.append(time.perf_counter() - started)
        starts.append(started)


if __name__ == "__main__":
    main(int(sys.argv[1]))
