"""A line-echo server that upgrades itself on SIGHUP with fdpass.Upgrader(prestart=...).

Every generation writes JSON events, one per line, to the shared stdout:
"ready" (with what this generation saw when it started: its fds, the PID and
control fd of the successor it forked as a standby, LISTEN_PID,
working directory, VERSION, the probe variable, and how __main__, sys.argv
and sys.path were set up), "upgrading",
"upgraded", "upgrade-failed", "crashing", "hanging", "stopping" and "stopped" (around
stop()), "standby" (once a
standby runs for this generation, which under a parent is after the parent
exited), "worker-exited" (with --fork-workers, the exit code of a forked
worker), "log" (the fdpass logger's records at INFO and above, with the
name of the thread that logged) and "exit".
"upgraded" and "upgrade-failed" carry max_loop_gap, the longest time in
seconds that the event loop of upgrade_async() did not run its ticker. With
--asyncio, "ready" also carries asyncio_tasks: "ok", or how asyncio's task
tracking failed in this generation. Each response is
"<pid> <request line>\\n".

The control file (JSON) steers upgrades; it is read on each SIGHUP and when
a generation starts:
- "setenv": variables the old generation sets in os.environ before upgrade();
- "chdir": a directory it changes into before upgrade();
- "crash": true makes a generation with a parent exit with status 3 before ready().
- "hang": true makes a generation with a parent sleep 600 s before ready(),
  and "before-upgrader" before it creates its Upgrader.
- "linger": seconds a generation waits before it exits, once it stopped serving.
- "prestart": the prestart value of a generation with a parent, in place of --prestart.
- "stop_during_upgrade": seconds after the upgrade starts at which another
  thread calls stop().
- "upgrade_token": a file path. The first generation with a parent that
  removes it sends itself SIGHUP as soon as its parent has exited (with
  --ready-in-loop blocked, from the blocked loop).

--listener-timeout sets the listener's timeout in each generation: "nonblocking"
(the default) for setblocking(False), "none" for settimeout(None), or seconds.
"ready" carries initial_timeout, the timeout the listener arrived with.

SIGTERM makes the current generation call stop() and exit.
"""

from __future__ import annotations

import os
import sys


def fd_targets() -> dict[str, str]:
    targets = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            targets[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the fd that listdir() used, closed by now
    return targets


# Read first, before this program opens any fd of its own.
start_fds = fd_targets()
start_listen_pid = os.environ.get("LISTEN_PID")
start_probe = os.environ.get("FDPASS_TEST_PROBE")
start_cwd = os.getcwd()
# The standby that this generation forked before its hand-over, if it started as one.
_successor = getattr(sys.modules.get("fdpass._standby"), "successor", None)
start_successor_pid = None if _successor is None else _successor.pid
start_successor_fd = None if _successor is None else str(_successor.control.fileno())

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import selectors  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import fdpass  # noqa: E402

VERSION = 1


def emit(event: str, **fields: object) -> None:
    # One write() of less than PIPE_BUF bytes, so lines of several generations never interleave.
    os.write(1, (json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n").encode())


class EventHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        emit("log", level=record.levelname, message=record.getMessage(), thread=record.threadName)


def describe_main() -> dict:
    """Describe what the interpreter set up to run this program, to compare a standby with a cold start."""
    main = sys.modules["__main__"]
    spec = main.__dict__.get("__spec__")
    return {
        "is_this_module": main.__dict__ is globals(),
        "name": __name__,
        "file": main.__dict__.get("__file__"),
        "spec": None if spec is None else spec.name,
        "argv": sys.argv,
        "orig_argv": sys.orig_argv,
        "path0": sys.path[0],
        "path": sys.path[1:],
    }


def check_asyncio_tasks() -> str:
    """Return "ok" if asyncio tracks the running task as in a cold start, else a description of the failure."""
    import asyncio

    async def probe() -> str:
        if asyncio.current_task() is None:
            return "asyncio.current_task() returned None inside a task"
        try:
            await asyncio.wait_for(asyncio.sleep(0), 5)
        except RuntimeError as error:
            return f"asyncio.wait_for() raised RuntimeError: {error}"
        return "ok"

    return asyncio.run(probe())


def read_control(path: str) -> dict:
    try:
        with open(path) as stream:
            return json.load(stream)
    except FileNotFoundError:
        return {}


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
                continue
            thread = threading.Thread(target=handle, args=(conn,), daemon=True)
            thread.start()
            handlers.append(thread)


def fork_worker(release_read: int | None = None, release_write: int | None = None) -> int:
    """Fork a worker that ends with sys.exit(0), which runs the atexit hooks it inherited; return its PID.

    With release_read, the worker first waits for EOF on it.
    """
    pid = os.fork()
    if pid != 0:
        return pid
    if release_read is not None and release_write is not None:
        os.close(release_write)
        os.read(release_read, 1)
    sys.exit(0)


def take_upgrade_token(control_path: str) -> None:
    """Send this process SIGHUP if it is the first to remove the control file's upgrade_token."""
    token = read_control(control_path).get("upgrade_token")
    try:
        if token:
            os.unlink(token)
            os.kill(os.getpid(), signal.SIGHUP)
    except FileNotFoundError:
        pass


async def ready_in_loop(upgrader: fdpass.Upgrader, mode: str, control_path: str) -> None:
    """Call ready() from a running event loop; keep the loop running, or blocked, until the standby runs.

    mode "running" awaits between checks, "blocked" sleeps without awaiting
    and takes the upgrade token once the parent has exited, and "closed"
    returns at once, so the loop is closed when the parent exits.
    """
    import asyncio

    upgrader.ready()
    deadline = time.monotonic() + 20
    while mode != "closed" and upgrader.standby_pid is None and time.monotonic() < deadline:
        if upgrader.wait_exit(0):
            return
        if mode == "blocked":
            if upgrader.has_parent and upgrader.wait_for_parent(0):
                take_upgrade_token(control_path)
            time.sleep(0.01)
        else:
            await asyncio.sleep(0.01)


async def upgrade_with_ticker(upgrader: fdpass.Upgrader, loop_gaps: list[float]) -> int:
    """Run upgrade_async() next to a task that appends to loop_gaps the seconds between its wake-ups."""
    import asyncio

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            loop_gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    # Let the ticker take its first time, so a block at the start of the upgrade counts too.
    await asyncio.sleep(0)
    try:
        return await upgrader.upgrade_async()
    finally:
        ticker.cancel()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--prestart", default="true", help="JSON: true, false or a list of module names")
    parser.add_argument("--prestart-fork", default="true", help="JSON: Upgrader's prestart_fork")
    parser.add_argument("--listener-timeout", default="nonblocking", help='"nonblocking", "none" or seconds')
    parser.add_argument("--upgrade-timeout", type=float, default=20.0, help="Upgrader's upgrade_timeout, in seconds")
    parser.add_argument("--module", help="a module to import and report VALUE of")
    parser.add_argument("--asyncio", action="store_true", help="upgrade with upgrade_async() in an event loop")
    parser.add_argument(
        "--ready-in-loop",
        choices=["running", "blocked", "closed"],
        help="call ready() from an asyncio event loop, which then runs, blocks or closes (see ready_in_loop())",
    )
    parser.add_argument(
        "--slow-standby-start",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sleep this long at the start of each standby start, inside fdpass's standby lock",
    )
    parser.add_argument("--exit-early", action="store_true", help="exit without stop() once the standby runs")
    parser.add_argument(
        "--fork-workers",
        action="store_true",
        help="fork a worker that ends with sys.exit() at once, and one that does so once this generation hands over",
    )
    parser.add_argument(
        "--wait-report", action="store_true", help='emit "standby" only once the standby\'s report has arrived'
    )
    args = parser.parse_args()

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGTERM})
    log = logging.getLogger("fdpass")
    log.addHandler(EventHandler())
    log.setLevel(logging.INFO)

    if args.asyncio:
        # Imported before the standby starts, as an asyncio server does, so that the standby preloads it.
        import asyncio

    if args.slow_standby_start:
        from fdpass import prestart as prestart_module

        original_start = prestart_module.start

        def slow_start(modules: tuple[str, ...] | None, fork: bool = True) -> object:
            time.sleep(args.slow_standby_start)
            return original_start(modules, fork)

        prestart_module.start = slow_start

    # FDPASS_PARENT_PID is set in a generation with a parent, which the test needs before any Upgrader exists.
    if "FDPASS_PARENT_PID" in os.environ and read_control(args.control).get("hang") == "before-upgrader":
        emit("hanging")
        time.sleep(600)
        return 4
    prestart = json.loads(args.prestart)
    if "FDPASS_PARENT_PID" in os.environ:
        prestart = read_control(args.control).get("prestart", prestart)
    upgrader = fdpass.Upgrader(
        upgrade_timeout=args.upgrade_timeout, prestart=prestart, prestart_fork=json.loads(args.prestart_fork)
    )
    if upgrader.has_parent and read_control(args.control).get("crash"):
        emit("crashing")
        return 3
    if upgrader.has_parent and read_control(args.control).get("hang"):
        emit("hanging")
        time.sleep(600)
        return 4
    module_value = importlib.import_module(args.module).VALUE if args.module else None

    host, port = args.address.rsplit(":", 1)
    listener = upgrader.listen((host, int(port)))
    initial_timeout = listener.gettimeout()
    if args.listener_timeout == "nonblocking":
        listener.setblocking(False)
    else:
        listener.settimeout(None if args.listener_timeout == "none" else float(args.listener_timeout))
    stop_read, stop_write = os.pipe()
    handlers: list[threading.Thread] = []
    server = threading.Thread(target=serve, args=(listener, stop_read, handlers), daemon=True)
    server.start()

    def take_signals() -> None:
        while True:
            number = signal.sigwait({signal.SIGHUP, signal.SIGTERM})
            if number == signal.SIGTERM:
                emit("stopping", standby_pid=upgrader.standby_pid)
                upgrader.stop()
                emit("stopped")
                return
            control = read_control(args.control)
            os.environ.update(control.get("setenv", {}))
            if control.get("chdir"):
                os.chdir(control["chdir"])
            if control.get("stop_during_upgrade") is not None:
                timer = threading.Timer(control["stop_during_upgrade"], upgrader.stop)
                timer.daemon = True
                timer.start()
            emit("upgrading", standby_pid=upgrader.standby_pid)
            loop_gaps: list[float] = []
            try:
                if args.asyncio:
                    import asyncio

                    new_pid = asyncio.run(upgrade_with_ticker(upgrader, loop_gaps))
                else:
                    new_pid = upgrader.upgrade()
            except fdpass.UpgradeError as error:
                emit(
                    "upgrade-failed",
                    error=str(error),
                    status=error.status,
                    new_pid=error.pid,
                    max_loop_gap=max(loop_gaps, default=None),
                )
                if upgrader.wait_exit(0):
                    return
            else:
                emit("upgraded", new_pid=new_pid, max_loop_gap=max(loop_gaps, default=None))
                return

    asyncio_tasks = check_asyncio_tasks() if args.asyncio else None
    signals = threading.Thread(target=take_signals, name="signals", daemon=True)
    signals.start()
    if args.ready_in_loop:
        import asyncio

        asyncio.run(ready_in_loop(upgrader, args.ready_in_loop, args.control))
    else:
        upgrader.ready()
    emit(
        "ready",
        standby_pid=upgrader.standby_pid,
        has_parent=upgrader.has_parent,
        parent_pid=upgrader.parent_pid,
        listen_pid=start_listen_pid,
        fds=start_fds,
        successor_pid=start_successor_pid,
        successor_fd=start_successor_fd,
        probe=start_probe,
        cwd=start_cwd,
        version=VERSION,
        module_value=module_value,
        address=listener.getsockname(),
        initial_timeout=initial_timeout,
        argv=sys.argv,
        main=describe_main(),
        sigint_default=signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        asyncio_tasks=asyncio_tasks,
    )

    if upgrader.has_parent:
        upgrader.wait_for_parent(timeout=20)
        take_upgrade_token(args.control)
    # wait_exit() returns True at once after stop(), which ends the standby.
    deadline = time.monotonic() + 20
    prestart_on = prestart is not False
    while prestart_on and upgrader.standby_pid is None and time.monotonic() < deadline and not upgrader.wait_exit(0.01):
        pass
    # _standby is private, but only its has_report() shows whether the report has arrived.
    standby = upgrader._standby
    while args.wait_report and standby is not None and time.monotonic() < deadline and not upgrader.wait_exit(0.01):
        try:
            if standby.has_report():
                break
        except ValueError:
            break  # stop() in another thread closed the control socket
    emit("standby", standby_pid=upgrader.standby_pid)
    if args.fork_workers:
        early_worker = fork_worker()
        emit("worker-exited", status=os.waitstatus_to_exitcode(os.waitpid(early_worker, 0)[1]))
        release_read, release_write = os.pipe()
        late_worker = fork_worker(release_read, release_write)
    if args.exit_early:
        emit("exit")
        return 0

    upgrader.wait_exit()
    if args.fork_workers:
        os.close(release_write)
        emit("worker-exited", status=os.waitstatus_to_exitcode(os.waitpid(late_worker, 0)[1]))
    signals.join(30)
    os.write(stop_write, b"x")
    server.join(10)
    listener.close()
    for thread in handlers:
        thread.join(10)
    time.sleep(read_control(args.control).get("linger", 0))
    emit("exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
