"""Write a JSON report of this process to fd 3, which the test passed as a pipe.

The report lists the open fds with their FD_CLOEXEC flag and what they point
at, LISTEN_* from the environment, this PID, and the signal mask, ignored and
caught sets from /proc/self/status.
"""

import json
import os

fds = {}
for name in os.listdir("/proc/self/fd"):
    fd = int(name)
    try:
        fds[fd] = {"target": os.readlink(f"/proc/self/fd/{fd}"), "inheritable": os.get_inheritable(fd)}
    except OSError:
        continue

status = {}
with open("/proc/self/status") as stream:
    for line in stream:
        key, _, value = line.partition(":")
        if key in ("SigBlk", "SigIgn", "SigCgt"):
            status[key] = int(value.strip(), 16)

report = {
    "pid": os.getpid(),
    "fds": fds,
    "env": {key: value for key, value in os.environ.items() if key.startswith("LISTEN_") or key == "MARKER"},
    "signals": status,
}
with os.fdopen(3, "w") as out:
    json.dump(report, out)
