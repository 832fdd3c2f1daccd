"""Soak test: many consecutive in-place restarts under traffic.

Not part of the quick suite: the soak marker is deselected by default. Run it
with ``pytest -m soak tests/soak``. FDPASS_SOAK_RESTARTS sets the number of
restarts (default 200).

While soak_server.py restarts itself, one peer streams pseudo-random bytes
over a connection established before the first restart and reads the echo,
and a client keeps opening new connections to the listener. At the end the
echo must equal what was sent (SHA-256 and length), no connection may be
refused or fail, and the set of open fds must be the same before every
restart.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import socket
import threading
import time

import pytest

pytestmark = pytest.mark.soak

SERVER = pathlib.Path(__file__).parent / "soak_server.py"
RESTARTS = int(os.environ.get("FDPASS_SOAK_RESTARTS", "200"))
#: How long each run of the server serves before it restarts.
GENERATION_SECONDS = 0.02
#: Seconds the whole soak may take before the test fails.
MAX_SECONDS = 300.0
CHUNK_SIZE = 16 * 1024


class Peer:
    """Streams pseudo-random bytes over one connection and reads the echo in a second thread."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sent = hashlib.sha256()
        self.received = hashlib.sha256()
        self.sent_bytes = 0
        self.received_bytes = 0
        self.errors: list[BaseException] = []
        self.stop_sending = threading.Event()
        self._rng = random.Random(1234)
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        try:
            while not self.stop_sending.is_set() and time.monotonic() < deadline:
                chunk = self._rng.randbytes(CHUNK_SIZE)
                self.sock.sendall(chunk)
                self.sent.update(chunk)
                self.sent_bytes += len(chunk)
                # A pause per chunk bounds the bytes in flight while the server restarts.
                time.sleep(0.002)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            self.errors.append(error)

    def _receive(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return
                self.received.update(chunk)
                self.received_bytes += len(chunk)
        except OSError as error:
            self.errors.append(error)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.sock.close()


class Clients:
    """Opens one new connection after another and counts replies, refusals and other errors."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers = 0
        self.generations: set[int] = set()
        self.refusals = 0
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=30) as conn:
                    conn.sendall(b"ping\n")
                    reply = b""
                    while not reply.endswith(b"\n"):
                        chunk = conn.recv(64)
                        if not chunk:
                            raise ConnectionError(f"connection closed after {reply!r}")
                        reply += chunk
            except ConnectionRefusedError:
                self.refusals += 1
                continue
            except OSError as error:
                self.errors.append(error)
                continue
            self.answers += 1
            self.generations.add(int(reply.split()[1]))

    def join(self, timeout: float) -> None:
        self.stop.set()
        self._thread.join(timeout)


@pytest.mark.timeout(MAX_SECONDS + 60)
def test_restarts_under_traffic_lose_nothing(children):
    """RESTARTS in-place restarts under a byte stream and new connections: no loss, no refusal, flat fds."""
    server = children.python(SERVER, str(RESTARTS), str(GENERATION_SECONDS))
    port = server.read_json()["port"]
    peer = Peer(port)
    clients = Clients(port)
    peer.start()
    clients.start()

    fd_tables = []
    try:
        for expected_generation in range(RESTARTS):
            line = server.read_json(timeout=30)
            assert line.get("generation") == expected_generation, line
            fd_tables.append(line["fds"])
        assert server.read_json(timeout=30) == {"done": RESTARTS}
    finally:
        peer.stop_sending.set()
        clients.join(30)
        peer.join(60)
    status, _, stderr = server.finish(timeout=30)
    print(
        f"soak: {RESTARTS} restarts, {peer.received_bytes} of {peer.sent_bytes} bytes echoed, "
        f"{clients.answers} connections answered by {len(clients.generations)} generations, "
        f"{clients.refusals} refused, fds before each restart {fd_tables[0] if fd_tables else None}"
    )

    assert status == 0, stderr
    assert peer.errors == []
    assert clients.errors == []
    assert clients.refusals == 0
    assert clients.answers > 0
    assert len(clients.generations) > 1
    assert peer.sent_bytes > 0
    assert peer.received_bytes == peer.sent_bytes
    assert peer.received.hexdigest() == peer.sent.hexdigest()
    assert len(fd_tables) == RESTARTS
    assert all(table == fd_tables[0] for table in fd_tables), fd_tables
