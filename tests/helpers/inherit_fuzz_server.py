"""Run fdpass.inherit() once per case, each in a fresh fork, and report what it adopted.

Reads one JSON case per stdin line and writes one JSON result per stdout
line. A case is {"passed": [KIND, ...], "after": [SLOT, ...], "env": {...}}:

- passed: the fds a previous program passed, on 3, 4, ... with FD_CLOEXEC
  clear; KIND is "socket" (a socketpair end) or "pipe" (a pipe read end).
- after: the slots that follow, each "closed" or "cloexec" (an fd this
  process opened after exec, so FD_CLOEXEC is set).
- env: the variables to set; "$PID" in a value becomes the fork's PID.

The result has "error" (the exception type, or null), "message", "adopted"
(the fd numbers inherit() returned), "cloexec_clear" (which of fds 3 ..
3 + len(passed) + len(after) - 1 are open with FD_CLOEXEC clear afterwards)
and "env_left" (the LISTEN_* and FDPASS_SOCKETS variables still set).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys

import fdpass

VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "LISTEN_PIDFDID", "FDPASS_SOCKETS")
#: Scratch copies of the case's files sit here, above every slot a case uses.
SCRATCH_FD = 200
#: The fork writes its result to this fd.
RESULT_FD = 300


def move_up(fd: int) -> int:
    """Move fd to a number at or above SCRATCH_FD, with FD_CLOEXEC set, so it occupies no slot."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, SCRATCH_FD)
    os.close(fd)
    return moved


def make_file(kind: str) -> int:
    """Return a new socketpair end or pipe read end, with its peer kept open, both above the slots."""
    if kind == "socket":
        end, peer = socket.socketpair()
        move_up(peer.detach())
        return move_up(end.detach())
    read_end, write_end = os.pipe()
    move_up(write_end)
    return move_up(read_end)


def build_fd_table(case: dict[str, list[str]]) -> int:
    """Lay out the case's fds on 3, 4, ... and return the number of slots used."""
    slots = len(case["passed"]) + len(case["after"])
    os.closerange(3, RESULT_FD)

    scratch = [make_file(kind) for kind in case["passed"]]
    for index, fd in enumerate(scratch):
        os.dup2(fd, 3 + index, inheritable=True)
    for index, slot in enumerate(case["after"], start=3 + len(case["passed"])):
        if slot == "cloexec":
            null = move_up(os.open(os.devnull, os.O_RDONLY))
            os.dup2(null, index, inheritable=False)
    return slots


def run_inherit(case: dict[str, object]) -> dict[str, object]:
    slots = build_fd_table(case)  # type: ignore[arg-type]
    for variable in VARIABLES:
        os.environ.pop(variable, None)
    for variable, value in case["env"].items():  # type: ignore[attr-defined]
        os.environ[variable] = value.replace("$PID", str(os.getpid()))

    error = None
    message = ""
    adopted: list[int] = []
    try:
        inherited = fdpass.inherit()
        adopted = [description.fd for description in inherited.descriptions]
    except Exception as caught:  # any type is reported, so the test can reject it
        error = type(caught).__name__
        message = str(caught)

    cloexec_clear = []
    for fd in range(3, 3 + slots):
        try:
            cloexec_clear.append(not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
        except OSError:
            cloexec_clear.append(False)
    return {
        "error": error,
        "message": message,
        "adopted": adopted,
        "cloexec_clear": cloexec_clear,
        "env_left": sorted(variable for variable in VARIABLES if variable in os.environ),
    }


def run_case(line: str) -> str:
    read_end, write_end = os.pipe()
    os.dup2(write_end, RESULT_FD, inheritable=False)
    os.close(write_end)

    pid = os.fork()
    if pid == 0:
        try:
            result = run_inherit(json.loads(line))
        except BaseException as crash:
            result = {"error": "crash", "message": repr(crash)}
        os.write(RESULT_FD, json.dumps(result).encode())
        os._exit(0)

    os.close(RESULT_FD)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not chunks:
        return json.dumps({"error": "crash", "message": f"fork exited with status {status}"})
    return b"".join(chunks).decode()


def main() -> None:
    for line in sys.stdin:
        print(run_case(line), flush=True)


if __name__ == "__main__":
    main()
