"""A child for `fdpass run --restart-on`: each run acts as its generation's mode says.

Usage: supervised_child.py COUNTER_FILE MODE [MODE...]

Run N (counted in COUNTER_FILE, from 0) takes MODE number N, or the last one:
- ready: send READY=1 to NOTIFY_SOCKET, then wait for SIGTERM, SIGINT or
  SIGHUP and exit 0;
- silent: never send READY=1, wait for one of those signals and exit 0;
- exit:CODE: exit with CODE at once;
- orphan:CODE: start `sleep 300`, then exit with CODE, leaving it behind.
- stubborn: send READY=1 and ignore SIGTERM, so only SIGKILL ends it.
Each run first prints one JSON line about itself.
"""

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

counter_path, modes = sys.argv[1], sys.argv[2:]
with open(counter_path, "a+") as counter:
    fcntl.flock(counter, fcntl.LOCK_EX)
    counter.seek(0)
    generation = len(counter.read())
    counter.write("x")
mode = modes[min(generation, len(modes) - 1)]

report = {
    "generation": generation,
    "pid": os.getpid(),
    "pgid": os.getpgid(0),
    "listen_pid": os.environ.get("LISTEN_PID"),
    "listen_fds": os.environ.get("LISTEN_FDS"),
    "listen_fdnames": os.environ.get("LISTEN_FDNAMES"),
    "notify_socket": os.environ.get("NOTIFY_SOCKET"),
    "fd3_listening": socket.socket(fileno=3).getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1,
}

kind, _, code = mode.partition(":")
if kind == "orphan":
    report["orphan"] = subprocess.Popen(["sleep", "300"]).pid
print(json.dumps(report), flush=True)

if kind in ("exit", "orphan"):
    os._exit(int(code))

if kind == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

# Before READY=1: the supervisor may forward a signal as soon as it reads
# it, and one that arrived first would end this child with its default action.
stop = []
stop_signals = [signal.SIGINT, signal.SIGHUP]
if kind != "stubborn":
    stop_signals.append(signal.SIGTERM)
for signum in stop_signals:
    signal.signal(signum, lambda signum, frame: stop.append(signum))

if kind in ("ready", "stubborn"):
    address = os.environ["NOTIFY_SOCKET"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect("\0" + address[1:] if address.startswith("@") else address)
        sock.sendall(b"READY=1\nSTATUS=test child ready")
deadline = time.monotonic() + 60
while not stop and time.monotonic() < deadline:
    time.sleep(0.02)
sys.exit(0 if stop else 1)
