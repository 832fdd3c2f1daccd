"""A socketserver.TCPServer HTTP server that restarts in place on SIGHUP.

Usage: socketserver_server.py PORT

The listening socket comes from fdpass.listen() and replaces the one
TCPServer would bind. On SIGHUP the server finishes the request it is
handling, stops, and calls fdpass.reexec(); on SIGTERM it stops and exits.
Each run prints one JSON line with its generation and answers every request
with "PID.GENERATION PGID".
"""

import json
import os
import signal
import socketserver
import sys
import threading

import fdpass

GENERATION = int(os.environ.get("TEST_GENERATION", "0"))
BODY = f"{os.getpid()}.{GENERATION} {os.getpgid(0)}\n".encode()
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY)


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        self.wfile.write(RESPONSE)


listener = fdpass.listen(("127.0.0.1", int(sys.argv[1])), name="http")
server = socketserver.TCPServer(listener.getsockname(), Handler, bind_and_activate=False)
server.socket.close()
server.socket = listener

requested = []
stop = threading.Event()


def on_signal(signum, frame):
    requested.append(signum)
    stop.set()


signal.signal(signal.SIGHUP, on_signal)
signal.signal(signal.SIGTERM, on_signal)

thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
thread.start()
print(json.dumps({"generation": GENERATION, "port": listener.getsockname()[1]}), flush=True)

while not stop.wait(1):
    pass
server.shutdown()
thread.join()

if requested[0] == signal.SIGHUP:
    fdpass.reexec(env={**os.environ, "TEST_GENERATION": str(GENERATION + 1)})
