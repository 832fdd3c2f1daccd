"""Print one JSON line: this PID, the LISTEN_* variables, and each passed socket."""

import json
import os
import socket
import sys

report = {
    "pid": os.getpid(),
    "env": {key: value for key, value in os.environ.items() if key.startswith("LISTEN_")},
    "sockets": [],
}
for fd in range(3, 3 + int(os.environ.get("LISTEN_FDS", "0"))):
    sock = socket.socket(fileno=fd)
    name = sock.getsockname()
    report["sockets"].append({
        "fd": fd,
        "family": int(sock.family),
        "type": int(sock.type),
        "address": name if not isinstance(name, bytes) else name.decode("latin-1"),
        "listening": bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)),
    })
    sock.detach()

print(json.dumps(report), flush=True)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
