"""Zero-downtime upgrades: start the next generation, wait until it is ready, hand over.

Upgrader.upgrade() starts a new run of this program next to the running one,
through fdpass_spawn(), and passes it every socket that listen() returned.
Both generations then share the same listening sockets, so connections keep
arriving in one accept queue while the new code starts. The new generation
calls Upgrader.ready(), which wakes the old one through a pipe; only then
does the old generation stop accepting and exit. If the new generation exits,
crashes or is not ready within upgrade_timeout, the old one keeps serving.

Three fds travel with the sockets, under reserved LISTEN_FDNAMES names:

- READY_FD_NAME: the write end of the readiness pipe. ready() writes this
  process's PID into it. EOF without data means the child gave up.
- PARENT_FD_NAME: the read end of a pipe whose write end only the old
  generation holds. It reads EOF once the old generation has exited, which
  is how wait_for_parent() learns that the previous generation is gone.
- fdpass.state.STATE_FD_NAME: the sealed memfd with upgrade(state=...).
"""

from __future__ import annotations

import atexit
import errno as errno_module
import math
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping

from fdpass import _log, _native, _socket_env, command, notify, protocol, restart
from fdpass import state as state_module

# asyncio, typing and logging cost milliseconds to import, and the new
# generation imports this module on its way to ready(), so they are imported
# only for type checking or in the functions that need them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Sequence
    from typing import IO, Any

    from fdpass.addresses import Address
    from fdpass.prestart import Standby

#: LISTEN_FDNAMES name of the pipe that the new generation signals readiness on.
READY_FD_NAME = "fdpass-ready"
#: LISTEN_FDNAMES name of the pipe that reads EOF once the previous generation exits.
PARENT_FD_NAME = "fdpass-parent"
#: The environment variable with the PID of the generation that started this one.
PARENT_PID_VARIABLE = "FDPASS_PARENT_PID"
#: The environment variable with the time.monotonic_ns() at which a new
#: generation that has not called ready() kills itself.
READY_DEADLINE_VARIABLE = "FDPASS_READY_DEADLINE_NS"
#: The environment variable in which reexec() records, for the new image's Upgrader,
#: which call closed the readiness pipe: "ready" or "stopped".
READY_PIPE_CLOSED_VARIABLE = "FDPASS_READY_PIPE_CLOSED_IN"


# poll() takes its timeout in milliseconds as a C int, so a longer wait is
# split into waits of at most this many milliseconds (about 24.8 days).
_POLL_MAX_MS = 2**31 - 1

# Seconds that a new generation waits past its parent's upgrade_timeout
# before it kills itself. A parent that is alive kills it first and reports
# the timeout, so the new generation's own deadline matters only once that
# parent has died.
_READY_DEADLINE_GRACE = 1.0

# Seconds that upgrade() waits, after EOF on the readiness pipe, for the new
# generation to exit by itself before it sends SIGKILL. An exiting Python
# closes its files before it exits, so without this wait a crash before
# ready() would be reported as SIGKILL instead of its exit status.
_EOF_EXIT_GRACE = 1.0

# Seconds between waitpid(WNOHANG) checks when os.pidfd_open() is missing
# (Linux before 5.3); with a pidfd the wait is woken by the child's exit.
_EXIT_POLL_INTERVAL = 0.05

# Seconds that the thread which waited for the previous generation's exit
# leaves the standby's start to the event loop of ready(), before it starts
# the standby itself because the loop is blocked or no longer runs.
_LOOP_START_GRACE = 1.0

_STARTING = "starting"
_READY = "ready"
_HANDED_OVER = "handed over"
_STOPPED = "stopped"

_active_lock = threading.Lock()
_active: Upgrader | None = None
# The state (_READY or _STOPPED) of the Upgrader that closed the inherited
# readiness pipe, or None while the pipe is unused. It outlives that
# Upgrader, so a later one in the same process can tell what happened.
_ready_pipe_closed_in: str | None = None
# True once an Upgrader logged the previous generation's exit, which a
# second Upgrader in this process, or a stopped one's thread, then skips.
_parent_exit_logged = False
# The value of PARENT_PID_VARIABLE, which the first Upgrader removes from the environment.
_inherited_parent_pid: int | None = None
# (timer id, PID of the process that armed it) of the timer that kills this
# generation at READY_DEADLINE_VARIABLE's time, until ready() deletes it.
_ready_deadline_timer: tuple[int, int] | None = None
# That time, in time.monotonic_ns(), for a reexec() before ready().
_ready_deadline_ns: int | None = None
_exit_hook_registered = False


class UpgradeError(Exception):
    """An upgrade was not allowed now, or the new generation failed to become ready.

    The generation that called upgrade() keeps serving either way.

    Attributes:
        pid: the new generation's PID, or None if none was started.
        status: the new generation's exit code as os.waitstatus_to_exitcode()
            returns it (negative for a signal), or None if it did not exit
            or was reaped elsewhere.
    """

    def __init__(self, message: str, *, pid: int | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.status = status


class _Attempt:
    """One running upgrade: the new generation and the parent's ends of its pipes."""

    def __init__(self, pid: int, ready_fd: int, parent_fd: int, pidfd: int | None, started: float, deadline: float):
        self.pid = pid
        self.ready_fd = ready_fd  # read end of the readiness pipe, O_NONBLOCK
        self.parent_fd = parent_fd  # write end of the parent pipe; open until this process exits
        self.pidfd = pidfd  # os.pidfd_open(pid), or None without pidfd support
        self.started = started
        self.deadline = deadline
        # Set when the readiness pipe reads EOF: the end of the wait for the exit.
        self.eof_deadline: float | None = None
        self.status: int | None = None


def _describe_status(status: int | None) -> str:
    if status is None:
        return "exited (its status was collected elsewhere)"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"


def _check_pid_file(path: object) -> str:
    """Return path as an absolute str path, or raise TypeError or ValueError naming it."""
    if isinstance(path, bytes):
        raise TypeError(f"pid_file must be a str or os.PathLike path, not bytes; pass os.fsdecode({path!r})")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"pid_file must be a path or None, not {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"pid_file must be a str path, not {text!r}; pass os.fsdecode() of it")
    if not text:
        raise ValueError("pid_file must be a path to a file, not an empty string")
    if "\0" in text:
        raise ValueError(f"pid_file must not contain a NUL byte: {text!r}")
    if text.endswith(os.sep) or os.path.basename(text) in (".", ".."):
        raise ValueError(f"pid_file must name a file, not a directory: {text!r}")
    return os.path.abspath(text)


def write_pid_file(path: str, pid: int) -> None:
    """Write pid to path atomically: a temporary file in the same directory, then rename().

    A reader sees either the old content or the new one, never a partial
    write. An OSError names path, not the temporary file, and a likely
    cause.
    """
    path = _check_pid_file(path)
    directory, name = os.path.split(path)
    # The PID and random bytes keep concurrent writers from sharing a name.
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise _pid_file_error(error, path) from None
    try:
        os.write(fd, f"{pid}\n".encode())
        os.close(fd)
        fd = -1
        os.replace(temporary, path)
    except OSError as error:
        _remove_temporary(fd, temporary)
        raise _pid_file_error(error, path) from None
    except BaseException:
        _remove_temporary(fd, temporary)
        raise


def _pid_file_error(error: OSError, path: str) -> OSError:
    """Return error as an OSError of the same class that names path and a likely cause."""
    if error.errno == errno_module.ENOENT:
        hint = "; check that its directory exists"
    elif error.errno in (errno_module.EACCES, errno_module.EPERM):
        hint = f"; check that this user (UID {os.geteuid()}) may create files in its directory"
    elif error.errno == errno_module.EISDIR:
        hint = "; pid_file must name a file, not a directory"
    else:
        hint = ""
    return OSError(error.errno, f"cannot write the PID file: {error.strerror}{hint}", path)


def _remove_temporary(fd: int, temporary: str) -> None:
    if fd >= 0:
        os.close(fd)
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass


def _send_notification(send: Callable[..., bool], *args: Any) -> None:
    try:
        send(*args)
    except (OSError, ValueError) as error:
        _log.warning("sd_notify to %s failed: %s", os.environ.get(notify.NOTIFY_SOCKET), error)


def _pidfd_open(pid: int) -> int | None:
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError as error:
        _log.debug("pidfd_open(%d) failed (%s); polling waitpid() instead", pid, error)
        return None
    return fd


def _parent_pid() -> int:
    """Return the PID of the generation that started this one, and remove its variable.

    The variable is read rather than os.getppid(), which names a reaper
    instead once the parent has exited.
    """
    global _inherited_parent_pid

    text = os.environ.pop(PARENT_PID_VARIABLE, "")
    # Linux PIDs have at most 7 digits, and int() raises for over 4300.
    if text.isascii() and text.isdigit() and len(text) <= 10 and int(text) > 0:
        _inherited_parent_pid = int(text)
    if _inherited_parent_pid is not None:
        return _inherited_parent_pid
    return os.getppid()


def _arm_ready_deadline() -> None:
    """Arm the timer that kills this generation at its parent's deadline plus a grace, unless ready() comes first.

    Takes READY_DEADLINE_VARIABLE out of os.environ, so the program's own
    children do not inherit it.
    """
    global _ready_deadline_timer, _ready_deadline_ns

    text = os.environ.pop(READY_DEADLINE_VARIABLE, "")
    if not text or _ready_deadline_timer is not None:
        return
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 2**63):
        _log.warning("ignoring %s=%r, which is not a time.monotonic_ns() value", READY_DEADLINE_VARIABLE, text)
        return

    try:
        timer = _native.arm_kill_timer(int(text))
    except OSError as error:
        _log.warning(
            "this generation cannot arm its ready() deadline, so if its parent dies, "
            "a hang before ready() keeps the listening sockets: %s",
            error,
        )
        return
    _ready_deadline_timer = (timer, os.getpid())
    _ready_deadline_ns = int(text)
    seconds = (int(text) - time.monotonic_ns()) / 1e9
    _log.debug("generation PID %d kills itself unless ready() is called within %.1f s", os.getpid(), seconds)


def _cancel_ready_deadline() -> None:
    global _ready_deadline_timer

    # A child forked without exec has no copy of the timer.
    if _ready_deadline_timer is None or _ready_deadline_timer[1] != os.getpid():
        return
    timer, _ = _ready_deadline_timer
    _ready_deadline_timer = None
    try:
        _native.cancel_kill_timer(timer)
    except OSError as error:
        _log.warning("could not delete the ready() deadline timer %d: %s", timer, error)


def _ready_deadline_value(upgrade_timeout: float) -> str | None:
    """Return READY_DEADLINE_VARIABLE's value for a new generation started now, or None for a timeout too large."""
    deadline_ns = time.monotonic_ns() + math.ceil((upgrade_timeout + _READY_DEADLINE_GRACE) * 1e9)
    return str(deadline_ns) if deadline_ns < 2**63 else None


def _close_quietly(fd: int | None) -> None:
    if fd is None or fd < 0:
        return
    try:
        os.close(fd)
    except OSError as error:
        _log.debug("close(%d) failed: %s", fd, error)


class Upgrader:
    """Runs one generation of a program that upgrades itself without closing its sockets.

    Create one Upgrader early in the program, get sockets from listen(), and
    call ready() once the program serves. upgrade(), from any thread, starts
    the next generation and returns its PID once that one has called
    ready(). wait_exit() returns in the old generation after that, or after
    stop(): then it closes its listening sockets (close(), never shutdown(),
    because both generations share them), finishes its requests and exits.

    Only one Upgrader may be active in a process at a time; stop() ends it.

    Args:
        upgrade_timeout: seconds the new generation has to call ready()
            before it is killed with SIGKILL. If this generation dies
            first, the new one kills itself 1 s after that time.
        pid_file: a path that ready() writes this process's PID to,
            atomically, or None.
        prestart: True to start the next generation's interpreter, a
            standby, after ready() (once the previous generation has
            exited) and after each failed upgrade, so that upgrade() only
            hands over to it. The standby preloads the
            stdlib modules this process has imported and fdpass, or with a
            list of module names exactly those. If ready() ran on an
            asyncio event loop whose thread may use every online CPU, that
            thread moves onto the standby's CPU once the standby has
            preloaded. False (the default) starts each new generation
            cold. See docs/upgrade.md.
        prestart_fork: with prestart, each standby forks the next one once
            it has preloaded, and the generation it becomes adopts that one
            instead of starting an interpreter. False starts every standby
            fresh, so no two generations share a hash secret,
            address-space layout or stack canary, at the cost of a full
            interpreter start-up after each upgrade.

    Raises:
        TypeError, ValueError: an argument is malformed, for example prestart
            is not a bool or a list of module names, or pid_file is empty
            or contains a NUL byte.
        UpgradeError: another Upgrader is active in this process.
        ValueError: the inherited LISTEN_* variables are malformed, as
            fdpass.inherit() raises.
    """

    def __init__(
        self,
        *,
        upgrade_timeout: float = 60.0,
        pid_file: str | os.PathLike[str] | None = None,
        prestart: bool | Sequence[str] = False,
        prestart_fork: bool = True,
    ) -> None:
        global _active, _ready_pipe_closed_in

        timeout = _check_timeout(upgrade_timeout, "upgrade_timeout", wait_forever=False)
        pid_path = None if pid_file is None else _check_pid_file(pid_file)
        prestart_modules: tuple[str, ...] | bool = False
        if prestart is not False:
            from fdpass import prestart as prestart_module

            prestart_modules = prestart_module.check_prestart(prestart)
        if not isinstance(prestart_fork, bool):
            raise TypeError(f"prestart_fork must be True or False, not {prestart_fork!r}")

        # Raises the ValueError for malformed LISTEN_* variables before any state changes.
        restart.inherit()

        with _active_lock:
            if _active is not None:
                raise UpgradeError(
                    f"another Upgrader is active in this process ({_active!r}); call its stop() first"
                )
            _active = self

        self._upgrade_timeout: float = timeout
        # Thread.join() and socket timeouts reject values above threading.TIMEOUT_MAX.
        self._join_timeout = min(timeout, threading.TIMEOUT_MAX)
        self._pid_file = pid_path
        self._lock = threading.Lock()
        self._state = _STARTING
        # True once ready() has succeeded, and still after a hand-over or
        # stop(), so that a later ready() does nothing.
        self._ready_called = False
        self._attempt: _Attempt | None = None
        self._upgrading = False
        self._successor: int | None = None
        self._handover_fd: int | None = None
        self._exit_event = threading.Event()
        self._exit_read_fd, self._exit_write_fd = os.pipe()
        self._exit_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._prestart = prestart_modules
        self._prestart_fork = prestart_fork
        # Only this process may kill the standby, never a child forked without exec.
        self._owner_pid = os.getpid()
        # Held while a standby starts or is taken, so upgrade() waits for one being started.
        self._standby_lock = threading.Lock()
        # The thread that holds _standby_lock in _start_standby(), or None.
        self._standby_lock_owner: int | None = None
        # "blocked" from reexec()'s standby stop until its exec, because a
        # standby started meanwhile would stay a zombie. "rejected" once a
        # start was turned away, so that a failed exec runs it after all.
        self._standby_exec_block: str | None = None
        self._standby: Standby | None = None
        # Cleared by a ready() under a parent, which leaves the standby's
        # start for later. Set again, under _standby_lock, by the one caller
        # that claims that start: the event loop, the thread that waits for
        # the parent, or an upgrade.
        self._standby_claimed = threading.Event()
        self._standby_claimed.set()
        # The running event loop of ready()'s thread, whose thread Standby.start_move() moves.
        self._serving_loop: asyncio.AbstractEventLoop | None = None

        ready_pipe = restart.own_fd(READY_FD_NAME)
        # An earlier Upgrader's ready() or stop() closes the inherited pipe.
        self._ready_pipe_was_closed = ready_pipe is not None and ready_pipe.closed
        self._ready_pipe = None if self._ready_pipe_was_closed else ready_pipe
        self._parent_pipe = restart.own_fd(PARENT_FD_NAME)
        closed_in = os.environ.pop(READY_PIPE_CLOSED_VARIABLE, None)
        if ready_pipe is None and self._parent_pipe is not None:
            # An image before reexec() closed the pipe, which reexec() then
            # did not pass, so this image's ready() must act as the Upgrader
            # there would have. The first Upgrader takes the variable, and
            # the module keeps its value for later ones.
            if _ready_pipe_closed_in is None and closed_in in (_READY, _STOPPED):
                _ready_pipe_closed_in = closed_in
            self._ready_pipe_was_closed = _ready_pipe_closed_in is not None
        self._parent_pid = _parent_pid() if self._parent_pipe is not None else None
        self._parent_gone = self._parent_pipe is None
        # NOTE: a cold-started generation that hangs before it creates its
        # Upgrader, for example in an import, is not covered by this
        # deadline (a standby arms it at the hand-over). A timer armed before
        # execve would kill a new generation whose fdpass does not disarm it.
        if self._ready_pipe is not None:
            _arm_ready_deadline()
        else:
            os.environ.pop(READY_DEADLINE_VARIABLE, None)

    def __repr__(self) -> str:
        return f"<fdpass.Upgrader pid={os.getpid()} state={self._state!r} has_parent={self.has_parent}>"

    def __enter__(self) -> Upgrader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def has_parent(self) -> bool:
        """True if an earlier generation started this process with upgrade()."""
        return self._parent_pid is not None

    @property
    def parent_pid(self) -> int | None:
        """The PID of the generation that started this one, or None."""
        return self._parent_pid

    @property
    def standby_pid(self) -> int | None:
        """The PID of the standby that the next upgrade() hands over to, or None."""
        standby = self._standby
        return None if standby is None else standby.pid

    @property
    def upgrade_timeout(self) -> float:
        """Seconds a new generation has to call ready()."""
        return self._upgrade_timeout

    @property
    def pid_file(self) -> str | None:
        """The absolute path ready() writes the PID to, or None."""
        return self._pid_file

    def listen(
        self,
        address: Address,
        *,
        type: int = socket.SOCK_STREAM,
        backlog: int | None = None,
        name: str | None = None,
    ) -> socket.socket:
        """Return the inherited socket for address, or bind a new one, as fdpass.listen() does.

        Every socket returned here is passed to the next generation.

        Raises:
            TypeError, ValueError: as fdpass.listen() raises them, also for
                a name that starts with "fdpass-".
        """
        return restart.listen(address, type=type, backlog=backlog, name=name)

    def ready(self) -> None:
        """Declare this generation ready to serve.

        Writes the PID file, deletes the timer that would kill this
        generation if its parent died and it missed its deadline, then
        writes this PID to the readiness pipe, so
        the previous generation's upgrade() returns it. In a first generation, sends READY=1 to
        NOTIFY_SOCKET instead; under a parent, the parent sends MAINPID= and
        READY=1, since systemd accepts notifications from the main PID only
        by default. With prestart, then starts the standby, or under a
        parent, once the parent has exited: from the asyncio event loop
        running in this thread, if there is one and it runs the start within
        1 s, else from a thread. An upgrade that begins first starts it
        itself. Calling it again does nothing.

        If an earlier Upgrader in this process called ready(), the previous
        generation already has this PID, so this call sends nothing to the
        readiness pipe or NOTIFY_SOCKET.

        Raises:
            UpgradeError: stop() was called before ready(). Or, under a
                parent, the readiness pipe was closed before ready(), for
                example by an earlier Upgrader's stop() in this process, so
                the previous generation treats this one as failed.
            OSError: the PID file could not be written. The error names
                pid_file and the likely cause. Nothing was
                written to the readiness pipe, so the previous generation's
                upgrade() fails.
        """
        global _ready_pipe_closed_in

        with self._lock:
            if self._ready_called:
                return
            if self._state == _STOPPED:
                raise UpgradeError("ready() was called after stop(); this generation no longer serves")
            if self._ready_pipe_was_closed and _ready_pipe_closed_in != _READY:
                raise UpgradeError(self._closed_ready_pipe_message())
            if self._pid_file is not None:
                write_pid_file(self._pid_file, os.getpid())
            self._state = _READY
            self._ready_called = True
            self._serving_loop = _running_loop()
            ready_pipe, self._ready_pipe = self._ready_pipe, None
            if ready_pipe is not None:
                _ready_pipe_closed_in = _READY

        # Deleted before the readiness write, so that the timer cannot kill a
        # generation that its parent already counts as ready.
        _cancel_ready_deadline()
        if self._ready_pipe_was_closed:
            _log.info(
                "generation PID %d is ready; an earlier Upgrader already notified its parent PID %s",
                os.getpid(),
                self._parent_pid,
            )
        else:
            self._notify_ready(ready_pipe)
        if self._prestart is False:
            _discard_successor()
            return
        if self._parent_gone:
            self._start_standby()
            return

        # upgrade() is not allowed before the previous generation has exited,
        # so the standby starts only then, and its start-up does not compete
        # for CPU with that generation's last requests and exit.
        self._standby_claimed.clear()
        thread = threading.Thread(
            target=self._start_standby_after_parent, args=(self._serving_loop,), name="fdpass-standby", daemon=True
        )
        thread.start()

    def _start_standby_after_parent(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.wait_for_parent()

        # Starting the standby runs about 1 ms of Python. On ready()'s loop it
        # runs between two loop steps, while this thread would hold the GIL
        # and stall the loop for that time.
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._start_pending_standby)
            except RuntimeError:
                pass  # the loop is closed
            else:
                self._standby_claimed.wait(_LOOP_START_GRACE)

        # NOTE: without an event loop in ready()'s thread, or with a loop
        # blocked for _LOOP_START_GRACE, this thread starts the standby and
        # holds the GIL meanwhile (measured in docs/benchmarks.md, upgrades).
        self._start_pending_standby()

    def _start_pending_standby(self) -> None:
        self._start_standby(during_upgrade=True, only_if_pending=True)

    def _closed_ready_pipe_message(self) -> str:
        if _ready_pipe_closed_in == _STOPPED:
            cause = "an earlier Upgrader's stop() in this process closed the readiness pipe before ready()"
        else:
            cause = "the readiness pipe was closed before ready(), though no Upgrader closed it"
        return (
            f"ready() cannot notify the previous generation (PID {self._parent_pid}): {cause}, "
            "so that generation treats this one as failed; this process should exit"
        )

    def _notify_ready(self, ready_pipe: IO[bytes] | None) -> None:
        if ready_pipe is None:
            _send_notification(notify.ready)
            _log.info("generation PID %d is ready", os.getpid())
            return

        try:
            os.write(ready_pipe.fileno(), f"{os.getpid()}\n".encode())
        except BrokenPipeError:
            _log.warning("generation PID %d is ready, but its parent PID %s is gone", os.getpid(), self._parent_pid)
        else:
            _log.info("generation PID %d is ready and notified its parent PID %s", os.getpid(), self._parent_pid)
        finally:
            ready_pipe.close()

    def upgrade(self, *, state: bytes | None = None, fds: Mapping[str, restart.FdLike] | None = None) -> int:
        """Start the next generation of this program and wait until it calls ready().

        The new generation runs the command line that started this one (see
        fdpass.command) with every socket from listen() plus fds, and with
        state readable through fdpass.inherited_state(). While it starts,
        this generation keeps serving; other threads are not disturbed.

        Args:
            state: bytes to hand to the new generation, or None.
            fds: more fds to pass, as a mapping from name to fd.

        Returns:
            The PID of the new generation, which is ready. wait_exit() returns
            from now on, and the PID file names the new generation.

        Raises:
            UpgradeError: the upgrade is not allowed now, because this
                generation is not ready, is stopped or already handed over,
                another upgrade is running, or the previous generation still
                runs. Or the new generation could not start, exited before
                ready(), closed its readiness pipe before ready() (for
                example by stop()) and was killed, or was not ready within
                upgrade_timeout and was killed. Or an fd number in fds is not
                open, or is also the fd of a socket from listen(). Or this
                program cannot be started again, because it was read from
                standard input. Or this process was forked from the one that
                created the Upgrader. Either way nothing about this
                generation changed, and a later upgrade() may succeed.
            TypeError, ValueError: state or fds is malformed: a name in fds
                is also the name of a socket from listen(), two names map to
                one fd, or an fd is negative or a closed socket object.
        """
        attempt = self._begin_upgrade(state, fds)

        try:
            outcome = self._wait_blocking(attempt)
        except BaseException as error:
            self._abandon_attempt(attempt, error)
            raise

        return self._finish_upgrade(attempt, outcome)

    async def upgrade_async(
        self, *, state: bytes | None = None, fds: Mapping[str, restart.FdLike] | None = None
    ) -> int:
        """Run upgrade() without blocking the asyncio event loop.

        Cancelling the awaiting task kills the new generation and ends the
        upgrade, as if it had timed out.
        """
        await self._wait_standby_report_async()
        attempt = self._begin_upgrade(state, fds)

        try:
            outcome = await self._wait_async(attempt)
        except BaseException as error:
            self._abandon_attempt(attempt, error)
            raise

        return self._finish_upgrade(attempt, outcome)

    def wait_exit(self, timeout: float | None = None) -> bool:
        """Wait until this generation should exit: after a successful upgrade() or stop().

        Then close the listening sockets (close(), never shutdown()), finish
        the requests in flight and exit. Unix socket paths stay in place for
        the new generation.

        Args:
            timeout: seconds to wait, or None or math.inf to wait without
                a limit.

        Returns:
            True once this generation should exit, False if timeout seconds
            passed first.

        Raises:
            TypeError, ValueError: timeout is not a number of seconds >= 0
                or None.
        """
        limit = _check_timeout(timeout, "wait_exit() timeout", wait_forever=True)

        # Event.wait() raises OverflowError above threading.TIMEOUT_MAX.
        return _wait_in_pieces(self._exit_event.wait, limit, threading.TIMEOUT_MAX)

    async def wait_exit_async(self) -> None:
        """Wait, without blocking the event loop, until this generation should exit."""
        import asyncio

        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._exit_event.is_set():
                return
            self._exit_waiters.append((loop, future))

        try:
            await future
        finally:
            with self._lock:
                if (loop, future) in self._exit_waiters:
                    self._exit_waiters.remove((loop, future))

    def wait_for_parent(self, timeout: float | None = None) -> bool:
        """Wait until the generation that started this one has exited.

        Only the parent has the write end of a pipe whose read end this
        process inherited, so the read end reports EOF once every copy of
        the write end is closed, which happens when the parent exits. A
        first generation has no parent and returns True at once.

        Args:
            timeout: seconds to wait, or None or math.inf to wait without
                a limit.

        Returns:
            True once the parent is gone, False if timeout seconds passed
            first.

        Raises:
            TypeError, ValueError: timeout is not a number of seconds >= 0
                or None.
        """
        limit = _check_timeout(timeout, "wait_for_parent() timeout", wait_forever=True)
        with self._lock:
            if self._parent_gone or self._parent_pipe is None:
                return True
            fd = self._parent_pipe.fileno()

        # NOTE: a process forked from the parent without exec keeps a copy of
        # the write end, so EOF comes only once that process has exited too.
        poller = select.poll()
        poller.register(fd, select.POLLIN)

        def poll_once(seconds: float | None) -> bool:
            return bool(poller.poll(None if seconds is None else _poll_milliseconds(seconds)))

        if not _wait_in_pieces(poll_once, limit, _POLL_MAX_MS / 1000):
            return False

        self._mark_parent_gone()
        return True

    async def wait_for_parent_async(self) -> None:
        """Wait, without blocking the event loop, until the previous generation has exited."""
        with self._lock:
            if self._parent_gone or self._parent_pipe is None:
                return
            # A private copy, so concurrent waiters each get their own add_reader() slot.
            fd = os.dup(self._parent_pipe.fileno())

        import asyncio

        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve_future, future)
        try:
            await future
        finally:
            loop.remove_reader(fd)
            os.close(fd)

        self._mark_parent_gone()

    def stop(self) -> None:
        """End this generation's part in upgrades: wait_exit() returns, and upgrade() raises.

        An upgrade() that is waiting kills its new generation and raises
        UpgradeError. Before ready(), stop() also closes the readiness pipe,
        so a waiting parent reads EOF, which tells it this generation gave up.
        Calling it again does nothing.
        """
        global _active, _ready_pipe_closed_in

        # Free the slot first, so that a second stop() that returns early
        # below never leaves it taken while the first one finishes.
        with _active_lock:
            if _active is self:
                _active = None

        with self._lock:
            if self._state == _STOPPED:
                return
            self._state = _STOPPED
            ready_pipe, self._ready_pipe = self._ready_pipe, None
            if ready_pipe is not None:
                _ready_pipe_closed_in = _STOPPED

        if ready_pipe is not None:
            ready_pipe.close()
        self._signal_exit()
        self._stop_standby()
        _log.info("generation PID %d stopped taking part in upgrades", os.getpid())

    # The steps of an upgrade.

    def _refusal(self) -> str | None:
        if self._state == _STARTING:
            return "this generation has not called ready() yet; an upgrade is allowed only after ready()"
        if self._state == _STOPPED:
            return "stop() was called; this generation allows no more upgrades"
        if self._state == _HANDED_OVER:
            return f"this generation already handed over to PID {self._successor}; it should exit"
        if self._upgrading:
            running = f" (new generation PID {self._attempt.pid})" if self._attempt is not None else ""
            return f"an upgrade is already running{running}; wait for it to finish"
        if not self._parent_gone and not self._poll_parent_gone():
            return (
                f"the previous generation (PID {self._parent_pid}) is still running; "
                "upgrade again after it exits (see wait_for_parent())"
            )
        return None

    def _begin_upgrade(self, state: object, fds: Mapping[str, restart.FdLike] | None) -> _Attempt:
        # Checked before self._lock, which another thread may have held at fork().
        if os.getpid() != self._owner_pid:
            raise UpgradeError(
                f"upgrade not allowed: PID {os.getpid()} was forked from PID {self._owner_pid}, which created "
                f"this Upgrader; call upgrade() in PID {self._owner_pid}, so that one line of generations serves"
            )

        state_bytes = None if state is None else state_module.to_bytes(state)
        if fds is not None and not isinstance(fds, Mapping):
            raise TypeError(f"fds must be a mapping from name to fd, not {type(fds).__name__}")
        # NOTE: a buffered reader in fds keeps its read-ahead here, and the
        # new generation reads on from the fd offset, past those bytes.
        extra = restart._resolve_fds(fds or {})
        extra_numbers, extra_names = extra.numbers, extra.names
        extra_labels = [extra.label(index) for index in range(len(extra_numbers))]
        restart.check_not_reserved(extra_names)
        _check_not_listener_names(extra_names, extra_labels)
        # A closed fd must be rejected now: the readiness pipes created
        # later could take its number and travel under its name.
        for number, label in zip(extra_numbers, extra_labels, strict=True):
            if not _fd_is_open(number):
                raise UpgradeError(f"upgrade not started: {label} is not open")

        with self._lock:
            refusal = self._refusal()
            if refusal is not None:
                raise UpgradeError(f"upgrade not allowed now: {refusal}")
            self._upgrading = True

        try:
            attempt = self._spawn(state_bytes, extra.items, extra_numbers, extra_names, extra_labels)
        except BaseException:
            with self._lock:
                self._upgrading = False
            self._start_standby()
            raise

        with self._lock:
            self._attempt = attempt
        _register_exit_hook()
        return attempt

    def _spawn(
        self,
        state_bytes: bytes | None,
        extra_items: list[object],
        extra_numbers: list[int],
        extra_names: list[str],
        extra_labels: list[str],
    ) -> _Attempt:
        listeners = restart.listeners()
        numbers = [sock.fileno() for _, sock in listeners] + extra_numbers
        _log_unpassed_sockets(numbers)
        names = [name for name, _ in listeners] + extra_names
        labels = [f"listener {name!r} ({sock!r})" for name, sock in listeners] + extra_labels

        environ = dict(os.environ)
        environ.pop(_socket_env.VARIABLE, None)
        environ.pop(READY_DEADLINE_VARIABLE, None)
        environ[PARENT_PID_VARIABLE] = str(os.getpid())
        try:
            start = command.current()
        except ValueError as error:
            raise UpgradeError(f"upgrade not started: {error}") from error
        if start.cwd is not None and not os.path.isdir(start.cwd):
            raise UpgradeError(
                f"upgrade not started: the directory {start.cwd!r} that this -m program started in is gone, "
                "and the new generation must start there to import it"
            )
        path = os.fsencode(start.executable)
        argv = restart._encode_argv(start.argv)

        # Created inside the try, so that an error such as EMFILE becomes an UpgradeError.
        ready_read = ready_write = parent_read = parent_write = -1
        state_fd = None
        reloading_sent = False
        try:
            ready_read, ready_write = os.pipe()
            parent_read, parent_write = os.pipe()
            state_fd = None if state_bytes is None else state_module.create_state_fd(state_bytes)
            passed = [*numbers, ready_write, parent_read]
            passed_names = [*names, READY_FD_NAME, PARENT_FD_NAME]
            if state_fd is not None:
                passed.append(state_fd)
                passed_names.append(state_module.STATE_FD_NAME)
            # fdpass_spawn() puts the child's own PID in LISTEN_PID. The
            # child's PID is not known yet, so FDPASS_SOCKETS names its
            # parent, this process, which is also the standby's parent.
            protocol.apply(environ, passed_names, os.getpid())
            passed_items = [*(sock for _, sock in listeners), *extra_items]
            passed_items += [None] * (len(passed) - len(passed_items))
            socket_spec = _socket_env.encode(passed_items, os.getpid(), child=True)
            if socket_spec is not None:
                environ[_socket_env.VARIABLE] = socket_spec
            envp = restart._encode_environment(environ)

            _send_notification(notify.reloading)
            reloading_sent = True
            pid, started = self._start_generation(start, environ, path, argv, envp, passed)
        except BaseException as error:
            _close_quietly(ready_read)
            _close_quietly(parent_write)
            failure = _spawn_failure(error, numbers, labels, len(listeners), start.executable)
            if reloading_sent:
                # READY=1 ends the reload that RELOADING=1 announced.
                _send_notification(notify.ready)
            _log.warning("upgrade failed: %s; PID %d keeps serving", failure or _describe_error(error), os.getpid())
            if failure is None:
                raise
            raise failure from error
        finally:
            _close_quietly(ready_write)
            _close_quietly(parent_read)
            _close_quietly(state_fd)

        os.set_blocking(ready_read, False)
        _log.info(
            "upgrade started: generation PID %d with %d fds (%s)",
            pid,
            len(passed),
            ", ".join(f"{fd}={name!r}" for fd, name in zip(passed, passed_names, strict=True)),
        )
        return _Attempt(
            pid=pid,
            ready_fd=ready_read,
            parent_fd=parent_write,
            pidfd=_pidfd_open(pid),
            started=started,
            deadline=started + self._upgrade_timeout,
        )

    def _start_generation(
        self,
        start: command.StartCommand,
        environ: dict[str, str],
        path: bytes,
        argv: list[bytes],
        envp: list[bytes],
        passed: list[int],
    ) -> tuple[int, float]:
        """Hand over to the standby if it is fit, else spawn cold; return the PID and the start time."""
        if self._prestart is not False:
            # A standby receives the fds through SCM_RIGHTS, which accepts
            # what fdpass_spawn() rejects, so check them as it does.
            _check_passed_fds(passed)
        standby = self._take_standby()
        if standby is not None:
            handed_over = self._hand_over(standby, start, environ, passed)
            if handed_over is not None:
                return handed_over
        if self._exit_event.is_set():
            raise UpgradeError("stop() was called during the upgrade; no new generation was started")

        # The deadline is set at the start, so it is never before this
        # process's own deadline of started + upgrade_timeout.
        started = time.monotonic()
        deadline = _ready_deadline_value(self._upgrade_timeout)
        if deadline is not None:
            envp = [*envp, f"{READY_DEADLINE_VARIABLE}={deadline}".encode()]
        cwd = None if start.cwd is None else os.fsencode(start.cwd)
        return _native.spawn_with_fds(path, argv, envp, passed, cwd=cwd), started

    def _hand_over(
        self, standby: Standby, start: command.StartCommand, environ: dict[str, str], passed: list[int]
    ) -> tuple[int, float] | None:
        """Hand the new generation's fds and settings to standby; return its PID and the start time, or None."""
        reason = standby.unfit_reason(start, environ, len(passed), self._exit_read_fd)
        if self._exit_event.is_set():
            standby.kill()
            return None
        cwd = start.cwd or ""
        if reason is None and start.cwd is None:
            try:
                cwd = os.getcwd()
            except OSError as error:
                reason = f"the working directory cannot be read ({error})"

        if reason is None:
            started = time.monotonic()
            deadline = _ready_deadline_value(self._upgrade_timeout)
            if deadline is not None:
                environ = {**environ, READY_DEADLINE_VARIABLE: deadline}
            try:
                standby.hand_over(start.argv, environ, cwd, passed, self._join_timeout)
            except OSError as error:
                reason = f"the hand-over failed: {error}"
            else:
                _log.info("upgrade handed %d fds over to standby PID %d", len(passed), standby.pid)
                return standby.pid, started

        # A module named in prestart= that fails to import is a mistake in
        # the program, such as a misspelled name, so it gets a warning.
        level = _log.WARNING if standby.explicit and standby.failed_imports else _log.INFO
        _log.log(
            level,
            "upgrade starts the new generation cold, because standby PID %d is not usable: %s",
            standby.pid,
            reason,
        )
        standby.kill()
        return None

    # The standby of Upgrader(prestart=...).

    def _start_standby(self, *, during_upgrade: bool = False, only_if_pending: bool = False) -> None:
        """Start a standby if prestart is on, this generation is ready, and none runs; log a failure.

        An upgrade that is running prevents the start unless during_upgrade
        is true, because that upgrade would not wait for the standby. With
        only_if_pending, starts it only if the start that ready() left for
        after the parent's exit is still unclaimed, and claims it.
        """
        if self._prestart is False or self._standby_lock_owner == threading.get_ident():
            return

        with self._standby_lock:
            self._standby_lock_owner = threading.get_ident()
            try:
                standby = self._start_standby_locked(during_upgrade, only_if_pending)
            finally:
                self._standby_lock_owner = None
        if standby is None:
            return

        _register_exit_hook()
        if standby.forked:
            _log.info("standby PID %d, forked before the hand-over, adopted for the next upgrade", standby.pid)
        else:
            _log.info("standby PID %d started for the next upgrade", standby.pid)

    def _start_standby_locked(self, during_upgrade: bool, only_if_pending: bool) -> Standby | None:
        """Do _start_standby()'s work under _standby_lock; return the standby started, or None."""
        from fdpass import prestart as prestart_module

        if self._prestart is False:
            return None
        if self._standby_exec_block is not None:
            self._standby_exec_block = "rejected"
            return None
        if only_if_pending:
            if self._standby_claimed.is_set():
                return None
            self._standby_claimed.set()
        with self._lock:
            if self._state != _READY or (self._upgrading and not during_upgrade) or self._standby is not None:
                return None

        try:
            standby = prestart_module.start(None if self._prestart is True else self._prestart, self._prestart_fork)
        except (OSError, ValueError) as error:
            _log.warning("could not start a standby, so the next upgrade starts cold: %s", error)
            return None

        # A signal handler may have run stop() or an upgrade during the start.
        with self._lock:
            still_due = self._state == _READY and (during_upgrade or not self._upgrading)
        if not still_due:
            standby.kill()
            return None
        self._standby = standby
        if self._serving_loop is not None:
            standby.start_move(self._serving_loop)
        return standby

    def _take_standby(self, *, for_upgrade: bool = True) -> Standby | None:
        # upgrade() runs only once the previous generation has exited, so a
        # standby start still pending then is due, and it runs here rather
        # than wait for the loop or the thread. stop() starts none.
        # A signal handler that runs upgrade() or stop() in the thread that
        # holds _standby_lock for a start would wait for itself, so it gets
        # no standby, and the upgrade starts cold.
        if self._standby_lock_owner == threading.get_ident():
            return None
        if for_upgrade:
            self._start_pending_standby()
        with self._standby_lock:
            standby, self._standby = self._standby, None
        return standby

    def _block_standby_for_exec(self) -> bool:
        """Claim the start ready() left pending and reject later ones until the exec; return whether one was pending."""
        pending = not self._standby_claimed.is_set()
        self._standby_claimed.set()
        self._standby_exec_block = "blocked"
        return pending

    def _wait_standby_lock(self) -> None:
        with self._standby_lock:
            pass

    def _stop_standby(self) -> None:
        _discard_successor()
        standby = self._take_standby(for_upgrade=False)
        if standby is None:
            return

        # Standby.kill() sends no signal from a forked child, whose stop()
        # or atexit hook would otherwise kill the standby or, after a
        # hand-over, the new generation.
        standby.kill()
        if standby.owner_pid == os.getpid():
            _log.info("standby PID %d stopped", standby.pid)

    async def _wait_standby_report_async(self) -> None:
        """Wait, without blocking the event loop, until a standby still starting has sent its report."""
        import asyncio

        # upgrade() refuses to run while the previous generation does, so a
        # start left by ready() is due only then. Another thread that is
        # starting the standby holds _standby_lock until the standby runs,
        # so that wait happens off the loop. A start still pending runs here.
        if self._prestart is not False and (self._parent_gone or self._poll_parent_gone()):
            if self._standby_lock.locked():
                await asyncio.to_thread(self._wait_standby_lock)
            self._start_pending_standby()

        standby = self._standby
        if standby is None or standby.has_report():
            return
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        stopped: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._exit_waiters.append((loop, stopped))
            if self._exit_event.is_set():
                stopped.set_result(None)
        loop.add_reader(standby.control.fileno(), _resolve_future, readable)
        try:
            # The same deadline bounds the wait that upgrade() then does in
            # unfit_reason(), so that wait does not block the event loop.
            remaining = max(0.0, standby.report_deadline() - time.monotonic())
            await asyncio.wait({readable, stopped}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(standby.control.fileno())
            readable.cancel()
            with self._lock:
                if (loop, stopped) in self._exit_waiters:
                    self._exit_waiters.remove((loop, stopped))
            stopped.cancel()

    def _check_attempt(self, attempt: _Attempt) -> str | None:
        """Return "ready", "exited", "closed", "stopped" or "timeout" once the upgrade has an outcome, else None."""
        if attempt.eof_deadline is None:
            try:
                data = os.read(attempt.ready_fd, 64)
            except BlockingIOError:
                pass
            else:
                if data:
                    return "ready"
                attempt.eof_deadline = min(attempt.deadline, time.monotonic() + _EOF_EXIT_GRACE)

        try:
            pid, wait_status = os.waitpid(attempt.pid, os.WNOHANG)
        except ChildProcessError:
            # NOTE: another thread that reaps any child (os.wait(), a SIGCHLD
            # handler) took the exit status; UpgradeError.status is then None.
            _log.debug("new generation PID %d was reaped elsewhere, so its status is unknown", attempt.pid)
            return "exited"
        if pid == attempt.pid:
            attempt.status = os.waitstatus_to_exitcode(wait_status)
            return "exited"
        if attempt.eof_deadline is not None and time.monotonic() >= attempt.eof_deadline:
            return "closed"

        if self._exit_event.is_set():
            return "stopped"
        if time.monotonic() >= attempt.deadline:
            return "timeout"
        return None

    def _wait_timeout(self, attempt: _Attempt) -> float:
        deadline = attempt.deadline if attempt.eof_deadline is None else attempt.eof_deadline
        remaining = max(0.0, deadline - time.monotonic())
        if attempt.pidfd is None:
            return min(remaining, _EXIT_POLL_INTERVAL)
        return remaining

    def _wait_blocking(self, attempt: _Attempt) -> str:
        poller = select.poll()
        poller.register(self._exit_read_fd, select.POLLIN)
        poller.register(attempt.ready_fd, select.POLLIN)
        if attempt.pidfd is not None:
            poller.register(attempt.pidfd, select.POLLIN)

        ready_registered = True

        while True:
            outcome = self._check_attempt(attempt)
            if outcome is not None:
                return outcome
            if attempt.eof_deadline is not None and ready_registered:
                # A pipe at EOF stays readable; only the exit is left to wait for.
                poller.unregister(attempt.ready_fd)
                ready_registered = False
            poller.poll(_poll_milliseconds(self._wait_timeout(attempt)))

    async def _wait_async(self, attempt: _Attempt) -> str:
        import asyncio

        loop = asyncio.get_running_loop()
        exit_future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._exit_waiters.append((loop, exit_future))
            if self._exit_event.is_set() and not exit_future.done():
                exit_future.set_result(None)

        try:
            while True:
                outcome = self._check_attempt(attempt)
                if outcome is not None:
                    return outcome
                await self._wait_readable(loop, attempt, exit_future)
        finally:
            with self._lock:
                if (loop, exit_future) in self._exit_waiters:
                    self._exit_waiters.remove((loop, exit_future))

    async def _wait_readable(
        self, loop: asyncio.AbstractEventLoop, attempt: _Attempt, exit_future: asyncio.Future[None]
    ) -> None:
        import asyncio

        wakeup: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not wakeup.done():
                wakeup.set_result(None)

        watched = [] if attempt.eof_deadline is not None else [attempt.ready_fd]
        if attempt.pidfd is not None:
            watched.append(attempt.pidfd)
        for fd in watched:
            loop.add_reader(fd, wake)
        try:
            await asyncio.wait(
                {wakeup, exit_future}, timeout=self._wait_timeout(attempt), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for fd in watched:
                loop.remove_reader(fd)
            wakeup.cancel()

    def _end_attempt(self, attempt: _Attempt, *, kill: bool) -> None:
        """Kill (if asked) and reap the new generation, close its pipes, and allow the next upgrade."""
        # NOTE: only the new generation gets SIGKILL. Workers that it forked
        # before ready() live on with copies of the listening sockets.
        if kill and attempt.status is None:
            try:
                os.kill(attempt.pid, signal.SIGKILL)
            except ProcessLookupError:
                _log.debug("new generation PID %d exited before SIGKILL reached it", attempt.pid)
            try:
                _, wait_status = os.waitpid(attempt.pid, 0)
                attempt.status = os.waitstatus_to_exitcode(wait_status)
            except ChildProcessError:
                _log.debug("new generation PID %d was reaped elsewhere, so its status is unknown", attempt.pid)

        _close_quietly(attempt.ready_fd)
        _close_quietly(attempt.parent_fd)
        _close_quietly(attempt.pidfd)
        with self._lock:
            self._attempt = None
            self._upgrading = False
        self._start_standby()

    def _abandon_attempt(self, attempt: _Attempt, error: BaseException) -> None:
        """End an upgrade that an exception interrupted (cancellation, KeyboardInterrupt) as a timeout ends it."""
        try:
            self._end_attempt(attempt, kill=True)
        finally:
            _send_notification(notify.ready)
            _log.warning(
                "upgrade failed: it was interrupted by %s; new generation PID %d was killed; PID %d keeps serving",
                _describe_error(error),
                attempt.pid,
                os.getpid(),
            )

    def _finish_upgrade(self, attempt: _Attempt, outcome: str) -> int:
        elapsed = time.monotonic() - attempt.started

        if outcome == "ready":
            _close_quietly(attempt.ready_fd)
            _close_quietly(attempt.pidfd)
            with self._lock:
                self._attempt = None
                self._upgrading = False
                # The child reads EOF on its end of this pipe once this process exits.
                self._handover_fd = attempt.parent_fd
                self._successor = attempt.pid
                if self._state != _STOPPED:
                    self._state = _HANDED_OVER
            self._signal_exit()
            _send_notification(notify.main_pid, attempt.pid)
            _log.info(
                "upgrade done: generation PID %d is ready after %.3f s; PID %d should now exit",
                attempt.pid,
                elapsed,
                os.getpid(),
            )
            return attempt.pid

        try:
            self._end_attempt(attempt, kill=outcome in ("timeout", "stopped", "closed"))
        finally:
            # READY=1 ends the reload that RELOADING=1 announced.
            _send_notification(notify.ready)
        if outcome == "timeout":
            message = (
                f"new generation PID {attempt.pid} was not ready within upgrade_timeout="
                f"{self._upgrade_timeout:g} s and was killed"
            )
        elif outcome == "closed" and attempt.status in (None, -signal.SIGKILL):
            # Any other status means the new generation exited by itself
            # before SIGKILL took effect, and the last branch reports it.
            message = (
                f"new generation PID {attempt.pid} closed its readiness pipe before ready() "
                "(it called stop() or exited) and was killed"
            )
        elif outcome == "stopped":
            message = f"stop() was called during the upgrade; new generation PID {attempt.pid} was killed"
        else:
            message = (
                f"new generation PID {attempt.pid} {_describe_status(attempt.status)} "
                f"after {elapsed:.3f} s, before it called ready()"
            )
        _log.warning("upgrade failed: %s; PID %d keeps serving", message, os.getpid())
        raise UpgradeError(message, pid=attempt.pid, status=attempt.status)

    # Exit and parent bookkeeping.

    def _signal_exit(self) -> None:
        with self._lock:
            if self._exit_event.is_set():
                return
            self._exit_event.set()
            os.write(self._exit_write_fd, b"x")
            waiters, self._exit_waiters = self._exit_waiters, []

        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve_future, future)
            except RuntimeError:
                # The loop was closed; nothing awaits the future any more.
                pass

    def _poll_parent_gone(self) -> bool:
        if self._parent_pipe is None:
            return True
        poller = select.poll()
        poller.register(self._parent_pipe.fileno(), select.POLLIN)
        if poller.poll(0):
            self._parent_gone = True
        return self._parent_gone

    def _mark_parent_gone(self) -> None:
        global _parent_exit_logged

        with self._lock:
            if self._parent_gone:
                return
            self._parent_gone = True
        with _active_lock:
            first = not _parent_exit_logged
            _parent_exit_logged = True

        if first:
            _log.info("previous generation PID %s has exited", self._parent_pid)


def _spawn_failure(
    error: BaseException, numbers: Sequence[int], labels: Sequence[str], listener_count: int, executable: str
) -> UpgradeError | None:
    """Return the UpgradeError that upgrade() raises for an error from starting the new generation.

    numbers and labels list the listener_count listeners, then the fds from
    upgrade(fds=...).
    Returns None for an error that upgrade() re-raises unchanged, such as
    KeyboardInterrupt or an UpgradeError.
    """
    if isinstance(error, _native.SpawnFdError):
        if error.index >= len(labels):
            problem = "not open" if error.errno == errno_module.EBADF else "passed twice"
            return UpgradeError(f"upgrade not started: an internal pipe is {problem}")
        label = labels[error.index]
        if error.errno == errno_module.EBADF:
            return UpgradeError(f"upgrade not started: {label} is not open")
        # The index is that of the second of two equal fds, so the message also names the first.
        fd = numbers[error.index]
        first = numbers.index(fd)
        hint = ""
        if first < listener_count:
            hint = "; every socket from listen() is passed already, so leave it out of fds"
        return UpgradeError(f"upgrade not started: {label} is passed twice: fd {fd} is also {labels[first]}{hint}")
    if isinstance(error, OSError):
        return UpgradeError(f"could not start the new generation ({executable}): {error}")
    return None


def _check_not_listener_names(names: Sequence[str], labels: Sequence[str]) -> None:
    """Raise ValueError if one of names, from upgrade(fds=...), is also a listener's name.

    The new generation would get both fds under one name, so listen() and
    inherit()[name] would reach only the first, and the other only through
    getall().
    """
    listener_names = dict(restart.listeners())
    for name, label in zip(names, labels, strict=True):
        if name in listener_names:
            raise ValueError(
                f"upgrade not started: {label} has the name of listener {name!r} "
                f"({listener_names[name]!r}); pass it under another name"
            )


def _log_unpassed_sockets(passed: Sequence[int]) -> None:
    """Log, at INFO, each inherited socket that is not in passed, because listen() never returned it."""
    if not _log.enabled(_log.INFO):
        return

    inherited = restart.inherit()
    passed_set = set(passed)
    for description, obj in zip(inherited.descriptions, inherited.objects, strict=True):
        if isinstance(obj, socket.socket) and obj.fileno() != -1 and obj.fileno() not in passed_set:
            _log.info(
                "upgrade does not pass inherited socket fd %d (name %r) to the new generation, because listen() "
                "never returned it; call listen() for it, or pass it with upgrade(fds=...)",
                description.fd,
                description.name,
            )


def _describe_error(error: BaseException) -> str:
    if isinstance(error, UpgradeError):
        return str(error)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _check_timeout(value: object, name: str, *, wait_forever: bool) -> float:
    """Return value as float seconds, math.inf for no limit.

    With wait_forever, None and math.inf mean no limit, and 0 is allowed.
    Without it, value must be positive and finite.

    Raises:
        TypeError: value is not an int or float (bool and str included).
        ValueError: value is NaN, negative, or out of the range above.
    """
    if value is None and wait_forever:
        return math.inf
    expected = "a number of seconds >= 0, or None" if wait_forever else "a positive, finite number of seconds"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {expected}, not {value!r} ({type(value).__name__})")

    try:
        seconds = float(value)
    except OverflowError:
        # An int too large for a float.
        seconds = math.inf if value > 0 else -math.inf
    if math.isnan(seconds) or seconds < 0 or (not wait_forever and (seconds == 0 or seconds == math.inf)):
        raise ValueError(f"{name} must be {expected}, not {value!r}")
    return seconds


def _wait_in_pieces(wait: Callable[[float | None], bool], limit: float, longest: float) -> bool:
    """Call wait(seconds) until it returns True or limit seconds have passed, and return the last result.

    wait(None) waits without a limit, which a limit of math.inf uses. Each
    other call waits at most longest seconds, the most that wait accepts.
    """
    if limit == math.inf:
        return wait(None)

    deadline = time.monotonic() + limit
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        if wait(min(remaining, longest)):
            return True
        if remaining <= longest:
            return False


def _poll_milliseconds(seconds: float) -> int:
    """Return seconds as a poll() timeout: milliseconds rounded up, at most _POLL_MAX_MS.

    Rounding up keeps a deadline a fraction of a millisecond away from
    turning into a busy loop of poll(0) calls.
    """
    if seconds * 1000 >= _POLL_MAX_MS:
        return _POLL_MAX_MS
    return math.ceil(seconds * 1000)


def _fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _check_passed_fds(passed: Sequence[int]) -> None:
    """Raise SpawnFdError for the first closed fd in passed, else for the first repeated one, as fdpass_spawn() does."""
    for index, fd in enumerate(passed):
        if not _fd_is_open(fd):
            raise _native.SpawnFdError(errno_module.EBADF, index)

    seen: set[int] = set()
    for index, fd in enumerate(passed):
        if fd in seen:
            raise _native.SpawnFdError(errno_module.EINVAL, index)
        seen.add(fd)


def _register_exit_hook() -> None:
    global _exit_hook_registered

    with _active_lock:
        if not _exit_hook_registered:
            atexit.register(_end_active_children)
            _exit_hook_registered = True


def _end_active_children() -> None:
    """At interpreter exit, kill a new generation that is not ready yet, and kill and reap the standby.

    An upgrade that another thread runs when the main thread ends (after
    Ctrl-C, say) has no parent left to enforce upgrade_timeout, so its new
    generation would hold the listening sockets until its own deadline.
    """
    upgrader = _active
    # A child forked without exec runs a copy of this hook. It must not take
    # the standby lock, because another thread may have held it at fork().
    if upgrader is None or upgrader._owner_pid != os.getpid():
        return

    attempt = upgrader._attempt
    if attempt is not None and attempt.status is None and not _readable(attempt.ready_fd):
        try:
            os.kill(attempt.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        else:
            _log.warning("interpreter exit during an upgrade: new generation PID %d was killed", attempt.pid)
    upgrader._stop_standby()


def _readable(fd: int) -> bool:
    """Return True if fd has data or EOF to read; a ready new generation has written to its readiness pipe."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True


def _readiness_variables() -> dict[str, str]:
    """Return the upgrade variables that an Upgrader took out of os.environ, for reexec()'s new image.

    With them and the inherited pipes, the new image's Upgrader is still
    the generation that the previous one waits for, or, after ready(),
    still knows its previous generation.
    """
    variables = {}
    if _inherited_parent_pid is not None:
        variables[PARENT_PID_VARIABLE] = str(_inherited_parent_pid)
    if _ready_deadline_ns is not None:
        variables[READY_DEADLINE_VARIABLE] = str(_ready_deadline_ns)
    if _ready_pipe_closed_in is not None:
        variables[READY_PIPE_CLOSED_VARIABLE] = _ready_pipe_closed_in
    return variables


def _check_no_upgrade_running() -> None:
    """Raise UpgradeError if the active Upgrader's upgrade() is running, for reexec() to call first.

    The exec would end that upgrade's wait, and the new generation would
    serve next to the new image, which neither tracks nor reaps it.
    """
    upgrader = _active
    if upgrader is None or upgrader._owner_pid != os.getpid():
        return

    # Read without _lock, because a signal handler that calls reexec() may
    # run while its own thread holds that lock.
    # NOTE: an upgrade() that another thread begins after this check, and
    # before the exec, is not caught.
    if upgrader._upgrading:
        raise UpgradeError(
            "reexec() not allowed now: an upgrade() is running in this process; "
            "call reexec() after it returned or raised"
        )


def _stop_standby_before_exec() -> str | None:
    """Kill and reap the active Upgrader's standby before reexec(), and keep one from starting.

    The exec closes the standby's control socket, so the standby would exit
    and stay a zombie child of the new image, which never reaps it. The
    start that ready() left for after the parent's exit runs in another
    thread or on the event loop, so it is claimed here, a start in
    progress is waited for under _standby_lock, and later starts are
    rejected until _restart_standby_after_exec_failure().

    Returns:
        "stopped" if a standby ran, "claimed" if its start was still
        pending, else None; _restart_standby_after_exec_failure() takes it.
    """
    # A successor not yet adopted would become such a zombie too, with or
    # without an Upgrader. After a failed exec, the next standby starts fresh.
    _discard_successor()

    upgrader = _active
    if upgrader is None or upgrader._owner_pid != os.getpid() or upgrader._prestart is False:
        return None

    # A signal handler that calls reexec() may run in the thread that holds
    # _standby_lock to start a standby, and that thread cannot wait for itself.
    if upgrader._standby_lock_owner == threading.get_ident():
        pending = upgrader._block_standby_for_exec()
        # NOTE: a standby that the interrupted start has already spawned
        # then stays a zombie child of the new image.
        return "claimed" if pending else None

    with upgrader._standby_lock:
        upgrader._standby_lock_owner = threading.get_ident()
        try:
            pending = upgrader._block_standby_for_exec()
            running = upgrader._standby is not None
        finally:
            upgrader._standby_lock_owner = None
    upgrader._stop_standby()

    if running:
        return "stopped"
    return "claimed" if pending else None


def _restart_standby_after_exec_failure(stopped: str | None) -> None:
    """Undo _stop_standby_before_exec() after a failed exec: start the standby again, or leave its start pending."""
    upgrader = _active
    if upgrader is None or upgrader._owner_pid != os.getpid():
        return

    # In a signal handler that interrupted this thread's standby start, this
    # thread holds the lock already. That start goes on after the handler,
    # once the claim that reexec() took is given back.
    if upgrader._standby_lock_owner == threading.get_ident():
        upgrader._standby_exec_block = None
        if stopped == "claimed":
            upgrader._standby_claimed.clear()
        return
    with upgrader._standby_lock:
        rejected = upgrader._standby_exec_block == "rejected"
        upgrader._standby_exec_block = None
    if stopped is None and not rejected:
        return
    if stopped == "claimed":
        upgrader._standby_claimed.clear()
        # The thread that ready() started may have given up on the claimed
        # start already, so once the parent is gone it runs here.
        if upgrader._parent_gone or upgrader._poll_parent_gone():
            upgrader._start_pending_standby()
        return
    upgrader._start_standby()


def _discard_successor() -> None:
    """Kill the standby that this process forked before its hand-over, if no Upgrader has adopted it."""
    # A process that never imported fdpass._standby forked no successor.
    module = sys.modules.get("fdpass._standby")
    if module is not None:
        module.discard_successor()


def _resolve_future(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """Return the asyncio event loop running in this thread, or None, without importing asyncio."""
    module = sys.modules.get("asyncio")
    if module is None:
        return None
    try:
        loop: asyncio.AbstractEventLoop = module.get_running_loop()
    except RuntimeError:
        return None
    return loop
