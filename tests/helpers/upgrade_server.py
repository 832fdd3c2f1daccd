"""A line-echo server that upgrades itself with fdpass.Upgrader on SIGHUP.

Every generation shares this process's stdout pipe and writes one JSON event
per line to it: "ready", "upgraded", "upgrade-failed", "parent-gone",
"warning", "exit", and the start-up modes' "crashing" and "hanging". Each
response is "<pid> <request line>\n", so the client sees which generation
answered.

The control file (JSON) is read by each generation when it starts and again
when it exits, so the test can steer the next generation:

- "startup": "ok", "crash" (exit 3 before ready), "hang" (never ready), or
  "slow" (sleep "slow_seconds" before ready); applies to generations that
  have a parent.
- "nonblocking": true puts the listener in non-blocking mode (the default).
- "listener_timeout": seconds or null for listener.settimeout(), in place of
  "nonblocking". "ready" reports the timeout the listener arrived with.
- "double": true makes SIGHUP start two upgrades at once.
- "linger": seconds the old generation stays alive after it stopped serving.
- "extra_fd": a file path that the first generation opens inheritable and
  does not pass on.
- "pass_file": a file path that each upgrade opens and passes with
  upgrade(fds={"passed-file": fd}); the new generation reports what it reads.

With --asyncio, upgrades, wait_exit() and wait_for_parent() run through the
Upgrader's asyncio variants.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import warnings

import fdpass

listen_pid_at_start = os.environ.get("LISTEN_PID")
write_lock = threading.Lock()


def emit(event: str, **fields: object) -> None:
    line = json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n"
    # One write() of less than PIPE_BUF bytes, so lines of several generations never interleave.
    with write_lock:
        os.write(1, line.encode())


def read_control(path: str) -> dict:
    try:
        with open(path) as stream:
            return json.load(stream)
    except FileNotFoundError:
        return {}


def fd_targets() -> dict[str, str]:
    targets = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            targets[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
    return targets


def passed_file_content() -> str | None:
    """Return the content of the inherited fd named "passed-file", or None."""
    inherited = fdpass.inherit()
    if "passed-file" not in inherited:
        return None
    stream = inherited["passed-file"]
    stream.seek(0)
    return stream.read().decode()


def handle(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(10)
        request = b""
        while not request.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        conn.sendall(f"{os.getpid()} ".encode() + request)


def serve(listener: socket.socket, stop_read: int, handlers: list[threading.Thread]) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(listener, selectors.EVENT_READ)
        selector.register(stop_read, selectors.EVENT_READ)
        while True:
            events = selector.select()
            if any(key.fileobj == stop_read for key, _ in events):
                return
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError, TimeoutError):
                # The other generation accepted this connection first.
                continue
            thread = threading.Thread(target=handle, args=(conn,), daemon=True)
            thread.start()
            handlers.append(thread)


def busy(stop: threading.Event, counter: list[int]) -> None:
    while not stop.is_set():
        counter[0] += sum(range(200))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--pid-file")
    parser.add_argument("--busy-threads", type=int, default=0)
    parser.add_argument("--asyncio", action="store_true")
    args = parser.parse_args()

    # A Python signal handler runs only in the main thread, and only once that
    # thread wakes up. If the kernel delivers SIGHUP to another thread while
    # the main thread waits in wait_exit(), the handler does not run. So every
    # thread blocks SIGHUP, and one thread takes it with sigwait().
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})

    warnings.simplefilter("always")
    warnings.showwarning = lambda message, category, *rest: emit(
        "warning", category=category.__name__, message=str(message)
    )

    control = read_control(args.control)
    upgrader = fdpass.Upgrader(upgrade_timeout=args.timeout, pid_file=args.pid_file)
    startup = control.get("startup", "ok") if upgrader.has_parent else "ok"
    if startup == "crash":
        emit("crashing")
        return 3
    if startup == "hang":
        emit("hanging")
        time.sleep(600)
        return 4
    if startup == "slow":
        time.sleep(control.get("slow_seconds", 1.0))

    if control.get("extra_fd") and not upgrader.has_parent:
        extra = os.open(control["extra_fd"], os.O_RDONLY)
        os.set_inheritable(extra, True)

    if args.address.startswith("/"):
        address: object = args.address
    else:
        host, port = args.address.rsplit(":", 1)
        address = (host, int(port))
    listener = upgrader.listen(address)
    initial_blocking = listener.getblocking()
    initial_timeout = listener.gettimeout()
    if "listener_timeout" in control:
        listener.settimeout(control["listener_timeout"])
    elif control.get("nonblocking", True):
        listener.setblocking(False)

    stop_busy = threading.Event()
    counters = [[0] for _ in range(args.busy_threads)]
    for counter in counters:
        threading.Thread(target=busy, args=(stop_busy, counter), daemon=True).start()

    stop_read, stop_write = os.pipe()
    handlers: list[threading.Thread] = []
    server = threading.Thread(target=serve, args=(listener, stop_read, handlers), daemon=True)
    server.start()

    state = fdpass.inherited_state()
    upgrades = [0]
    upgrade_threads: list[threading.Thread] = []

    def upgrade() -> None:
        upgrades[0] += 1
        payload = f"state from {os.getpid()} #{upgrades[0]}".encode()
        pass_file = read_control(args.control).get("pass_file")
        fds = {"passed-file": open(pass_file, "rb")} if pass_file else None
        try:
            if args.asyncio:
                new_pid = asyncio.run(upgrader.upgrade_async(state=payload, fds=fds))
            else:
                new_pid = upgrader.upgrade(state=payload, fds=fds)
        except fdpass.UpgradeError as error:
            emit("upgrade-failed", error=str(error), status=error.status, new_pid=error.pid)
        else:
            emit("upgraded", new_pid=new_pid, sent_state=payload.decode(), busy=[c[0] for c in counters])
        finally:
            for stream in (fds or {}).values():
                stream.close()

    def take_sighup() -> None:
        while True:
            signal.sigwait({signal.SIGHUP})
            copies = 2 if read_control(args.control).get("double") else 1
            for _ in range(copies):
                thread = threading.Thread(target=upgrade, daemon=True)
                thread.start()
                upgrade_threads.append(thread)

    def watch_parent() -> None:
        if args.asyncio:
            asyncio.run(upgrader.wait_for_parent_async())
        else:
            upgrader.wait_for_parent()
        emit("parent-gone", parent_pid=upgrader.parent_pid)

    threading.Thread(target=take_sighup, daemon=True).start()
    upgrader.ready()
    emit(
        "ready",
        has_parent=upgrader.has_parent,
        parent_pid=upgrader.parent_pid,
        listen_pid=listen_pid_at_start,
        initial_blocking=initial_blocking,
        initial_timeout=initial_timeout,
        address=listener.getsockname(),
        fds=fd_targets(),
        state=None if state is None else state.decode(),
        passed_file=passed_file_content(),
        # fdpass's own variables, which the Upgrader removes from os.environ.
        upgrade_variables=sorted(
            name for name in os.environ if name in ("FDPASS_READY_DEADLINE_NS", "FDPASS_PARENT_PID")
        ),
    )
    if upgrader.has_parent:
        threading.Thread(target=watch_parent, daemon=True).start()

    if args.asyncio:
        asyncio.run(upgrader.wait_exit_async())
    else:
        upgrader.wait_exit()

    # wait_exit() returns before upgrade() has returned in its thread; let it
    # write its event before this process exits.
    for thread in list(upgrade_threads):
        thread.join(30)
    os.write(stop_write, b"x")
    server.join(10)
    listener.close()
    for thread in handlers:
        thread.join(10)
    stop_busy.set()
    linger = read_control(args.control).get("linger", 0)
    if linger:
        time.sleep(linger)
    emit("exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
