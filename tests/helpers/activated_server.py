"""A server started by systemd-socket-activate with --fdname=web.

Usage: activated_server.py PORT inherit-first|listen-first

It finds its listener by name through fdpass.inherit() and checks that
fdpass.listen(("127.0.0.1", PORT)) returns the same socket. It replies on the
connection that woke it, restarts with fdpass.reexec() (which passes what
listen() returned) and the new run replies on one more connection.
"""

import json
import os
import socket
import sys

import fdpass


def reply_once(listener: socket.socket, run: str) -> None:
    listener.settimeout(15)
    conn, _ = listener.accept()
    with conn, conn.makefile("rwb") as stream:
        request = stream.readline().decode().strip()
        stream.write(f"{request} {run} {os.getpid()}\n".encode())
        stream.flush()


def main() -> None:
    port = int(sys.argv[1])
    if sys.argv[2] == "listen-first":
        listener = fdpass.listen(("127.0.0.1", port))
        inherited = fdpass.inherit()
    else:
        inherited = fdpass.inherit()
        listener = fdpass.listen(("127.0.0.1", port))
    descriptions = [[d.fd, d.name, d.kind, d.family, d.type, d.listening] for d in inherited.descriptions]
    run = "second" if "HELPER_RESTARTED" in os.environ else "first"

    report = {
        "run": run,
        "pid": os.getpid(),
        "descriptions": descriptions,
        "inherit_by_name": inherited["web"].fileno() if "web" in inherited else None,
        "listen_is_inherited": "web" in inherited and listener is inherited["web"],
        "listen_fd": listener.fileno(),
        "sockname": list(listener.getsockname()),
    }
    print(json.dumps(report), flush=True)
    reply_once(listener, run)

    if run == "first":
        fdpass.reexec(env={**os.environ, "HELPER_RESTARTED": "1"})


if __name__ == "__main__":
    main()
