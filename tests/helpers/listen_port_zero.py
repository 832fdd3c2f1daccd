"""Call fdpass.listen() with port 0 in several ways, restart, do it again, and report both runs.

Usage: listen_port_zero.py FIXED_PORT

The first run prints one JSON report, calls fdpass.reexec() with no fds, and
the new run prints a second report. Each report gives the local port of
every socket that listen() returned, keyed by the call that returned it.
"""

from __future__ import annotations

import json
import os
import sys

import fdpass

HOST = "127.0.0.1"


def port_of(sock: object) -> int:
    return sock.getsockname()[1]  # type: ignore[attr-defined, no-any-return]


def registered_ports() -> list[list[object]]:
    """Return [name, port] of every socket in fdpass's registry, sorted."""
    return sorted([name, port_of(sock)] for name, sock in fdpass.listeners())


def first_run(fixed_port: int) -> None:
    http = fdpass.listen((HOST, fixed_port), name="http")
    admin = fdpass.listen((HOST, 0), name="admin")
    admin_again = fdpass.listen((HOST, 0), name="admin")
    metrics = fdpass.listen((HOST, 0), name="metrics")
    unnamed_one = fdpass.listen((HOST, 0))
    unnamed_two = fdpass.listen((HOST, 0))
    # Not a with block: Upgrader.stop() would close every listener before reexec().
    upgrader = fdpass.Upgrader()
    upgrader_one = upgrader.listen((HOST, 0))
    upgrader_two = upgrader.listen((HOST, 0))

    sockets = {
        "http": http,
        "admin": admin,
        "metrics": metrics,
        "unnamed_one": unnamed_one,
        "unnamed_two": unnamed_two,
        "upgrader_one": upgrader_one,
        "upgrader_two": upgrader_two,
    }
    report = {
        "run": "first",
        "ports": {call: port_of(sock) for call, sock in sockets.items()},
        "admin_again_is_admin": admin_again is admin,
        "unnamed_two_is_unnamed_one": unnamed_two is unnamed_one,
        "upgrader_two_is_upgrader_one": upgrader_two is upgrader_one,
        "registered": registered_ports(),
    }
    print(json.dumps(report), flush=True)

    # Close the Upgrader's two sockets, so the new run inherits a known set.
    upgrader_one.close()
    upgrader_two.close()
    fdpass.reexec(env={**os.environ, "LISTEN_PORT_ZERO_FIRST": "1"})


def second_run(fixed_port: int) -> None:
    inherited = fdpass.inherit()
    adopted = {id(obj) for obj in inherited.objects}

    # A different order from the first run: the unnamed port-0 calls come
    # before the fixed port and the named ones, which they must not take.
    unnamed_one = fdpass.listen((HOST, 0))
    unnamed_two = fdpass.listen((HOST, 0))
    http = fdpass.listen((HOST, fixed_port), name="http")
    metrics = fdpass.listen((HOST, 0), name="metrics")
    admin = fdpass.listen((HOST, 0), name="admin")
    unnamed_three = fdpass.listen((HOST, 0))

    sockets = {
        "http": http,
        "admin": admin,
        "metrics": metrics,
        "unnamed_one": unnamed_one,
        "unnamed_two": unnamed_two,
        "unnamed_three": unnamed_three,
    }
    report = {
        "run": "second",
        "ports": {call: port_of(sock) for call, sock in sockets.items()},
        # Only the port-0 calls, because the test checks the fixed port by its number.
        "inherited": {call: id(sock) in adopted for call, sock in sockets.items() if call != "http"},
        "registered": registered_ports(),
    }
    print(json.dumps(report), flush=True)


def main() -> None:
    fixed_port = int(sys.argv[1])
    if "LISTEN_PORT_ZERO_FIRST" in os.environ:
        second_run(fixed_port)
    else:
        first_run(fixed_port)


if __name__ == "__main__":
    main()
