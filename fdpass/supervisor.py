"""The supervisor behind ``fdpass run --restart-on SIGNAL``.

The supervisor holds the listening sockets for the whole run and starts
COMMAND as a child with them on fds 3, 4, ... and LISTEN_PID set to the
child's own PID. On the restart signal it starts a new child next to the old
one, waits until the new one is ready, then stops the old one with SIGTERM,
and SIGKILL after stop_timeout seconds. Both children accept from the same
sockets while they overlap, and the sockets never close, so a restart
refuses no connection.

A child is ready when it, or a process it started, sends READY=1 to the
NOTIFY_SOCKET the supervisor sets for it (sd_notify(3)), or, with a number of
seconds as the ready mode, when it still runs after that many seconds.

SIGTERM, SIGINT and SIGQUIT, and SIGHUP unless it is the restart signal,
are forwarded to every running child. The
supervisor exits with the status of the serving child, or 128+N if signal N
ended it. Each child leads its own process group, so a terminal's Ctrl-C
reaches the child only through the supervisor, and gets SIGKILL if the
supervisor dies (PR_SET_PDEATHSIG). The supervisor is a child subreaper
(PR_SET_CHILD_SUBREAPER), so processes that a child leaves behind become its
children, and it ends and reaps them before it exits.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import secrets
import selectors
import signal
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from fdpass import _native, notify, protocol

log = logging.getLogger("fdpass")

#: Signals forwarded to the children; each one also ends the supervisor
#: once the children have exited. SIGHUP joins them when it is not the
#: restart signal, so a closed terminal stops the children gracefully.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

#: How many parent links a READY=1 sender may be away from a child.
_MAX_ANCESTRY_DEPTH = 16


@dataclass
class Generation:
    """One started COMMAND: its PID, when it started, and whether it is ready."""

    pid: int
    started: float
    ready: bool = False
    stop_deadline: float | None = None
    # True once a newer generation took over from this one.
    replaced: bool = False


def exit_code(status: int) -> int:
    """Return the shell-style exit code for a waitpid() status: the code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            stat = stat_file.read()
    except OSError as error:
        log.debug("cannot read the parent of PID %d: %s", pid, error)
        return None
    # The command name in parentheses may contain spaces, so split after it.
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


def is_descendant(pid: int, ancestor: int) -> bool:
    """Return True if pid is ancestor or one of its descendants, by /proc parent links."""
    current: int | None = pid
    for _ in range(_MAX_ANCESTRY_DEPTH):
        if current == ancestor:
            return True
        if current is None or current <= 1:
            return False
        current = _parent_pid(current)
    return False

_UCRED = struct.Struct("iII")


class _ManagerNotifier:
    """Sends sd_notify(3) messages, with fds if any, to the service manager that started fdpass.

    fdpass.notify.notify() sends no fds, and FDSTORE=1 needs them, so this
    sends the datagram itself to the same address.
    """

    def __init__(self, value: str | None) -> None:
        self.value = value

    def send(self, message: str, fds: Sequence[int] = ()) -> None:
        if not self.value:
            return
        try:
            address = notify.notify_address(self.value)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(address)
                socket.send_fds(sock, [message.encode()], list(fds))
        except (OSError, ValueError) as error:
            log.warning("cannot send %r to NOTIFY_SOCKET=%s: %s", message.split("\n")[0], self.value, error)


class _NotifyListener:
    """An abstract AF_UNIX datagram socket that receives sd_notify(3) messages from the children.

    SO_PASSCRED makes the kernel attach the sender's PID to every message.
    """

    def __init__(self, name: str) -> None:
        self.address = "@" + name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + name)

    def receive(self) -> list[tuple[int, dict[str, str]]]:
        """Return (sender PID, fields) for every queued message; PID 0 if the kernel gave none."""
        messages: list[tuple[int, dict[str, str]]] = []
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except BlockingIOError:
                return messages

            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                    pid = _UCRED.unpack_from(payload)[0]
            fields = {}
            for line in data.decode(errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    fields[key] = value
            messages.append((pid, fields))

    def close(self) -> None:
        self.sock.close()


def list_children() -> list[int]:
    """Return the PIDs of this process's children, from /proc/self/task/*/children."""
    pids: list[int] = []
    for path in glob.glob("/proc/self/task/*/children"):
        try:
            with open(path) as children_file:
                pids.extend(int(pid) for pid in children_file.read().split())
        except OSError as error:
            # The thread exited since glob() listed it, so it has no children to report.
            log.debug("cannot read %s: %s", path, error)
    return pids


class Supervisor:
    """Starts COMMAND with the sockets, restarts it on a signal, and stops it on SIGTERM/SIGINT."""

    def __init__(
        self,
        argv: Sequence[str],
        executable: str,
        listeners: Sequence[tuple[str, socket.socket]],
        *,
        restart_signal: signal.Signals,
        ready: str | float = "notify",
        ready_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.argv = [os.fsencode(arg) for arg in argv]
        self.executable = os.fsencode(executable)
        self.listeners = list(listeners)
        self.restart_signal = restart_signal
        self.forwarded_signals = set(FORWARDED_SIGNALS)
        if restart_signal != signal.SIGHUP:
            self.forwarded_signals.add(signal.SIGHUP)
        # NOTE: readiness is READY=1 or a fixed delay; the supervisor cannot
        # see by itself when a child has started to accept.
        self.ready_mode = ready
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout

        self.serving: Generation | None = None
        self.pending: Generation | None = None
        self.stopping: dict[int, Generation] = {}
        self.shutting_down = False
        self.final_status: int | None = None

        self._manager_notify = _ManagerNotifier(os.environ.get(notify.NOTIFY_SOCKET))
        self._notify = _NotifyListener(f"fdpass-{os.getpid()}-{secrets.token_hex(6)}")
        self._wakeup_read, self._wakeup_write = socket.socketpair()

    # Starting and stopping children

    def _child_environment(self) -> list[bytes]:
        environ = dict(os.environ)
        environ[notify.NOTIFY_SOCKET] = self._notify.address
        protocol.apply(environ, [name for name, _ in self.listeners], os.getpid())
        return [os.fsencode(f"{key}={value}") for key, value in environ.items()]

    def _spawn(self) -> Generation:
        fds = [sock.fileno() for _, sock in self.listeners]
        pid = _native.spawn_with_fds(
            self.executable,
            self.argv,
            self._child_environment(),
            fds,
            set_listen_pid=True,
            new_process_group=True,
            parent_death_signal=True,
        )
        log.info(
            "started %s as PID %d with fds %s",
            os.fsdecode(self.executable),
            pid,
            ", ".join(f"{3 + index}={name!r}" for index, (name, _) in enumerate(self.listeners)),
        )
        return Generation(pid=pid, started=time.monotonic())

    def _signal_child(self, generation: Generation, signum: int) -> None:
        # SIGKILL goes to the child's whole process group, so workers it
        # forked end with it. Other signals go to the child alone, which
        # then stops its workers the way it chooses.
        try:
            if signum == signal.SIGKILL:
                os.killpg(generation.pid, signum)
            else:
                os.kill(generation.pid, signum)
        except ProcessLookupError:
            # The child exited and waits to be reaped; the SIGCHLD handling does that.
            log.debug("PID %d exited before %s reached it", generation.pid, signal.Signals(signum).name)

    def _stop(self, generation: Generation) -> None:
        generation.stop_deadline = time.monotonic() + self.stop_timeout
        self.stopping[generation.pid] = generation
        log.info("stopping PID %d with SIGTERM (SIGKILL in %g s)", generation.pid, self.stop_timeout)
        self._signal_child(generation, signal.SIGTERM)

    def _children(self) -> list[Generation]:
        running = [self.serving, self.pending, *self.stopping.values()]
        return [generation for generation in running if generation is not None]

    # Events

    def _on_restart_signal(self) -> None:
        if self.shutting_down:
            return
        if self.pending is not None:
            log.warning(
                "restart requested while PID %d is still starting; ignored until it is ready or fails",
                self.pending.pid,
            )
            return
        if self.serving is not None and not self.serving.ready:
            # This is the first COMMAND, or one that took over when the serving
            # one exited. It is not ready yet, so a restart now would start a
            # second COMMAND next to one that is still starting.
            log.warning(
                "restart requested while PID %d is still starting; ignored until it is ready", self.serving.pid
            )
            return

        log.info("restart requested by %s", self.restart_signal.name)
        # systemd 253 and later match RELOADING=1 to the reload by MONOTONIC_USEC.
        self._manager_notify.send(
            f"RELOADING=1\nMONOTONIC_USEC={notify.monotonic_usec()}\nSTATUS=Starting a new child"
        )
        try:
            self.pending = self._spawn()
        except OSError as error:
            log.error(
                "restart failed: cannot start %s: %s; PID %s keeps serving",
                os.fsdecode(self.executable),
                error.strerror,
                self.serving.pid if self.serving else "none",
            )
            self._manager_notify.send("READY=1\nSTATUS=Restart failed; the old child keeps serving")

    def _on_forwarded_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        log.info("%s received; forwarding it to PIDs %s", name, ", ".join(str(g.pid) for g in self._children()))
        if not self.shutting_down:
            self.shutting_down = True
            self._manager_notify.send("STOPPING=1")

        for generation in self._children():
            if generation.stop_deadline is None:
                generation.stop_deadline = time.monotonic() + self.stop_timeout
            self._signal_child(generation, signum)

    def _on_ready(self, generation: Generation, how: str) -> None:
        generation.ready = True
        if generation is self.serving:
            log.info("PID %d is ready (%s)", generation.pid, how)
            self._manager_notify.send(f"READY=1\nSTATUS=Serving with PID {generation.pid}")
            return

        old = self.serving
        self.serving, self.pending = generation, None
        log.info(
            "restart complete: PID %d is ready (%s) and serves; stopping PID %s",
            generation.pid, how, old.pid if old else "none",
        )
        self._manager_notify.send(f"READY=1\nSTATUS=Serving with PID {generation.pid}")
        if old is not None:
            old.replaced = True
            self._stop(old)

    def _on_exit(self, pid: int, status: int) -> None:
        code = exit_code(status)

        if self.serving is not None and pid == self.serving.pid:
            self.serving = None
            if self.pending is not None and not self.shutting_down:
                log.warning(
                    "serving PID %d exited with status %d during a restart; new PID %d takes over",
                    pid, code, self.pending.pid,
                )
                self.serving, self.pending = self.pending, None
                return
            log.info("serving PID %d exited with status %d", pid, code)
            self.final_status = code
            if not self.shutting_down:
                self._end_remaining()
            return

        if self.pending is not None and pid == self.pending.pid:
            self.pending = None
            if self.shutting_down:
                log.info("new PID %d exited with status %d", pid, code)
                return
            log.error(
                "restart failed: new PID %d exited with status %d before it was ready; PID %s keeps serving",
                pid, code, self.serving.pid if self.serving else "none",
            )
            self._manager_notify.send("READY=1\nSTATUS=Restart failed; the old child keeps serving")
            return

        stopped = self.stopping.pop(pid, None)
        if stopped is not None and stopped.replaced:
            log.info("old PID %d exited with status %d", pid, code)
            return
        if stopped is not None:
            log.info("new PID %d, stopped before it served, exited with status %d", pid, code)
            return

        log.debug("reaped orphan PID %d (status %d)", pid, code)

    def _end_remaining(self) -> None:
        # The serving child exited on its own, so stop whatever else still runs.
        self.shutting_down = True
        for generation in self._children():
            if generation.stop_deadline is None:
                self._stop(generation)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._on_exit(pid, status)

    def _on_notify(self) -> None:
        for pid, fields in self._notify.receive():
            if fields.get("READY") != "1":
                continue
            for generation in (self.pending, self.serving):
                if generation is not None and not generation.ready and is_descendant(pid, generation.pid):
                    self._on_ready(generation, f"READY=1 from PID {pid}")
                    break
            else:
                log.debug("ignored READY=1 from PID %d, which is not a child that is starting", pid)

    def _on_timers(self) -> None:
        now = time.monotonic()

        for generation in (self.serving, self.pending):
            if generation is None or generation.ready:
                continue
            if isinstance(self.ready_mode, float) and now >= generation.started + self.ready_mode:
                self._on_ready(generation, f"still running after {self.ready_mode:g} s")
            elif self.ready_mode == "notify" and generation is self.pending and \
                    now >= generation.started + self.ready_timeout:
                log.error(
                    "restart failed: new PID %d sent no READY=1 within %g s; stopping it, PID %s keeps serving",
                    generation.pid, self.ready_timeout, self.serving.pid if self.serving else "none",
                )
                self.pending = None
                self._stop(generation)
                self._manager_notify.send("READY=1\nSTATUS=Restart failed; the old child keeps serving")

        for generation in self._children():
            if generation.stop_deadline is not None and now >= generation.stop_deadline:
                log.warning("PID %d still runs %g s after SIGTERM; sending SIGKILL",
                            generation.pid, self.stop_timeout)
                generation.stop_deadline = None
                self._signal_child(generation, signal.SIGKILL)

    def _next_timeout(self) -> float | None:
        deadlines: list[float] = []
        for generation in self._children():
            if generation.stop_deadline is not None:
                deadlines.append(generation.stop_deadline)
            if not generation.ready and generation in (self.serving, self.pending):
                if isinstance(self.ready_mode, float):
                    deadlines.append(generation.started + self.ready_mode)
                elif generation is self.pending:
                    deadlines.append(generation.started + self.ready_timeout)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    # The loop

    @contextlib.contextmanager
    def _signal_handling(self) -> Iterator[None]:
        handled = (signal.SIGCHLD, self.restart_signal, *self.forwarded_signals)
        self._wakeup_write.setblocking(False)
        self._wakeup_read.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(self._wakeup_write.fileno(), warn_on_full_buffer=False)
        # The handlers do nothing: the wakeup fd carries each signal number to the loop.
        previous = {signum: signal.signal(signum, lambda signum, frame: None) for signum in handled}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_wakeup)

    def _dispatch_signals(self) -> None:
        try:
            data = self._wakeup_read.recv(4096)
        except BlockingIOError:
            return

        for signum in data:
            if signum == signal.SIGCHLD:
                self._reap()
            elif signum == self.restart_signal:
                self._on_restart_signal()
            elif signum in self.forwarded_signals:
                self._on_forwarded_signal(signum)

    def _send_fd_store(self) -> None:
        # Under systemd with FileDescriptorStoreMax=, the stored sockets come
        # back through LISTEN_FDS after `systemctl restart`, and listen()
        # adopts them, so a restart of fdpass itself refuses no connection.
        for name, sock in self.listeners:
            self._manager_notify.send(f"FDSTORE=1\nFDNAME={name}", fds=[sock.fileno()])

    def run(self) -> int:
        """Start COMMAND and supervise it until it exits; return its shell-style exit code.

        Raises:
            OSError: the first COMMAND could not be started (for example
                ENOENT or EACCES from execve).
        """
        try:
            _native.set_child_subreaper()
        except OSError as error:
            log.warning("cannot become a child subreaper (%s); orphans of PID %d's children are not reaped here",
                        error.strerror, os.getpid())

        with self._signal_handling(), selectors.DefaultSelector() as selector:
            selector.register(self._wakeup_read, selectors.EVENT_READ, "signal")
            selector.register(self._notify.sock, selectors.EVENT_READ, "notify")
            self.serving = self._spawn()
            self._send_fd_store()

            while self._children():
                for key, _ in selector.select(self._next_timeout()):
                    if key.data == "signal":
                        self._dispatch_signals()
                    else:
                        self._on_notify()
                self._on_timers()
            self._reap_orphans()

        self._notify.close()
        self._wakeup_read.close()
        self._wakeup_write.close()
        return self.final_status if self.final_status is not None else 0

    def _reap_orphans(self) -> None:
        # Orphans reparented to this subreaper: end them and reap them, so
        # nothing that COMMAND started outlives `fdpass run`.
        for pid in list_children():
            log.warning("PID %d, left behind by a child, still runs; sending SIGKILL", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                log.debug("PID %d exited before SIGKILL reached it", pid)
        # NOTE: list_children() needs CONFIG_PROC_CHILDREN; without it an orphan
        # is not signalled, so the wait below gives up after stop_timeout.
        deadline = time.monotonic() + self.stop_timeout
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid > 0:
                log.debug("reaped orphan PID %d (status %d)", pid, exit_code(status))
                continue
            if time.monotonic() > deadline:
                log.warning("children of PID %d still run %g s after COMMAND exited; exiting without them",
                            os.getpid(), self.stop_timeout)
                return
            time.sleep(0.05)

