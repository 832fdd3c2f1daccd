"""Restart listeners with different timeouts through fdpass.reexec(), and report what each arrives with.

The first run opens one loopback listener per entry of SETTINGS, applies the
setting, prints one JSON line with each listener's gettimeout(), and calls
fdpass.reexec(). With "--state" it passes state=b"x", so the new run gets a
memfd besides the sockets. The second run prints one JSON line with each
listener's gettimeout() and whether its fd has O_NONBLOCK.
"""

import fcntl
import json
import os
import sys

import fdpass

#: name -> the call applied to the listener in the first run.
SETTINGS = {
    "timed": lambda sock: sock.settimeout(2.5),
    "blocking": lambda sock: sock.settimeout(None),
    "nonblocking": lambda sock: sock.setblocking(False),
    # settimeout(gettimeout()) adds 1 ns to this one on CPython 3.11.
    "odd_timeout": lambda sock: sock.settimeout(0.134),
}

listeners = {name: fdpass.listen(("127.0.0.1", 0), name=name) for name in SETTINGS}

if os.environ.get("REEXEC_TIMEOUT_ROUND") != "2":
    os.environ["REEXEC_TIMEOUT_ROUND"] = "2"
    for name, apply in SETTINGS.items():
        apply(listeners[name])
    print(json.dumps({name: sock.gettimeout() for name, sock in listeners.items()}), flush=True)
    fdpass.reexec(state=b"x" if "--state" in sys.argv else None)

report = {
    name: {
        "timeout": sock.gettimeout(),
        "o_nonblock": bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK),
    }
    for name, sock in listeners.items()
}
print(json.dumps(report), flush=True)
sys.exit(0)
