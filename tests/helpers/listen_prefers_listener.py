"""Pass accepted connections ahead of their listeners, then call fdpass.listen() on their address.

Usage: listen_prefers_listener.py WORK_DIR

An accepted connection has its listener's local address, on TCP and on a
Unix path alike. The first run passes such connections before their
listeners. The new run reports whether listen() on that address returned the
listener, and what listen() returned for UDP on the TCP port.
"""

import json
import os
import socket
import sys

import fdpass


def main() -> None:
    path = os.path.join(sys.argv[1], "server.sock")
    inherited = fdpass.inherit()

    if "HELPER_RESTARTED" not in os.environ:
        listener = socket.create_server(("127.0.0.1", 0))
        _client = socket.create_connection(listener.getsockname(), timeout=10)
        conn, _ = listener.accept()
        unix_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix_listener.bind(path)
        unix_listener.listen()
        _unix_client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _unix_client.connect(path)
        unix_conn, _ = unix_listener.accept()
        fds = {"conn": conn, "listener": listener, "unix-conn": unix_conn, "unix-listener": unix_listener}
        fdpass.reexec(fds, env={**os.environ, "HELPER_RESTARTED": "1"})

    port = inherited["listener"].getsockname()[1]
    tcp = fdpass.listen(("127.0.0.1", port))
    unix = fdpass.listen(path)
    udp = fdpass.listen(("127.0.0.1", port), type=socket.SOCK_DGRAM)
    report = {
        "tcp_is_listener": tcp is inherited["listener"],
        "tcp_is_conn": tcp is inherited["conn"],
        "unix_is_listener": unix is inherited["unix-listener"],
        "unix_is_conn": unix is inherited["unix-conn"],
        "udp_type": int(udp.type),
        "udp_port": udp.getsockname()[1],
        "udp_is_inherited": any(udp is obj for obj in inherited.objects),
        "port": port,
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
