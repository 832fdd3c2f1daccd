"""A loop.create_server(sock=...) HTTP server for the fdpass run supervisor.

Usage: asyncio_server.py

It serves the socket passed as LISTEN_FDS (fdpass.listen() on port 0 matches
an inherited socket on any port), sends READY=1 to NOTIFY_SOCKET once it
accepts, and answers every request with "PID PGID". On SIGTERM it stops
accepting, answers its open connections and exits 0. examples/asyncio_restart.py
explains the order of the shutdown steps.
"""

import asyncio
import os
import signal
import socket

import fdpass

BODY = f"{os.getpid()} {os.getpgid(0)}\n".encode()
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY)

open_connections = set()


class HttpProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.request = b""
        self.closed = asyncio.get_running_loop().create_future()
        open_connections.add(self.closed)

    def data_received(self, data):
        self.request += data
        if b"\r\n\r\n" in self.request:
            self.transport.write(RESPONSE)
            self.transport.close()

    def connection_lost(self, exc):
        self.closed.set_result(None)
        open_connections.discard(self.closed)


def notify_ready():
    address = os.environ["NOTIFY_SOCKET"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect("\0" + address[1:] if address.startswith("@") else address)
        sock.sendall(b"READY=1")


async def main():
    loop = asyncio.get_running_loop()
    listener = fdpass.listen(("127.0.0.1", 0), name="http")
    serving = listener.dup()
    server = await loop.create_server(HttpProtocol, sock=serving)

    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    notify_ready()
    await stop

    loop.remove_reader(serving.fileno())
    for _ in range(3):
        await asyncio.sleep(0)
    server.close()
    if open_connections:
        await asyncio.wait(list(open_connections), timeout=10)


asyncio.run(main())
