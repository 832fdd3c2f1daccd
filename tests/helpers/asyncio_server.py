"""An asyncio HTTP server that keeps its listening socket across restarts.

Usage: asyncio_server.py start_server|create_server PORT

start_server serves through asyncio.start_server(sock=...), create_server
through loop.create_server(sock=...). The listening socket comes from
fdpass.listen(), so it is inherited when LISTEN_FDS passes one. asyncio gets
a dup of it, because Server.close() closes the socket it was given and the
original must stay open for the next run.

SIGHUP restarts in place: stop accepting, finish open connections, then
fdpass.reexec(). SIGTERM does the same and exits. Each run prints one JSON
line with its generation and answers every request with "PID.GENERATION
PGID". It sends READY=1 to NOTIFY_SOCKET once it accepts.
"""

import asyncio
import json
import os
import signal
import socket
import sys

import fdpass

GENERATION = int(os.environ.get("TEST_GENERATION", "0"))
SERVER_ID = f"{os.getpid()}.{GENERATION}".encode()
BODY = SERVER_ID + f" {os.getpgid(0)}\n".encode()
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY)

open_connections = 0
drained = None


def connection_closed():
    global open_connections
    open_connections -= 1
    if open_connections == 0 and drained is not None:
        drained.set()


async def handle_stream(reader, writer):
    global open_connections
    open_connections += 1
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(RESPONSE)
        await writer.drain()
    finally:
        writer.close()
        connection_closed()


class HttpProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        global open_connections
        open_connections += 1
        self.transport = transport
        self.request = b""

    def data_received(self, data):
        self.request += data
        if b"\r\n\r\n" in self.request:
            self.transport.write(RESPONSE)
            self.transport.close()

    def connection_lost(self, exc):
        connection_closed()


def notify_ready():
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect("\0" + address[1:] if address.startswith("@") else address)
        sock.sendall(b"READY=1")


async def main(mode, port):
    global drained
    listener = fdpass.listen(("127.0.0.1", port), name="http")
    loop = asyncio.get_running_loop()
    serving = listener.dup()
    if mode == "start_server":
        server = await asyncio.start_server(handle_stream, sock=serving)
    else:
        server = await loop.create_server(HttpProtocol, sock=serving)

    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGHUP, lambda: stop.done() or stop.set_result("restart"))
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result("exit"))
    notify_ready()
    print(json.dumps({"generation": GENERATION, "port": listener.getsockname()[1]}), flush=True)

    action = await stop
    # Server.close() drops a connection accepted in the same loop iteration,
    # because asyncio attaches it to the server one iteration later. So stop
    # accepting first, and let the last accepted connections reach
    # connection_made() and the handler (three iterations) before close().
    loop.remove_reader(serving.fileno())
    for _ in range(3):
        await asyncio.sleep(0)
    server.close()
    drained = asyncio.Event()
    if open_connections:
        await asyncio.wait_for(drained.wait(), 10)
    return action


action = asyncio.run(main(sys.argv[1], int(sys.argv[2])))
if action == "restart":
    fdpass.reexec(env={**os.environ, "TEST_GENERATION": str(GENERATION + 1)})
