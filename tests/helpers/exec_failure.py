"""Fail to restart with bad executables, keep serving, then restart for real.

Usage: exec_failure.py BAD_EXECUTABLE...

The first run opens a TCP listener, a socketpair and an inheritable pipe,
blocks SIGUSR1 (left at SIG_DFL) and SIGUSR2 (given a handler), and
records its fds, their FD_CLOEXEC flags and the signal masks from
/proc/self/status. For each BAD_EXECUTABLE it calls
fdpass.reexec(executable=...) and records the OSError and whether anything
changed. It prints that report, serves one connection on the listener, and
restarts with the default executable. The new run reports what it adopted.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys

import fdpass


def process_state() -> dict[str, object]:
    fds = {}
    for entry in sorted(os.listdir("/proc/self/fd"), key=int):
        fd = int(entry)
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the directory fd that os.listdir() used
        fds[fd] = [target, bool(flags & fcntl.FD_CLOEXEC)]

    with open("/proc/self/status") as status:
        signals = {line.split(":")[0]: line.split()[1] for line in status if line.startswith(("SigBlk", "SigIgn"))}
    return {"fds": fds, "signals": signals}


def main() -> None:
    inherited = fdpass.inherit()

    if "HELPER_RESTARTED" in os.environ:
        report = {"run": "second", "pid": os.getpid(), "names": list(inherited), "signals": process_state()["signals"]}
        print(json.dumps(report), flush=True)
        return

    signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
    listener = socket.create_server(("127.0.0.1", 0))
    pair_end, peer_end = socket.socketpair()
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    passed = {"listener": listener, "pair": pair_end, "pipe": read_end}
    before = process_state()

    attempts = []
    for executable in sys.argv[1:]:
        try:
            fdpass.reexec(passed, executable=executable, env={**os.environ, "HELPER_RESTARTED": "1"})
        except OSError as error:
            attempts.append(
                {
                    "executable": executable,
                    "errno": error.errno,
                    "filename": error.filename,
                    "message": str(error),
                    "state_kept": process_state() == before,
                    "listen_env": sorted(key for key in os.environ if key.startswith("LISTEN_")),
                }
            )
        else:
            attempts.append({"executable": executable, "error": "reexec returned without raising"})

    print(json.dumps({"run": "first", "pid": os.getpid(), "port": listener.getsockname()[1], "attempts": attempts,
                      "before": before, "after": process_state()}), flush=True)

    listener.settimeout(15)
    conn, _ = listener.accept()
    with conn:
        conn.sendall(f"alive {os.getpid()}\n".encode())
    pair_end.sendall(b"pair works")
    os.write(write_end, b"pipe works")
    print(json.dumps({"pair": peer_end.recv(100).decode(), "pipe": os.read(read_end, 100).decode()}), flush=True)

    fdpass.reexec(passed, env={**os.environ, "HELPER_RESTARTED": "1"})


if __name__ == "__main__":
    main()
