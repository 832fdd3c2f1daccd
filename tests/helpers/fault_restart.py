"""Call fdpass.reexec() under an injected fault, then restart for real.

Usage: fault_restart.py MODE [ARG]

MODE is one of:
  emfile FREE   lower RLIMIT_NOFILE and fill the fd table so that only FREE
                fd numbers stay free, then restart. With FREE=0 the fd moves
                fail with EMFILE.
  e2big         restart with an environment variable larger than the
                kernel's 128 KiB limit for one string, so execve fails with
                E2BIG.
  signal        restart from a SIGHUP handler while the main thread is
                blocked in accept(); the caller sends the signal.
  threads       restart while one thread is blocked in accept() on the
                listener and another in recv() on a connection.

Every run passes a TCP listener and the connection it accepts from the
caller. The first run prints {"port": N} when it listens, then one JSON
report per failed restart, with the process state before and after. The
new run (FDPASS_FAULT_RESTARTED set) prints what it adopted and its open
fds, then replies "alive" to one connection on the listener and echoes one
line on the inherited connection.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import socket
import sys
import threading

import fdpass

RESTARTED_VARIABLE = "FDPASS_FAULT_RESTARTED"
#: Highest fd number the state snapshot looks at.
SNAPSHOT_LIMIT = 512


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def fd_table() -> dict[str, list[object]]:
    """Return {fd: [target, fd flags, status flags]} without opening an fd, so it works at EMFILE."""
    table: dict[str, list[object]] = {}
    for fd in range(SNAPSHOT_LIMIT):
        try:
            fd_flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            status_flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        table[str(fd)] = [target, fd_flags, status_flags]
    return table


def signal_state() -> dict[str, object]:
    """Return the blocked signals and the ignored-signal mask; reading SigIgn needs one free fd."""
    blocked = sorted(int(sig) for sig in signal.pthread_sigmask(signal.SIG_BLOCK, []))
    try:
        with open("/proc/self/status") as status:
            ignored = next(line.split()[1] for line in status if line.startswith("SigIgn"))
    except OSError:
        ignored = None
    return {"blocked": blocked, "ignored": ignored}


def process_state() -> dict[str, object]:
    return {
        "fds": fd_table(),
        "signals": signal_state(),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


def restart(passed: dict[str, socket.socket], **options: object) -> None:
    env = {**os.environ, RESTARTED_VARIABLE: "1"}
    env.update(options.pop("extra_env", {}))  # type: ignore[arg-type]
    fdpass.reexec(passed, argv=[sys.executable, __file__, *sys.argv[1:]], executable=sys.executable, env=env)



def attempt_failing_restart(passed: dict[str, socket.socket], **options: object) -> None:
    """Call reexec() once, expecting OSError, and report the error and the state around it."""
    before = process_state()
    try:
        restart(passed, **options)
    except OSError as error:
        after = process_state()
        report(
            errno=error.errno,
            filename=error.filename,
            message=str(error),
            error_type=type(error).__name__,
            before=before,
            after=after,
        )
        return
    report(error="reexec() returned without raising")


def fill_fd_table(free: int) -> list[int]:
    """Lower RLIMIT_NOFILE just above the open fds, open /dev/null until EMFILE, then free `free` numbers."""
    highest = max(int(fd) for fd in fd_table())
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))

    fillers = []
    while True:
        try:
            fillers.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            break
    for _ in range(free):
        os.close(fillers.pop())
    return fillers


def release_fd_table(fillers: list[int], soft: int, hard: int) -> None:
    for fd in fillers:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def first_run(mode: str, argument: str | None) -> None:
    # The socketpair takes fds 3 and 4, the targets of the two passed fds,
    # so the move must save both before it can place anything.
    spare = socket.socketpair()
    listener = socket.create_server(("127.0.0.1", 0))
    report(port=listener.getsockname()[1], spare=[end.fileno() for end in spare])
    listener.settimeout(30)
    conn, _ = listener.accept()
    passed = {"listener": listener, "conn": conn}
    # With a handler, so that a successful restart unblocks it; one without
    # a handler would stay blocked.
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})

    if mode == "emfile":
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        full_before = process_state()
        fillers = fill_fd_table(int(argument or "0"))
        attempt_failing_restart(passed)
        release_fd_table(fillers, soft, hard)
        report(full_before=full_before, full_after=process_state())
    elif mode == "e2big":
        attempt_failing_restart(passed, extra_env={"FDPASS_FAULT_HUGE": "x" * (256 * 1024)})
    elif mode == "signal":
        signal.signal(signal.SIGHUP, lambda signum, frame: restart(passed))
        report(waiting="SIGHUP")
        listener.accept()
        report(error="accept() returned before the restart")
        return
    elif mode == "threads":
        report(blocked=block_threads(listener, conn))

    restart(passed)


def block_threads(listener: socket.socket, conn: socket.socket) -> list[str]:
    """Start one thread blocked in accept() on listener and one in recv() on conn.

    Returns the scheduler state of each thread once it sleeps ("S"), or the
    last state seen after about 10 s.
    """
    listener.settimeout(None)
    conn.settimeout(None)
    threads = [
        threading.Thread(target=listener.accept, daemon=True),
        threading.Thread(target=conn.recv, args=(1,), daemon=True),
    ]
    for thread in threads:
        thread.start()

    states = []
    for thread in threads:
        state = "?"
        for _ in range(1000):
            with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
            if state == "S":
                break
            threading.Event().wait(0.01)
        states.append(state)
    return states


def second_run() -> None:
    inherited = fdpass.inherit()
    names = sorted(inherited)
    listener = inherited["listener"]
    conn = inherited["conn"]
    fds = sorted(int(fd) for fd in fd_table())
    report(run="second", pid=os.getpid(), names=names, fds=fds, signals=signal_state())

    listener.settimeout(15)
    visitor, _ = listener.accept()
    with visitor:
        visitor.sendall(b"alive\n")
    conn.settimeout(15)
    line = conn.makefile("rb").readline()
    conn.sendall(line)


def main() -> None:
    if RESTARTED_VARIABLE in os.environ:
        second_run()
        return
    mode = sys.argv[1]
    argument = sys.argv[2] if len(sys.argv) > 2 else None
    first_run(mode, argument)


if __name__ == "__main__":
    main()
