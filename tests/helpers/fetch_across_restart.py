"""Send a request over TCP, restart before reading, read the response after.

Usage: fetch_across_restart.py PORT OUTPUT_PATH

The first run connects to 127.0.0.1:PORT, sends one request line, waits until
the response has started to arrive, and calls fdpass.reexec() without
reading a byte; HELPER_RESTARTED marks the new run. The new run adopts the connection, reads until EOF and writes
the bytes to OUTPUT_PATH. Each run prints one JSON line.
"""

import json
import os
import select
import socket
import sys

import fdpass


def main() -> None:
    port = int(sys.argv[1])
    output_path = sys.argv[2]
    inherited = fdpass.inherit()

    if "HELPER_RESTARTED" not in os.environ:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /payload\n")
        # Wait until response bytes sit in the kernel buffer, so the restart
        # happens with unread data queued.
        readable, _, _ = select.select([sock], [], [], 10)
        print(json.dumps({"run": "first", "pid": os.getpid(), "readable": bool(readable)}), flush=True)
        fdpass.reexec({"conn": sock}, env={**os.environ, "HELPER_RESTARTED": "1"})

    if "conn" not in inherited:
        print(json.dumps({"run": "second", "error": f"nothing inherited: {inherited!r}"}), flush=True)
        sys.exit(1)
    sock = inherited["conn"]
    sock.settimeout(10)
    chunks = []
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    data = b"".join(chunks)
    with open(output_path, "wb") as output:
        output.write(data)
    print(
        json.dumps(
            {
                "run": "second",
                "pid": os.getpid(),
                "length": len(data),
                "family": int(sock.family),
                "peer": list(sock.getpeername()),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
