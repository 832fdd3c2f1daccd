"""Restart several times in a row and report argv, cwd and open fds after each run.

The environment controls it:
- RESTARTS_LEFT: how many more times to restart (required);
- CHDIR_TO: a directory to change into before each restart;
- REPORT_PATH: a file to append the JSON reports to, for runs whose stdout
  is closed; without it, reports go to stdout.

The first run opens a TCP listener, a socketpair end and a pipe; every later
run passes on what it inherited, by name. Each run reports one JSON line.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import fdpass


def open_fds() -> list[int]:
    # os.listdir() opens the directory on a new fd and closes it before
    # returning, so an entry that fstat() rejects is that fd.
    fds = []
    for entry in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(entry))
        except OSError:
            continue
        fds.append(int(entry))
    return sorted(fds)


def fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as error:
        return f"error: {error}"


def report(data: dict[str, object]) -> None:
    line = json.dumps(data) + "\n"
    report_path = os.environ.get("REPORT_PATH")
    if report_path:
        with open(report_path, "a") as output:
            output.write(line)
    else:
        sys.stdout.write(line)
        sys.stdout.flush()


def main() -> None:
    inherited = fdpass.inherit()
    restarts_left = int(os.environ["RESTARTS_LEFT"])
    fds = open_fds()

    if not inherited.descriptions:
        listener = socket.create_server(("127.0.0.1", 0))
        # The other end stays open but unpassed, so exec must close it.
        pair_end, _unpassed_end = socket.socketpair()
        read_end, write_end = os.pipe()
        os.close(write_end)
        passed: dict[str, object] = {"listener": listener, "pair": pair_end, "pipe": read_end}
    else:
        pairs = zip(inherited.descriptions, inherited.objects, strict=True)
        passed = {description.name: obj for description, obj in pairs}

    report(
        {
            "pid": os.getpid(),
            "argv": sys.argv,
            "orig_argv": sys.orig_argv,
            "cwd": os.getcwd(),
            "fds": fds,
            "fd_targets": {fd: fd_target(fd) for fd in fds},
            "inherited": [[d.fd, d.name, d.kind] for d in inherited.descriptions],
            "restarts_left": restarts_left,
        }
    )
    if restarts_left == 0:
        return

    if "CHDIR_TO" in os.environ:
        os.chdir(os.environ["CHDIR_TO"])
    fdpass.reexec(passed, env={**os.environ, "RESTARTS_LEFT": str(restarts_left - 1)})
