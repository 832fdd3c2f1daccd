"""Keep a listening socket across a restart while clients connect to it.

Usage: accept_queue.py CLIENT_COUNT

The first run listens on 127.0.0.1, prints its port as JSON, waits for a line
on stdin and calls fdpass.reexec() with the listener. Clients that connect
meanwhile wait in the accept queue. The new run accepts CLIENT_COUNT
connections and replies to each client's line with "LINE PID".
"""

import json
import os
import socket
import sys

import fdpass


def main() -> None:
    client_count = int(sys.argv[1])
    inherited = fdpass.inherit()

    if "HELPER_RESTARTED" not in os.environ:
        listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        print(json.dumps({"run": "first", "port": listener.getsockname()[1]}), flush=True)
        sys.stdin.readline()
        fdpass.reexec({"listener": listener}, env={**os.environ, "HELPER_RESTARTED": "1"})

    listener = inherited["listener"]
    listener.settimeout(15)
    print(json.dumps({"run": "second", "pid": os.getpid()}), flush=True)
    for _ in range(client_count):
        conn, _ = listener.accept()
        with conn, conn.makefile("rwb") as stream:
            line = stream.readline().strip()
            stream.write(line + f" {os.getpid()}\n".encode())
            stream.flush()


if __name__ == "__main__":
    main()
