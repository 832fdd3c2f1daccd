"""A line echo server that restarts in place on SIGHUP and keeps every connection.

    python examples/sighup_server.py --port 8000
    kill -HUP <pid>      # runs the code now on disk, in the same process

Each reply names the process ID and the run number, so a client can watch the
same connection being served by a new run of the program. On SIGHUP the
handler only sets a flag. The main loop then calls fdpass.reexec() with the
listener and every open connection, by name. The new run gets them back from
fdpass.inherit() and fdpass.listen(). Bytes that clients send during the
restart wait in the kernel and are read by the new run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import signal
import socket

import fdpass

log = logging.getLogger("sighup_server")

LISTENER_NAME = "echo"
CLIENT_PREFIX = "client-"
RUN_VARIABLE = "SIGHUP_SERVER_RUN"
#: Carries each connection's unfinished line (hex, by fd name) to the new run.
PARTIAL_VARIABLE = "SIGHUP_SERVER_PARTIAL_LINES"


class Server:
    """The listener, the open connections and each connection's unfinished line."""

    def __init__(self, listener: socket.socket, connections: dict[socket.socket, bytes], run: int) -> None:
        self.listener = listener
        self.run = run
        self.restart_requested = False
        self.selector = selectors.DefaultSelector()
        self.partial_lines: dict[socket.socket, bytes] = {}

        # A signal handler runs only between bytecodes, so select() must wake
        # up: set_wakeup_fd() writes the signal number to this socket.
        self.wakeup_reader, wakeup_writer = socket.socketpair()
        wakeup_writer.setblocking(False)
        self.wakeup_writer = wakeup_writer
        signal.set_wakeup_fd(wakeup_writer.fileno())
        signal.signal(signal.SIGHUP, self.request_restart)

        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wakeup_reader, selectors.EVENT_READ)
        for conn, partial_line in connections.items():
            self.add_connection(conn, partial_line)

    def request_restart(self, signum: int, frame: object) -> None:
        self.restart_requested = True

    def add_connection(self, conn: socket.socket, partial_line: bytes = b"") -> None:
        # A timeout keeps sendall() from blocking forever on a stuck client.
        conn.settimeout(5)
        self.partial_lines[conn] = partial_line
        self.selector.register(conn, selectors.EVENT_READ)

    def close_connection(self, conn: socket.socket) -> None:
        self.selector.unregister(conn)
        del self.partial_lines[conn]
        conn.close()

    def serve_until_restart(self) -> None:
        while not self.restart_requested:
            for key, _ in self.selector.select():
                if key.fileobj is self.wakeup_reader:
                    self.wakeup_reader.recv(64)
                elif key.fileobj is self.listener:
                    self.accept()
                else:
                    self.echo(key.fileobj)  # type: ignore[arg-type]

    def accept(self) -> None:
        try:
            conn, peer = self.listener.accept()
        except BlockingIOError:
            return
        log.info("accepted %s", peer)
        self.add_connection(conn)

    def echo(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except OSError as error:
            log.warning("closing a connection after recv() failed: %s", error)
            self.close_connection(conn)
            return
        if not data:
            self.close_connection(conn)
            return

        *lines, rest = (self.partial_lines[conn] + data).split(b"\n")
        self.partial_lines[conn] = rest
        try:
            for line in lines:
                conn.sendall(f"pid {os.getpid()} run {self.run}: ".encode() + line + b"\n")
        except OSError as error:
            log.warning("closing a connection after sendall() failed: %s", error)
            self.close_connection(conn)

    def restart(self) -> None:
        """Run this program again in this process, passing the listener and every connection."""
        fds: dict[str, socket.socket] = {LISTENER_NAME: self.listener}
        partial_lines = {}
        for index, (conn, partial_line) in enumerate(self.partial_lines.items()):
            fds[f"{CLIENT_PREFIX}{index}"] = conn
            partial_lines[f"{CLIENT_PREFIX}{index}"] = partial_line.hex()
        env = {**os.environ, RUN_VARIABLE: str(self.run + 1), PARTIAL_VARIABLE: json.dumps(partial_lines)}
        log.info("restarting with %d open connections", len(fds) - 1)

        # An ignored signal stays ignored across execve, so a SIGHUP that
        # arrives before the new run installs its handler cannot kill it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            fdpass.reexec(fds, env=env)
        except OSError as error:
            log.error("restart failed, still serving: %s", error)
            signal.signal(signal.SIGHUP, self.request_restart)
            self.restart_requested = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one (default: 8000)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    inherited = fdpass.inherit()
    listener = fdpass.listen((options.host, options.port), name=LISTENER_NAME)
    partial_lines = json.loads(os.environ.pop(PARTIAL_VARIABLE, "{}"))
    connections = {
        obj: bytes.fromhex(partial_lines.get(description.name, ""))
        for description, obj in zip(inherited.descriptions, inherited.objects, strict=True)
        if description.name.startswith(CLIENT_PREFIX) and isinstance(obj, socket.socket)
    }
    run = int(os.environ.get(RUN_VARIABLE, "1"))

    server = Server(listener, connections, run)
    host, port = listener.getsockname()[:2]
    print(f"pid {os.getpid()} run {run}: serving on {host}:{port} with {len(connections)} kept connections", flush=True)
    while True:
        server.serve_until_restart()
        server.restart()


if __name__ == "__main__":
    main()
