"""Open inheritable fds below and above the passed ones, reexec() with sockets, report open fds.

Usage: unpassed_fds.py PASSED

The first run opens PASSED sockets, then inheritable pipes on fd 3 + PASSED
(the first slot after the passed ones) and on fd 3 + PASSED + 200, and
restarts with the
sockets. The new run prints one JSON line: every open fd above 2 and the
kinds inherit() adopted.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import fdpass


def main() -> None:
    passed = int(sys.argv[1])

    if "UNPASSED_FDS_RESTARTED" not in os.environ:
        sockets = [socket.socket() for _ in range(passed)]
        read_end, write_end = os.pipe()
        for fd, target in ((read_end, 3 + passed), (write_end, 3 + passed + 200)):
            if fd != target:
                os.dup2(fd, target, inheritable=True)
            os.set_inheritable(target, True)
        os.environ["UNPASSED_FDS_RESTARTED"] = "1"
        fdpass.reexec(sockets)

    inherited = fdpass.inherit()
    open_fds = sorted(int(name) for name in os.listdir("/proc/self/fd") if int(name) > 2)
    report = {"kinds": [d.kind for d in inherited.descriptions], "open_fds": open_fds}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
