"""Call fdpass.reexec() with bad arguments and report each exception as JSON.

Every call must raise before anything changes. os.environ carries
HELPER_RESTARTED, so a call that executes anyway shows up as a second run
that reports the mistake and exits with status 3.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable

from exec_failure import process_state

import fdpass


def closed_fd() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


def main() -> None:
    if "HELPER_RESTARTED" in os.environ:
        print(json.dumps({"error": "a bad call executed the program"}), flush=True)
        sys.exit(3)
    os.environ["HELPER_RESTARTED"] = "1"

    sock = socket.socket()
    closed_sock = socket.socket()
    closed_sock.close()
    with open(os.devnull, "rb") as closed_file:
        pass
    read_end, write_end = os.pipe()
    good_name = "x" * 255

    cases: dict[str, Callable[[], object]] = {
        "closed socket": lambda: fdpass.reexec([sock, closed_sock]),
        "closed file": lambda: fdpass.reexec({"good": sock, "bad": closed_file}),
        "closed int": lambda: fdpass.reexec([sock, closed_fd()]),
        "negative int": lambda: fdpass.reexec([-1]),
        "huge int": lambda: fdpass.reexec([sock, 1 << 40]),
        "fd above limit": lambda: fdpass.reexec([sock, 1 << 30]),
        "socket twice": lambda: fdpass.reexec([sock, sock]),
        "socket and its int": lambda: fdpass.reexec([sock, read_end, sock.fileno()]),
        "twice by name": lambda: fdpass.reexec({"a": read_end, "b": read_end}),
        "name with colon": lambda: fdpass.reexec({"a:b": sock}),
        "name with newline": lambda: fdpass.reexec({"a\nb": sock}),
        "name with NUL": lambda: fdpass.reexec({"a\0b": sock}),
        "name with non-ASCII": lambda: fdpass.reexec({"caf\u00e9": sock}),
        "name too long": lambda: fdpass.reexec({good_name + "x": sock}),
        "name not str": lambda: fdpass.reexec({5: sock}),
        "fds is str": lambda: fdpass.reexec("abc"),
        "fds is int": lambda: fdpass.reexec(5),
        "item is float": lambda: fdpass.reexec([sock, 1.5]),
        "item is None": lambda: fdpass.reexec([None]),
        "item is bool": lambda: fdpass.reexec([True]),
        "item is str": lambda: fdpass.reexec({"web": "3"}),
        "argv empty": lambda: fdpass.reexec([sock], argv=[]),
        "argv with NUL": lambda: fdpass.reexec([sock], argv=[sys.executable, "a\0b"]),
        "env value not str": lambda: fdpass.reexec([sock], env={"A": 1}),
        "env is list": lambda: fdpass.reexec([sock], env=[("A", "B")]),
        "env is str": lambda: fdpass.reexec([sock], env="A=B"),
        "executable with NUL": lambda: fdpass.reexec([sock], executable="/bin/echo\0-x", argv=["echo", "hi"]),
        "executable is int": lambda: fdpass.reexec([sock], executable=3),
        "reserved state name": lambda: fdpass.reexec({"fdpass-state": sock}, state=b"x"),
        "closed int with state": lambda: fdpass.reexec([sock, closed_fd()], state=b"x"),
        "reserved upgrade name": lambda: fdpass.reexec({"web": sock, "fdpass-ready": read_end}),
        "env name empty": lambda: fdpass.reexec([sock], env={"": "x"}),
        "env value with NUL": lambda: fdpass.reexec([sock], env={"A": "x\0y"}),
    }

    before = process_state()
    results = {}
    for label, call in cases.items():
        try:
            call()
        except Exception as error:
            results[label] = {
                "type": type(error).__name__,
                "message": str(error),
                "state_kept": process_state() == before,
            }
        else:
            results[label] = {"type": None}

    # The longest valid name is accepted, so the limit is exactly 255.
    try:
        fdpass.reexec({good_name: sock}, executable="/nonexistent/fdpass-test")
    except OSError as error:
        results["name of 255 characters"] = {"type": type(error).__name__, "message": str(error)}

    print(json.dumps(results), flush=True)
    os.close(write_end)


if __name__ == "__main__":
    main()
