"""The cost per fd of socket.socket(fileno=), with and without the family, type and protocol given.

The rebuild target compares fdpass's rebuild with socket.socket(fileno=fd),
which reads the family, type and protocol from the kernel (getsockname() and
two getsockopt() calls). Any code that returns real socket.socket objects
goes through the same constructor, and the constructor calls getsockname()
even when all three are given. So the constructor with all three given is
the cheapest rebuild there is, and its ratio to auto-detection bounds the
rebuild ratio from below. This script measures that ratio, in a warm loop
over already open sockets, next to fdpass's own rebuild of the same fds.

Usage: python bench/constructor_cost.py [--sockets 5000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import time
from collections.abc import Callable

from fdpass import _native, rebuild


def timed(build: Callable[[], list[socket.socket]]) -> float:
    started = time.perf_counter()
    built = build()
    elapsed = time.perf_counter() - started
    for sock in built:
        sock.detach()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    options = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < options.sockets + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, options.sockets + 1000), hard))
    # The sockets go on consecutive fds above every open one, as inherit() finds
    # them on 3, 4, ..., and with FD_CLOEXEC clear, as after a restart, so the
    # scan below reads every fd.
    count = options.sockets
    first = max(map(int, os.listdir("/proc/self/fd"))) + 1
    fds = list(range(first, first + count))
    for fd in fds:
        with socket.socket() as sock:
            os.dup2(sock.fileno(), fd, inheritable=True)
    families = [socket.AF_INET] * count
    types = [socket.SOCK_STREAM] * count
    protocols = [socket.IPPROTO_TCP] * count
    timeouts: list[float | None] = [None] * count

    steps: dict[str, Callable[[], list[socket.socket]]] = {
        "socket.socket(fileno=fd)": lambda: [socket.socket(fileno=fd) for fd in fds],
        "socket.socket(family, type, proto, fd)": lambda: list(map(socket.socket, families, types, protocols, fds)),
        "fdpass rebuild_sockets()": lambda: rebuild.rebuild_sockets(fds, families, types, protocols, timeouts),
    }
    samples: dict[str, list[float]] = {name: [] for name in steps}
    scans: list[float] = []
    # Interleaved, so a slow phase of the machine falls on every step alike.
    for _ in range(options.repeats):
        for name, build in steps.items():
            samples[name].append(timed(build))
        started = time.perf_counter()
        if not _native.all_adoptable_range(fds[0], count):
            raise SystemExit("an fd has FD_CLOEXEC set, so the scan stopped early")
        scans.append(time.perf_counter() - started)

    auto = statistics.median(samples["socket.socket(fileno=fd)"])
    print(f"{count} TCP sockets, median of {options.repeats} interleaved repeats, warm process")
    print("| step | us per fd | / socket.socket(fileno=fd) |")
    print("|---|---:|---:|")
    for name, times in samples.items():
        median = statistics.median(times)
        print(f"| {name} | {median / count * 1e6:.3f} | {median / auto:.3f} |")
    scan = statistics.median(scans)
    print(f"| FD_CLOEXEC scan (F_GETFD per fd, in C) | {scan / count * 1e6:.3f} | {scan / auto:.3f} |")

    for fd in fds:
        os.close(fd)


if __name__ == "__main__":
    main()
