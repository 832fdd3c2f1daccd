"""The parent's side of Upgrader(prestart=...): start a standby interpreter, check it, hand over to it.

A standby (see fdpass._standby) is the next generation's interpreter,
started right after ready() so that its start-up and its imports are done
before upgrade() is called. upgrade() then sends it what a cold start would
get at that moment, and it runs the program's current code. The standby is
used only while it is as good as a cold start: unfit_reason() names what
would make it differ, and upgrade() then starts the new generation cold.
"""

from __future__ import annotations

import os

# Imported here, as every module start() needs, so that default_preload()
# lists it and the standby preloads it. Imported inside a function, it cost
# each generation 0.14 ms on its event loop while it started its standby.
import resource
import select
import signal
import socket
import sys
import threading
import time

from fdpass import _log, _native, _socket_env, command, protocol, restart
from fdpass import _standby as standby_module

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Mapping, Sequence

# Variables that the interpreter reads while it starts, before the program
# runs: a standby started under other values is not what a cold start would be.
_STARTUP_VARIABLES = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "LD_PRELOAD", "LD_LIBRARY_PATH"})
_STARTUP_PREFIXES = ("PYTHON", "LC_")

#: Seconds upgrade() waits for the report of a standby that is still
#: preloading, counted from the first wait, before it starts cold. A few
#: seconds leave room for a slow start-up and bound what a hung standby costs.
REPORT_TIMEOUT = 3.0

#: Seconds Standby.start_move() waits for the report before it gives up the move.
MOVE_WAIT_TIMEOUT = 60.0

#: Seconds between Standby.start_move()'s checks for the report.
MOVE_POLL_SECONDS = 0.01


def check_prestart(prestart: object) -> tuple[str, ...] | bool:
    """Return prestart as False, True or a tuple of module names, or raise for a bad value.

    Raises:
        TypeError: prestart is not a bool or a sequence of str, or a name is not a str.
        ValueError: a name is not a dotted module name.
    """
    if isinstance(prestart, bool):
        return prestart
    if isinstance(prestart, (str, bytes)) or not isinstance(prestart, (list, tuple)):
        raise TypeError(
            f"prestart must be True, False or a list of module names, not {prestart!r}; "
            "for one module, pass a list with one name"
        )

    for name in prestart:
        if not isinstance(name, str):
            raise TypeError(f"prestart contains {name!r}, a {type(name).__name__}; module names must be str")
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"prestart contains {name!r}, which is not a module name such as 'json' or 'email.utils'")
    return tuple(prestart)


def _executable_id() -> tuple[int, int, int] | None:
    # NOTE: only the interpreter binary is compared; a changed shared
    # libpython or C extension of the stdlib alone goes unnoticed.
    try:
        status = os.stat(os.path.realpath(sys.executable))
    except OSError:
        return None
    return status.st_dev, status.st_ino, status.st_mtime_ns


def _stdio_ids() -> tuple[tuple[int, int] | None, ...]:
    ids: list[tuple[int, int] | None] = []
    for fd in (0, 1, 2):
        try:
            status = os.fstat(fd)
        except OSError:
            ids.append(None)
            continue
        ids.append((status.st_dev, status.st_ino))
    return tuple(ids)


def _process_attributes() -> dict[str, object]:
    """Return what a child inherits from this process besides fds and the environment."""
    with open("/proc/self/status") as stream:
        status = {name: value.strip() for name, value in (line.split(":", 1) for line in stream if ":" in line)}
    limits = {}
    for name in dir(resource):
        if name.startswith("RLIMIT_"):
            limits[name] = resource.getrlimit(getattr(resource, name))
    try:
        with open("/proc/self/oom_score_adj") as stream:
            oom_score_adj: str | None = stream.read().strip()
    except OSError:
        oom_score_adj = None

    return {
        "umask": status.get("Umask", ""),
        "user IDs": os.getresuid(),
        "group IDs": (os.getresgid(), sorted(os.getgroups())),
        "resource limits": limits,
        "nice value": os.getpriority(os.PRIO_PROCESS, 0),
        "scheduling policy": (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority),
        "OOM score adjustment": oom_score_adj,
        "CPU affinity": sorted(os.sched_getaffinity(0)),
        "process group and session": (os.getpgrp(), os.getsid(0)),
        "ignored signals": status.get("SigIgn", ""),
        "capabilities": tuple(status.get(name, "") for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")),
        "no_new_privs and seccomp": (status.get("NoNewPrivs", ""), status.get("Seccomp", "")),
    }


def _startup_variables(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        name: value
        for name, value in environ.items()
        if name in _STARTUP_VARIABLES or name.startswith(_STARTUP_PREFIXES)
    }


def _describe_difference(before: Mapping[str, str], now: Mapping[str, str]) -> str:
    changed = sorted(name for name in before.keys() | now.keys() if before.get(name) != now.get(name))
    return ", ".join(changed)


class Standby:
    """One standby process: its PID, the parent's end of its control socket, and what it was started with."""

    def __init__(
        self,
        pid: int,
        control: socket.socket,
        parsed: command.PythonCommand,
        environ: Mapping[str, str],
        explicit: bool,
        start_cwd: str | None,
    ) -> None:
        self.pid = pid
        self.control = control
        # A child forked without exec gets a copy of this object and of the
        # atexit hook, but the standby is not its to kill.
        self.owner_pid = os.getpid()
        self.interpreter = parsed.interpreter
        self.options = parsed.options
        self.startup_variables = _startup_variables(environ)
        self.executable_id = _executable_id()
        self.stdio_ids = _stdio_ids()
        self.process_attributes = _process_attributes()
        self.explicit = explicit
        # The new generation runs in start_cwd if that is set (see fdpass.command).
        self.path_entry = standby_module.main_path_entry(parsed.kind, parsed.target, start_cwd)
        self.cwd = command.getcwd_or_none()
        # From the standby's report: (path, st_mtime_ns, st_size) of each
        # loaded module file, the sys.path directories and their .pth files,
        # and (name, error) of each failed import.
        self.module_files: list[tuple[str, int, int]] | None = None
        self.pth_directories: list[str] = []
        self.pth_files: list[list[object]] = []
        self.failed_imports: list[tuple[str, str]] = []
        # (fd, target) of each fd above 2 the standby held besides its control socket.
        self.open_fds: list[tuple[int, str]] = []
        self._report_deadline: float | None = None
        # Once reaped, its PID may belong to another process, so it gets no signal.
        self.reaped = False
        self.status: int | None = None
        # True for a successor that the standby before it forked.
        self.forked = False

    def __repr__(self) -> str:
        return f"<fdpass standby PID {self.pid}>"

    def has_report(self) -> bool:
        """Return True once the standby's report of its preloaded modules was received or has arrived."""
        if self.module_files is not None:
            return True
        poller = select.poll()
        poller.register(self.control.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def report_deadline(self) -> float:
        """Return the time.monotonic() by which the report must arrive; the first call sets it."""
        if self._report_deadline is None:
            self._report_deadline = time.monotonic() + REPORT_TIMEOUT
        return self._report_deadline

    def _receive_report(self, wake_fd: int | None) -> str | None:
        """Wait for the report until report_deadline() or a readable wake_fd; return why the standby is unusable."""
        if self.module_files is not None:
            return None

        poller = select.poll()
        poller.register(self.control.fileno(), select.POLLIN)
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        remaining = max(0.0, self.report_deadline() - time.monotonic())
        ready = [fd for fd, _ in poller.poll(int(remaining * 1000))]
        if wake_fd is not None and wake_fd in ready:
            return "the upgrade was stopped while it waited for the standby's report"
        if not ready:
            return f"it sent no report of its preloaded modules within {REPORT_TIMEOUT:g} s"

        # The first record has arrived, and the rest of the report follows it at once.
        self.control.settimeout(REPORT_TIMEOUT)
        try:
            message = standby_module.receive_message(self.control)
        except TimeoutError:
            return f"its report of its preloaded modules stopped short for {REPORT_TIMEOUT:g} s"
        except (OSError, standby_module.StandbyProtocolError) as error:
            return f"its control socket failed: {error}"

        if message is None:
            return "it closed its control socket"
        report, fds = message
        for fd in fds:
            os.close(fd)
        if not isinstance(report, dict):
            return f"it sent a malformed report: {report!r:.200}"
        try:
            self.failed_imports = [(str(name), str(error)) for name, error in report["failed"]]
            self.module_files = [(str(path), int(mtime_ns), int(size)) for path, mtime_ns, size in report["modules"]]
            self.pth_directories = [str(directory) for directory in report["pth_directories"]]
            self.pth_files = [[str(path), int(mtime_ns), int(size)] for path, mtime_ns, size in report["pth_files"]]
            self.open_fds = [(int(fd), str(target)) for fd, target in report["fds"]]
        except (KeyError, TypeError, ValueError):
            return f"it sent a malformed report: {report!r:.200}"
        return None

    def _exited(self) -> bool:
        try:
            pid, wait_status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.reaped = True
            return True
        if pid == self.pid:
            self.reaped = True
            self.status = os.waitstatus_to_exitcode(wait_status)
            return True
        return False

    def start_move(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have loop move its own thread onto the standby's CPU once the standby's report has arrived.

        While a standby starts, it keeps one CPU busy, and the thread that
        serves ends up on the same CPU as a local peer that it exchanges
        requests with, such as a proxy or the client of
        bench/bench_upgrade.py. On a 2-CPU machine they kept sharing that
        CPU after the standby had blocked, and on a shared CPU each wake-up
        of one preempts the other (docs/benchmarks.md has the placement
        measured). The standby's CPU goes idle when its report has arrived.

        loop checks for the report every MOVE_POLL_SECONDS, rather than a
        thread waiting for it, so that a program that forks after ready()
        forks a single-threaded process. It stops at the move, once the
        control socket is closed (by kill() or the hand-over), or after
        MOVE_WAIT_TIMEOUT.
        """
        deadline = time.monotonic() + MOVE_WAIT_TIMEOUT

        def check() -> None:
            # A report that upgrade() has received already means that the hand-over is under way.
            if self.control.fileno() == -1 or self.module_files is not None or time.monotonic() > deadline:
                return
            try:
                if not self.has_report():
                    loop.call_later(MOVE_POLL_SECONDS, check)
                    return

                # The socket is readable at EOF too, when the standby has exited and its last CPU is of no use.
                if not self.control.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    return
            except OSError:
                return  # the socket was closed meanwhile
            _move_to_cpu(self.pid)

        try:
            loop.call_soon_threadsafe(check)
        except RuntimeError:
            pass  # the loop is closed

    def unfit_reason(
        self, start: command.StartCommand, environ: Mapping[str, str], fd_count: int, wake_fd: int | None = None
    ) -> str | None:
        """Return why a cold start of start with environ and fd_count fds would differ from this standby, or None.

        Waits for the report of a standby that is still starting until
        report_deadline(), or until wake_fd is readable.
        """
        if self._exited():
            return f"it exited ({'status unknown' if self.status is None else f'status {self.status}'})"
        reason = self._receive_report(wake_fd)
        if reason is not None:
            return reason

        # Upgrader logs this reason, and only this one, as a warning.
        if self.explicit and self.failed_imports:
            name, error = self.failed_imports[0]
            return f"it could not import the preloaded module {name!r}: {error}"
        # The interpreter keeps using an fd it opened at start-up, such as the
        # perf map of -X perf, so a passed fd must not take its number.
        # NOTE: an fd of the standby above the passed range is closed at the
        # hand-over, and a later open() may reuse its number.
        for fd, target in self.open_fds:
            if fd < protocol.FIRST_FD + fd_count:
                return f"its interpreter holds fd {fd} ({target}), where a passed fd would go"
        if self.executable_id is None or self.executable_id != _executable_id():
            return f"the interpreter {sys.executable} changed since the standby started"
        try:
            parsed = command.parse_python_argv(start.argv)
        except ValueError as error:
            return str(error)
        if (parsed.interpreter, parsed.options) != (self.interpreter, self.options):
            return f"the interpreter options changed to {[parsed.interpreter, *parsed.options]!r}"
        path_entry = standby_module.main_path_entry(parsed.kind, parsed.target, start.cwd)
        cwd = command.getcwd_or_none()
        if path_entry != self.path_entry or (path_entry == "" and cwd != self.cwd):
            return (
                f"a cold start would put {path_entry!r} first on sys.path (working directory {cwd!r}), "
                f"but the standby preloaded with {self.path_entry!r} (working directory {self.cwd!r})"
            )
        startup_variables = _startup_variables(environ)
        if startup_variables != self.startup_variables:
            changed = _describe_difference(self.startup_variables, startup_variables)
            return f"variables the interpreter reads at start-up changed: {changed}"
        if _stdio_ids() != self.stdio_ids:
            return "fd 0, 1 or 2 now refers to another file"
        attributes = _process_attributes()
        differing = [name for name, value in attributes.items() if self.process_attributes.get(name) != value]
        if differing:
            return f"this process's {', '.join(differing)} changed since the standby started"
        if standby_module.pth_files(self.pth_directories) != self.pth_files:
            return "a .pth file in a sys.path directory was added, removed or changed after the standby started"
        return self._changed_module_file()

    def _changed_module_file(self) -> str | None:
        for path, mtime_ns, size in self.module_files or ():
            try:
                status = os.stat(path)
            except OSError as error:
                return f"the preloaded module file {path} is gone ({error.strerror})"
            if (status.st_mtime_ns, status.st_size) != (mtime_ns, size):
                return f"the preloaded module file {path} changed after the standby started"
        return None

    def hand_over(
        self, argv: Sequence[str], environ: Mapping[str, str], cwd: str, fds: Sequence[int], timeout: float
    ) -> None:
        """Send fds, environ, cwd and argv; the standby then runs argv as the new generation.

        environ carries the fd names in LISTEN_FDNAMES, as for a cold start.

        Raises:
            OSError: the standby is gone or did not take the message within
                timeout seconds. It may hold copies of some fds until it is killed.
        """
        payload = {"argv": list(argv), "env": dict(environ), "cwd": cwd}

        self.control.settimeout(max(timeout, 0.001))
        standby_module.send_message(self.control, payload, list(fds))
        self.control.close()

    def kill(self) -> None:
        """Send SIGKILL, reap the standby, and close the control socket.

        In a child forked from the process that started the standby, only
        closes that child's copy of the control socket.
        """
        self.control.close()
        if self.reaped or os.getpid() != self.owner_pid:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.reaped = True
        try:
            _, wait_status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return
        self.status = os.waitstatus_to_exitcode(wait_status)


def _move_to_cpu(standby_pid: int) -> None:
    """Move the calling thread onto the CPU that the standby standby_pid last ran on."""
    try:
        with open(f"/proc/{standby_pid}/stat") as stream:
            # Field 39, "processor", counted after the command name, which may contain spaces and ")".
            cpu = int(stream.read().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return  # the standby is gone, or /proc is not mounted
    try:
        _native.move_to_cpu(cpu)
    except OSError as error:
        thread = threading.get_native_id()
        _log.warning("moving thread %d onto CPU %d failed: %s; check its mask with taskset -p", thread, cpu, error)


def _adopt_successor(
    parsed: command.PythonCommand,
    environ: Mapping[str, str],
    explicit: bool,
    cwd: str | None,
    request: dict[str, object],
) -> Standby | None:
    """Adopt the successor that this process forked as a standby, and send it request.

    Returns the adopted standby, or None if a fresh one must start. A
    successor is adopted only if a fresh standby would start with what it
    inherited (see fdpass._standby.Successor). Otherwise it is killed.
    """
    successor = standby_module.take_successor()
    if successor is None:
        return None

    standby = Standby(successor.pid, successor.control, parsed, environ, explicit, cwd)
    differing = [
        name
        for name, value in successor.origin.items()
        if name != "preload" and getattr(standby, name) != value and (name != "cwd" or standby.path_entry == "")
    ]
    # A fresh standby would import exactly an explicit list, and the successor has its parent's imports.
    preload = request["modules"] if explicit else None
    if successor.origin["preload"] != preload:
        differing.append("preloaded modules")
    if differing or not request["fork"]:
        standby.kill()
        if differing:
            _log.info(
                "standby PID %d, forked before the hand-over, differs from a fresh standby in its %s, "
                "so a fresh one starts",
                successor.pid,
                ", ".join(name.replace("_", " ") for name in differing),
            )
        return None

    try:
        standby.control.settimeout(10.0)
        standby_module.send_message(standby.control, request)
    except OSError as error:
        standby.kill()
        _log.info("the forked standby PID %d is gone (%s), so a fresh one starts", standby.pid, error)
        return None
    standby.forked = True
    return standby


def start(modules: tuple[str, ...] | None, fork: bool = True) -> Standby:
    """Start a standby of this program that preloads modules, or the default set if modules is None.

    Adopts the successor that this process forked as a standby before its
    hand-over, if it has one and it is as a fresh standby would be. With
    fork, the standby forks its own successor once it has preloaded.

    Raises:
        ValueError: this program cannot be started again (see fdpass.command).
        OSError: the standby could not be started.
    """
    environ = dict(os.environ)
    protocol.clear(environ)
    environ.pop(_socket_env.VARIABLE, None)
    current = command.current()
    parsed = command.parse_python_argv(current.argv)
    explicit = modules is not None
    names = list(modules) if modules is not None else standby_module.default_preload()
    path_entry = standby_module.main_path_entry(parsed.kind, parsed.target, current.cwd)
    request: dict[str, object] = {"modules": names, "explicit": explicit, "path_entry": path_entry, "fork": fork}

    adopted = _adopt_successor(parsed, environ, explicit, current.cwd, request)
    if adopted is not None:
        return adopted

    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(standby_module.__file__)))
    argv = [parsed.interpreter, *parsed.options, "-c", standby_module.bootstrap_code(package_dir)]
    child_environ = dict(environ)
    protocol.apply(child_environ, [standby_module.STANDBY_FD_NAME], os.getpid())

    # NOTE: a child that this process forks without exec inherits parent_end,
    # so a standby whose generation was killed reads EOF only once that child exits.
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = _native.spawn_with_fds(
            os.fsencode(current.executable),
            restart._encode_argv(argv),
            restart._encode_environment(child_environ),
            [child_end.fileno()],
        )
    except BaseException:
        parent_end.close()
        raise
    finally:
        child_end.close()

    standby = Standby(pid, parent_end, parsed, environ, explicit, current.cwd)
    try:
        parent_end.settimeout(10.0)
        standby_module.send_message(parent_end, request)
    except OSError:
        standby.kill()
        raise
    return standby

