"""The asyncio line-echo server that bench_upgrade.py upgrades, with fdpass or tableflip.

Both libraries run the same server: one listening TCP socket served by
asyncio.start_server(), an upgrade on SIGHUP, and on hand-over the old
generation closes its server and exits. Only the library calls differ.
Every generation writes JSON events, one per line, to the shared stdout:
"ready" (with the parent PID and the CPU time this generation used until
ready()), "upgraded" (with the seconds that upgrade()
took), "upgrade-failed" and "exit".

"fdpass-threads" runs the same server on threads without asyncio, which
only fdpass allows, since tableflip's API is asyncio-only. "fdpass-prestart"
is the asyncio server with Upgrader(prestart=True), so each new generation
is a standby that the previous one started after its ready(), forked from
the standby before it. "fdpass-prestart-exec" adds prestart_fork=False, so
each standby is a fresh interpreter.

Usage: python upgrade_server.py {fdpass|fdpass-prestart|fdpass-prestart-exec|fdpass-threads|tableflip} PORT
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

# asyncio is imported inside the functions that use it: the fdpass-threads
# server must not pay for importing it, or the comparison would not show
# what a program without asyncio saves.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio


def emit(event: str, **fields: object) -> None:
    # One write() of less than PIPE_BUF bytes, so lines of several generations never interleave.
    os.write(1, (json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n").encode())


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request = await reader.readline()
        writer.write(f"{os.getpid()} ".encode() + request)
        await writer.drain()
    finally:
        writer.close()


async def drain(server: asyncio.Server) -> None:
    """Stop accepting and finish every request in flight, without shutdown() on the shared socket.

    In CPython 3.12.1, a connection accepted just before Server.close() gets
    its transport after the close, which fails the assert in
    Server._attach(), and the connection is dropped. So the listening fd
    leaves the event loop first, the accepts in progress get time to finish,
    and only then is it closed.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    for sock in server.sockets:
        loop.remove_reader(sock.fileno())
    await asyncio.sleep(0.05)
    server.close()
    try:
        await asyncio.wait_for(server.wait_closed(), 10)
    except TimeoutError:
        emit("drain-timeout")


async def serve_fdpass(port: int, prestart: bool = False, prestart_fork: bool = True) -> None:
    # Read before ready(), because the parent may exit as soon as ready() returns.
    parent = os.getppid()
    import asyncio

    import fdpass

    upgrader = fdpass.Upgrader(upgrade_timeout=30, prestart=prestart, prestart_fork=prestart_fork)
    sock = upgrader.listen(("127.0.0.1", port))
    server = await asyncio.start_server(handle, sock=sock)

    async def upgrade() -> None:
        started_at = time.monotonic()
        started = time.perf_counter()
        try:
            new_pid = await upgrader.upgrade_async()
        except fdpass.UpgradeError as error:
            emit("upgrade-failed", error=str(error))
        else:
            emit(
                "upgraded",
                seconds=time.perf_counter() - started,
                new_pid=new_pid,
                started_at=started_at,
                ended_at=time.monotonic(),
            )

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(upgrade()))
    ready_at = time.monotonic()
    cpu_seconds = time.process_time()
    upgrader.ready()
    emit("ready", parent=parent, ready_at=ready_at, cpu_seconds=cpu_seconds)
    if upgrader.has_parent:
        await upgrader.wait_for_parent_async()
        emit("parent-gone")

    await upgrader.wait_exit_async()
    await drain(server)


async def serve_tableflip(port: int) -> None:
    parent = os.getppid()
    import asyncio

    import tableflip

    upgrader = await tableflip.Upgrader.new(tableflip.Options(upgrade_timeout=30))
    sock = await upgrader.fds.listen("127.0.0.1", port)
    server = await asyncio.start_server(handle, sock=sock)

    async def upgrade() -> None:
        started_at = time.monotonic()
        started = time.perf_counter()
        try:
            await upgrader.upgrade()
        except Exception as error:
            emit("upgrade-failed", error=repr(error))
        else:
            emit("upgraded", seconds=time.perf_counter() - started, started_at=started_at, ended_at=time.monotonic())

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(upgrade()))
    ready_at = time.monotonic()
    cpu_seconds = time.process_time()
    await upgrader.ready()
    emit("ready", parent=parent, ready_at=ready_at, cpu_seconds=cpu_seconds)
    if upgrader.has_parent():
        await upgrader.wait_for_parent()
        emit("parent-gone")

    await upgrader.exit().wait()
    await drain(server)


def serve_fdpass_threads(port: int) -> None:
    """Serve the same way on threads, without asyncio, which fdpass does not need."""
    parent = os.getppid()
    import selectors
    import socket
    import threading

    import fdpass

    # A Python signal handler runs only in the main thread, which waits below,
    # so SIGHUP is blocked everywhere and taken by one thread with sigwait().
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    upgrader = fdpass.Upgrader(upgrade_timeout=30)
    listener = upgrader.listen(("127.0.0.1", port))
    listener.setblocking(False)
    stop_read, stop_write = os.pipe()
    handlers: list[threading.Thread] = []

    def handle_connection(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            request = b""
            while not request.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            conn.sendall(f"{os.getpid()} ".encode() + request)

    def accept_loop() -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(stop_read, selectors.EVENT_READ)
            while True:
                if any(key.fileobj == stop_read for key, _ in selector.select()):
                    return
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                thread = threading.Thread(target=handle_connection, args=(conn,), daemon=True)
                thread.start()
                handlers.append(thread)

    def take_sighup() -> None:
        while True:
            signal.sigwait({signal.SIGHUP})
            started_at = time.monotonic()
            started = time.perf_counter()
            try:
                new_pid = upgrader.upgrade()
            except fdpass.UpgradeError as error:
                emit("upgrade-failed", error=str(error))
            else:
                emit(
                    "upgraded",
                    seconds=time.perf_counter() - started,
                    new_pid=new_pid,
                    started_at=started_at,
                    ended_at=time.monotonic(),
                )
                return

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    upgrades = threading.Thread(target=take_sighup, daemon=True)
    upgrades.start()
    ready_at = time.monotonic()
    cpu_seconds = time.process_time()
    upgrader.ready()
    emit("ready", parent=parent, ready_at=ready_at, cpu_seconds=cpu_seconds)
    if upgrader.has_parent:
        upgrader.wait_for_parent()
        emit("parent-gone")

    upgrader.wait_exit()
    upgrades.join(30)
    os.write(stop_write, b"x")
    acceptor.join(10)
    listener.close()
    for thread in handlers:
        thread.join(10)


async def run(library: str, port: int) -> None:
    if library == "fdpass-prestart":
        await serve_fdpass(port, prestart=True)
    elif library == "fdpass-prestart-exec":
        await serve_fdpass(port, prestart=True, prestart_fork=False)
    else:
        serve = {"fdpass": serve_fdpass, "tableflip": serve_tableflip}[library]
        await serve(port)
    emit("exit")
    # tableflip waits for its child with Popen.wait() in asyncio's default
    # executor, so asyncio.run() would not return until the new generation
    # exits. os._exit() ends the old generation of either library here.
    os._exit(0)


def settle_malloc() -> None:
    """Put glibc's malloc in the same state in every server, whatever its library did before.

    glibc serves an allocation above its mmap threshold (128 KiB at start)
    with mmap(), and raises the threshold to the size of such a block once
    one is freed whole. asyncio reads each connection into a 256 KiB buffer,
    so until that happens every request costs an mmap(), an mremap() and a
    munmap(). tableflip's new generations happen to free such a buffer at
    start and fdpass's do not, so the same server replied faster under
    tableflip (a median of 0.145 against 0.168 ms in one measurement on
    2 cores, see docs/benchmarks.md). Freeing a 512 KiB block here gives
    every side the raised threshold.
    """
    block = bytearray(512 * 1024)
    del block


if __name__ == "__main__":
    settle_malloc()
    if sys.argv[1] == "fdpass-threads":
        serve_fdpass_threads(int(sys.argv[2]))
        emit("exit")
        os._exit(0)

    import asyncio

    asyncio.run(run(sys.argv[1], int(sys.argv[2])))
